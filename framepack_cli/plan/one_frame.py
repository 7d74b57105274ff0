"""One-frame inference layout (pure): which clean latents, at which indices, with which masks.

One-frame editing samples a single latent frame placed at `target_index` (default: the window size, the
last slot of a section) and conditions it on the control images' latents ("clean latents") at the
`control_index` positions, plus an optional zero "post" latent at `1 + W` and optional zero 2x/4x history.
Kisekaeichi and 1f-mc are recipes of this layout (see README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from framepack_cli.plan.sections import HISTORY_2X, HISTORY_4X


@dataclass(frozen=True)
class OneFrameLayout:
    """Attributes:
    latent_index: frame index of the sampled latent.
    clean_indices: one index per clean latent: the control latents, then the zero post latent if any.
    num_controls: how many clean latents come from control images (the rest is the post latent).
    has_post: a zero post latent is appended.
    indices_2x / indices_4x: indices of the zero 2x / 4x history, or None when left out.
    """

    latent_index: int
    clean_indices: tuple[int, ...]
    num_controls: int
    has_post: bool
    indices_2x: tuple[int, ...] | None
    indices_4x: tuple[int, ...] | None


def one_frame_layout(
    window: int,
    num_controls: int,
    *,
    target_index: int | None = None,
    control_index: tuple[int, ...] | None = None,
    no_post: bool = False,
    no_2x: bool = False,
    no_4x: bool = False,
) -> OneFrameLayout:
    """Build the layout of the reference's one-frame mode.

    Args:
        window: latent window size W.
        num_controls: control latents (at least 1: with no control image the reference uses one zero latent).
        target_index: index of the sampled frame (default W).
        control_index: indices assigned to the first clean latents, in order (may also set the post's).
        no_post / no_2x / no_4x: leave out the zero post latent / 2x / 4x history.
    """
    n_clean = num_controls + (0 if no_post else 1)
    clean = [0] * num_controls + ([] if no_post else [1 + window])
    for i, idx in enumerate((control_index or ())[:n_clean]):
        clean[i] = idx
    return OneFrameLayout(
        latent_index=window if target_index is None else target_index,
        clean_indices=tuple(clean),
        num_controls=num_controls,
        has_post=not no_post,
        indices_2x=None if no_2x else tuple(range(window + 2, window + 2 + HISTORY_2X)),
        indices_4x=None if no_4x else tuple(range(window + 2 + HISTORY_2X, window + 2 + HISTORY_2X + HISTORY_4X)),
    )


def auto_resize_bucket(src_w: int, src_h: int, width: int, height: int, step: int = 16) -> tuple[int, int]:
    """`--one_frame_auto_resize`: a (width, height) of about the same area as the requested size with the
    aspect ratio of the control image, both multiples of `step` (the reference's bucket selection)."""
    area = width * height
    ar = src_w / src_h
    w0 = int(math.sqrt(area * ar)) // step * step
    best: tuple[float, int, int] | None = None
    for k in range(-2, 3):
        w = w0 + k * step
        if w <= 0:
            continue
        h = (area // w) // step * step
        if h <= 0:
            continue
        err = abs(w / h - ar)
        if best is None or err < best[0]:
            best = (err, w, h)
    if best is None:
        return width, height
    return best[1], best[2]
