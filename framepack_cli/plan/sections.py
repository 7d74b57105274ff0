"""Section planning for progressive FramePack generation (pure: no torch, no I/O).

Vanilla FramePack ("inverted anti-drifting") generates the last section in time first and conditions each
section on the start image (`pre`) and on the frames already generated after it (`post`, 2x, 4x history).
F1 generates forward in time and conditions on the 19 most recent frames. The engine loop only reads
these plans.

Index layouts (latent frame positions fed to the DiT's RoPE), with W = latent window size:

    vanilla: [pre 1 | blank P=padding*W | latent W | post 1 | 2x 2 | 4x 16]
    F1:      [start 1 | 4x 16 | 2x 2 | 1x 1 | latent W]
"""

from __future__ import annotations

from dataclasses import dataclass

# History sizes of the released checkpoints: 1 clean frame, 2 frames at 2x, 16 frames at 4x compression.
HISTORY_1X, HISTORY_2X, HISTORY_4X = 1, 2, 16
HISTORY_LEN = HISTORY_1X + HISTORY_2X + HISTORY_4X
LATENT_CHANNELS = 16  # channels of the HunyuanVideo VAE latent the DiT denoises
SECTION_FPS = 30  # the reference counts sections at 30 fps whatever --fps is


@dataclass(frozen=True)
class Section:
    """One sampler call.

    Attributes:
        loop: position in generation order (0 = first sampled).
        index: position in time (0 = the section that starts the video).
        index_from_last: `index - num_sections` (-1 = the last section in time).
        latent_padding: vanilla blank-frame padding in windows (0 for F1).
        is_last: the last section sampled (vanilla: the first in time, which gets the start latent prepended).
    """

    loop: int
    index: int
    index_from_last: int
    latent_padding: int
    is_last: bool


@dataclass(frozen=True)
class Layout:
    """Frame indices of one sampler call: noisy latents and the clean / 2x / 4x context groups."""

    latent_indices: tuple[int, ...]
    clean_latent_indices: tuple[int, ...]
    clean_latent_2x_indices: tuple[int, ...]
    clean_latent_4x_indices: tuple[int, ...]


def num_sections(video_seconds: float, latent_window_size: int, video_sections: int | None = None) -> int:
    """Section count: `--video_sections` when given, else `round(seconds * 30 / (4 W))`, at least 1.

    The reference converts `--video_sections` to seconds with `--fps` and back at 30 fps, which changes the
    count when fps != 30; here N sections are N sections.
    """
    if video_sections is not None:
        return video_sections
    return int(max(round(video_seconds * SECTION_FPS / (latent_window_size * 4)), 1))


def default_paddings(n: int) -> list[int]:
    """`[n-1, ..., 1, 0]` up to 4 sections, else `[3, 2, ..., 2, 1, 0]` (repeating 2 looks better)."""
    if n <= 4:
        return list(reversed(range(n)))
    return [3] + [2] * (n - 3) + [1, 0]


def latent_paddings(n: int, override: list[int] | None = None) -> list[int]:
    """Paddings per generated section. `override` replaces the first entries (a longer list is cut).

    The reference crashes on a short override when n <= 4; here it replaces the first entries in all cases.
    """
    pads = default_paddings(n)
    if override:
        k = min(len(override), n)
        pads[:k] = override[:k]
    return pads


def plan_vanilla(n: int, paddings: list[int] | None = None) -> tuple[Section, ...]:
    """Sections in generation order for inverted anti-drifting sampling (last in time first)."""
    pads = latent_paddings(n, paddings)
    return tuple(
        Section(loop=i, index=n - 1 - i, index_from_last=-(i + 1), latent_padding=pads[i], is_last=(n - 1 - i == 0))
        for i in range(n)
    )


def plan_f1(n: int) -> tuple[Section, ...]:
    """Sections in generation order for F1 forward sampling."""
    return tuple(
        Section(loop=i, index=i, index_from_last=i - n, latent_padding=0, is_last=(i == n - 1)) for i in range(n)
    )


def vanilla_layout(latent_padding: int, window: int) -> Layout:
    """`[pre | blank | latent | post | 2x | 4x]` positions; clean = pre + post."""
    p = latent_padding * window
    latent_start = 1 + p
    post = latent_start + window
    return Layout(
        latent_indices=tuple(range(latent_start, post)),
        clean_latent_indices=(0, post),
        clean_latent_2x_indices=tuple(range(post + 1, post + 1 + HISTORY_2X)),
        clean_latent_4x_indices=tuple(range(post + 1 + HISTORY_2X, post + 1 + HISTORY_2X + HISTORY_4X)),
    )


def f1_layout(window: int) -> Layout:
    """`[start | 4x | 2x | 1x | latent]` positions; clean = start + 1x."""
    one_x = 1 + HISTORY_4X + HISTORY_2X
    return Layout(
        latent_indices=tuple(range(one_x + 1, one_x + 1 + window)),
        clean_latent_indices=(0, one_x),
        clean_latent_2x_indices=tuple(range(1 + HISTORY_4X, one_x)),
        clean_latent_4x_indices=tuple(range(1, 1 + HISTORY_4X)),
    )


def frames_per_section(window: int) -> int:
    """Pixel frames of one section's noise draw (the reference draws `(frames + 3) // 4` latent frames)."""
    return window * 4 - 3


def video_frame_count(n: int, window: int) -> int:
    """Pixel frames of an `n`-section video: `1 + n W` latent frames (the start latent plus `W` per section)
    decode to `4 (T - 1) + 1` frames."""
    return 4 * n * window + 1


def decode_chunks(num_latents: int, window: int) -> list[tuple[int, int]]:
    """Latent slices decoded separately by the progressive decode, in time order.

    `[0, 2W+1)`, then `[1 + kW, 1 + (k+2)W)` for k = 1, 2, ...; clipped to the latent length, empty ones
    dropped. Consecutive decoded chunks overlap by `4W - 3` pixel frames, blended linearly. The reference
    derives the chunk count from `--video_seconds` even with `--video_sections` (dropping latents); here it
    comes from the latent length.
    """
    chunks = [(0, min(2 * window + 1, num_latents))]
    start = window + 1
    while start < num_latents:
        chunks.append((start, min(start + 2 * window, num_latents)))
        start += window
    return [c for c in chunks if c[1] > c[0]]


def stream_chunks(num_latents: int, window: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """Latent slices of the time-chunked decode (`--decode stream`): consecutive, no overlap, in time order.

    The first holds `chunk` latents, the others `chunk - 1`, so every chunk decodes to at most `4 (chunk - 1) + 1`
    pixel frames: by default `chunk = 2W + 1`, the largest chunk of the blended decode (`decode_chunks`), so the
    peak memory of one chunk is the same while each latent is decoded once.

    Args:
        num_latents: latent frames to decode (>= 1).
        window: `--latent_window_size`.
        chunk: latents of the first chunk (>= 2; default `2W + 1`); a chunk >= `num_latents` decodes all at once.
    """
    chunk = 2 * window + 1 if chunk is None else chunk
    if chunk < 2:
        raise ValueError(f"stream chunk must hold at least 2 latents, got {chunk}")
    bounds = [(0, min(chunk, num_latents))]
    while bounds[-1][1] < num_latents:
        a = bounds[-1][1]
        bounds.append((a, min(a + chunk - 1, num_latents)))
    return bounds
