"""Frame extraction, frame-rate conversion, bucketing and cache-section math for dataset caching.

Pure functions (no torch, no I/O), following the reference trainer's dataset code (training.md §1.5,
§1.6, §2.4-§2.6) so that caches built from them carry the same crops, buckets and indices.

Vocabulary: a *source* is a video file or a folder of frames; a *crop* is a `(start, length)` window of
its frames (one training item); a crop of `length` pixel frames is split into `N` *sections* of `W`
latent frames each (`W` = `fp_latent_window_size`), one cache file per section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from framepack_cli.plan.sections import HISTORY_LEN, default_paddings, f1_layout, vanilla_layout

FRAME_EXTRACTIONS = ("head", "chunk", "slide", "uniform", "full")
FRAMEPACK_FPS = 30.0  # the frame rate FramePack is trained at; `source_fps` is converted to it
RESOLUTION_STEP = 16  # bucket sizes are multiples of this (latent grid of 8, DiT patch of 2)


# --------------------------------------------------------------------------------------------------
# Frame extraction
# --------------------------------------------------------------------------------------------------


def round_target_frames(values: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """De-duplicate, sort and round every value down to `4n+1` (the VAE's causal frame grouping).

    Args:
        values: `target_frames` as configured.

    Returns:
        Sorted unique values of `(f - 1) // 4 * 4 + 1`.
    """
    return tuple(sorted({(f - 1) // 4 * 4 + 1 for f in values}))


def effective_extraction(mode: str, frame_sample: int) -> str:
    """`uniform` with a single sample is `head` (as in the reference: one crop at position 0)."""
    return "head" if mode == "uniform" and frame_sample == 1 else mode


def frame_crops(
    mode: str,
    frame_count: int,
    target_frames: tuple[int, ...],
    *,
    frame_stride: int = 1,
    frame_sample: int = 1,
    max_frames: int = 129,
) -> list[tuple[int, int]]:
    """The `(start, length)` crops a clip of `frame_count` frames yields (training.md §1.5).

    Duplicates (possible with `uniform` when `frame_sample` exceeds the number of positions) are dropped,
    since they would name the same cache file twice.

    Args:
        mode: one of `FRAME_EXTRACTIONS` (already passed through `effective_extraction`).
        frame_count: decoded frames of the clip (after frame-rate conversion).
        target_frames: rounded crop lengths (`round_target_frames`).
        frame_stride: step of `slide`.
        frame_sample: number of crops per length for `uniform`.
        max_frames: cap of `full`.

    Returns:
        Crops in the reference's order.

    Raises:
        ValueError: unknown mode.
    """
    crops: list[tuple[int, int]] = []
    if mode == "head":
        crops = [(0, t) for t in target_frames if frame_count >= t]
    elif mode == "chunk":
        crops = [(i, t) for t in target_frames for i in range(0, frame_count, t) if i + t <= frame_count]
    elif mode == "slide":
        crops = [(i, t) for t in target_frames if frame_count >= t
                 for i in range(0, frame_count - t + 1, frame_stride)]
    elif mode == "uniform":
        for t in target_frames:
            if frame_count >= t:
                crops += [(s, t) for s in linspace_int(0, frame_count - t, frame_sample)]
    elif mode == "full":
        if frame_count >= 1:
            crops = [(0, (min(frame_count, max_frames) - 1) // 4 * 4 + 1)]
    else:
        raise ValueError(f"unknown frame_extraction {mode!r}")
    seen: set[tuple[int, int]] = set()
    return [c for c in crops if not (c in seen or seen.add(c))]


def linspace_int(start: int, stop: int, num: int) -> list[int]:
    """`numpy.linspace(start, stop, num, dtype=int)` without numpy: evenly spaced, truncated toward zero."""
    if num == 1:
        return [start]
    step = (stop - start) / (num - 1)
    return [int(start + i * step) if i < num - 1 else stop for i in range(num)]


def frames_to_read(mode: str, target_frames: tuple[int, ...], max_frames: int) -> int | None:
    """How many (converted) frames decoding may stop after; None = the whole clip is needed."""
    if mode == "head":
        return max(target_frames)
    if mode == "full":
        return max_frames
    return None


def fps_kept_frames(num_source: int | None, source_fps: float, target_fps: float = FRAMEPACK_FPS):
    """Source frame numbers kept when converting `source_fps` to `target_fps` (drop-only, as the reference).

    Frame `i` is kept when the integer part of an accumulated position (0, d, 2d, ... with
    `d = target/source`, summed in floating point exactly like the reference) differs from the previous
    kept one. When `source_fps < target_fps` no frame is duplicated, so the clip simply stays at its
    own rate.

    Args:
        num_source: source frames, or None for an endless generator.
        source_fps: frame rate of the source.
        target_fps: FramePack's 30 fps.

    Yields:
        Kept source frame numbers, ascending.
    """
    delta = target_fps / source_fps
    position = 0.0
    previous = -1
    i = 0
    while num_source is None or i < num_source:
        index = int(position)
        position += delta
        if index != previous:
            previous = index
            yield i
        i += 1


def converted_frame_count(num_source: int, source_fps: float | None, target_fps: float = FRAMEPACK_FPS) -> int:
    """Frames left after frame-rate conversion (`num_source` when `source_fps` is None)."""
    if source_fps is None:
        return num_source
    return sum(1 for _ in fps_kept_frames(num_source, source_fps, target_fps))


# --------------------------------------------------------------------------------------------------
# Buckets
# --------------------------------------------------------------------------------------------------


def _floor(x: int, step: int = RESOLUTION_STEP) -> int:
    return x - x % step


def bucket_resolutions(resolution: tuple[int, int], enable_bucket: bool) -> list[tuple[int, int]]:
    """Bucket sizes `(w, h)` for a `resolution` (training.md §1.6), sorted ascending.

    Without bucketing there is one bucket, the resolution itself. With bucketing, widths run from
    `floor16(sqrt(A)//2)` to `sqrt(A)` in steps of 16, each with `h = floor16(A // w)`, plus transposes.
    """
    if not enable_bucket:
        return [tuple(resolution)]
    area = resolution[0] * resolution[1]
    side = int(math.sqrt(area))
    out = set()
    for w in range(_floor(side // 2), side + RESOLUTION_STEP, RESOLUTION_STEP):
        if w <= 0:
            continue
        h = _floor(area // w)
        out.add((w, h))
        out.add((h, w))
    return sorted(b for b in out if b[0] > 0 and b[1] > 0)


def select_bucket(
    size: tuple[int, int], resolution: tuple[int, int], enable_bucket: bool, no_upscale: bool = False
) -> tuple[int, int]:
    """The bucket `(w, h)` of an image or clip of `size = (w, h)`.

    With `no_upscale` (only meaningful with bucketing) an image no larger than the bucket area keeps its
    size rounded down to 16; otherwise the bucket with the nearest aspect ratio wins (first on ties).
    """
    if enable_bucket and no_upscale and size[0] * size[1] <= resolution[0] * resolution[1]:
        return _floor(size[0]), _floor(size[1])
    buckets = bucket_resolutions(resolution, enable_bucket)
    ar = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ar))


# --------------------------------------------------------------------------------------------------
# Sections of a cached clip
# --------------------------------------------------------------------------------------------------


def latent_frame_count(pixel_frames: int) -> int:
    """Latent frames the causal VAE gives for `pixel_frames` frames: `(F - 1)//4 + 1`."""
    return (pixel_frames - 1) // 4 + 1


def min_section_frames(window: int) -> int:
    """Pixel frames one section needs: `4W + 1`."""
    return window * 4 + 1


def num_cache_sections(pixel_frames: int, window: int) -> int:
    """Whole sections in a crop: `floor((latent_frames - 1) / W)` (0 when the crop is too short)."""
    return (latent_frame_count(pixel_frames) - 1) // window


def trimmed_frames(pixel_frames: int, window: int) -> int:
    """Pixel frames actually encoded: the crop is cut to `N*W*4 + 1` frames (whole sections)."""
    return num_cache_sections(pixel_frames, window) * window * 4 + 1


@dataclass(frozen=True)
class CacheSection:
    """Everything one section's cache file needs besides the latents themselves.

    Attributes:
        index: section number in time (0 = the first), used in the file name.
        target_start: first latent frame of the target (`index*W + 1`); the target is `W` frames.
        context: the 19 latent frames that fill the clean post/2x/4x (vanilla) or 1x/2x/4x (F1)
            slots, in the order they are stored (see `split_context`); None marks a zero frame.
        latent_indices: RoPE positions of the target frames.
        clean_latent_indices: positions of `[start frame, 1x context frame]`.
        clean_latent_2x_indices: positions of the two 2x context frames.
        clean_latent_4x_indices: positions of the sixteen 4x context frames.
    """

    index: int
    target_start: int
    context: tuple[int | None, ...]
    latent_indices: tuple[int, ...]
    clean_latent_indices: tuple[int, ...]
    clean_latent_2x_indices: tuple[int, ...]
    clean_latent_4x_indices: tuple[int, ...]


def vanilla_cache_sections(n: int, window: int) -> list[CacheSection]:
    """Sections of inverted anti-drifting caching, in the reference's save order (last in time first).

    The context of section `s` is what inference would have generated after it: the latent frames
    `s*W + W + 1` onwards (post, then 2x, then 4x), zero past the clip end; the last section in time
    has an all-zero context. Paddings follow the inference schedule (`[3, 2, ..., 2, 1, 0]` beyond 4).

    Args:
        n: number of sections (>= 1).
        window: latent window size W.
    """
    last = n * window  # index of the last latent frame of the trimmed clip
    out = []
    for k, pad in enumerate(default_paddings(n)):
        s = n - 1 - k
        layout = vanilla_layout(pad, window)
        first = s * window + window + 1
        context = tuple(f if f <= last else None for f in range(first, first + HISTORY_LEN))
        out.append(CacheSection(
            index=s, target_start=s * window + 1, context=context,
            latent_indices=layout.latent_indices, clean_latent_indices=layout.clean_latent_indices,
            clean_latent_2x_indices=layout.clean_latent_2x_indices,
            clean_latent_4x_indices=layout.clean_latent_4x_indices,
        ))
    return out


def f1_cache_sections(n: int, window: int) -> list[CacheSection]:
    """Sections of F1 (forward) caching, in time order.

    The context of section `s` is the 19 latent frames right before its target (`s*W + 1 - 19` to
    `s*W`), right-aligned, zero where the clip has no such frame (frame 0 is included when in range).
    Stored order: 4x (16), 2x (2), 1x (1), as F1 inference keeps its history.
    """
    layout = f1_layout(window)
    out = []
    for s in range(n):
        start = s * window + 1
        context = tuple(f if f >= 0 else None for f in range(start - HISTORY_LEN, start))
        out.append(CacheSection(
            index=s, target_start=start, context=context,
            latent_indices=layout.latent_indices, clean_latent_indices=layout.clean_latent_indices,
            clean_latent_2x_indices=layout.clean_latent_2x_indices,
            clean_latent_4x_indices=layout.clean_latent_4x_indices,
        ))
    return out


def split_context(context: tuple, f1: bool) -> tuple[tuple, tuple, tuple]:
    """Split a section's 19 context frames into `(1x, 2x, 4x)` groups.

    Vanilla stores post (1), 2x (2), 4x (16) in time order after the section; F1 stores 4x (16),
    2x (2), 1x (1) in time order before it.
    """
    if f1:
        return context[18:19], context[16:18], context[0:16]
    return context[0:1], context[1:3], context[3:19]


@dataclass(frozen=True)
class OneFrameIndices:
    """Index tensors of a one-frame cache (training.md §2.6); None = not stored."""

    latent_indices: tuple[int, ...]
    clean_latent_indices: tuple[int, ...]
    clean_latent_2x_indices: tuple[int, ...] | None
    clean_latent_4x_indices: tuple[int, ...] | None
    zero_post: bool


def one_frame_indices(
    window: int,
    clean_indices: list[int] | tuple[int, ...] | None,
    target_index: int,
    no_post: bool,
    no_2x: bool = False,
    no_4x: bool = False,
) -> OneFrameIndices:
    """Indices of a one-frame cache.

    Args:
        window: W of the dataset.
        clean_indices: `fp_1f_clean_indices` (None or empty = `[0]`).
        target_index: `fp_1f_target_index`.
        no_post: `fp_1f_no_post`; otherwise a zero "post" frame at position `1 + W` is appended.
        no_2x: `--one_frame_no_2x`.
        no_4x: `--one_frame_no_4x`.
    """
    clean = tuple(clean_indices) if clean_indices else (0,)
    if not no_post:
        clean = (*clean, 1 + window)
    return OneFrameIndices(
        latent_indices=(target_index,),
        clean_latent_indices=clean,
        clean_latent_2x_indices=None if no_2x else (window + 2, window + 3),
        clean_latent_4x_indices=None if no_4x else tuple(range(window + 4, window + 20)),
        zero_post=not no_post,
    )
