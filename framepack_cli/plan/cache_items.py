"""Which cache files a dataset item produces: crops, buckets, sections and file names (training.md §2-§3).

Pure (no torch, no I/O): the caller probes the sources (image size, clip frame count) and passes the
numbers in; everything else -- the crops of a clip, its bucket, how many sections each crop makes, the
output file of every section, and which clips a mode cannot use -- is decided here. A dataset is read
through its attributes only (`options.dataset.ImageDataset` / `VideoDataset` fit the protocols below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from framepack_cli.plan.cache_names import crop_stem, image_cache_name, section_cache_name, text_cache_name
from framepack_cli.plan.frames import (
    converted_frame_count,
    frame_crops,
    min_section_frames,
    num_cache_sections,
    select_bucket,
)

MIN_BUCKET_SIDE = 16  # a bucket side below this leaves no latent to train on


class BucketSettings(Protocol):
    """What every dataset tells the planner."""

    @property
    def resolution(self) -> tuple[int, int]: ...
    @property
    def enable_bucket(self) -> bool: ...
    @property
    def bucket_no_upscale(self) -> bool: ...
    @property
    def fp_latent_window_size(self) -> int: ...
    @property
    def cache_directory(self) -> Path: ...


class ClipSettings(BucketSettings, Protocol):
    """What a video dataset adds."""

    @property
    def source_fps(self) -> float | None: ...
    @property
    def frame_extraction(self) -> str: ...
    @property
    def target_frames(self) -> tuple[int, ...]: ...
    @property
    def frame_stride(self) -> int: ...
    @property
    def frame_sample(self) -> int: ...
    @property
    def max_frames(self) -> int: ...


@dataclass
class LatentItem:
    """One training item: a video crop (one file per section) or an image (one file).

    Attributes:
        name: what the summary calls it (crop or image stem).
        bucket: `(w, h)` the pixels are resized to.
        recorded: `(w, h)` written into names and metadata (image: original size; video: the bucket).
        outputs: cache files of the item, in the order they are written.
        start: crop start in converted frames (video).
        length: untrimmed crop length (video; also metadata `frame_count`).
        controls: the control images, in order (one-frame images).
        skip: all outputs exist, are complete and were made with the same settings.
        stale_reason: why existing outputs are rewritten despite `--skip_existing`.
    """

    name: str
    bucket: tuple[int, int]
    recorded: tuple[int, int]
    outputs: list[Path]
    start: int = 0
    length: int = 0
    controls: tuple[Path, ...] = ()
    skip: bool = False
    stale_reason: str | None = None


@dataclass
class SourceJob:
    """A source to decode once: a clip with all its crops, or an image."""

    dataset: Any
    path: Path
    items: list[LatentItem]
    frames_needed: int = 0  # converted frames to decode (video)


@dataclass
class ClipPlan:
    """The items of one clip, or why it has none.

    Attributes:
        items: one per crop, with every section's output file (empty when there is a problem).
        frames_needed: converted frames to decode (the end of the last crop).
        problem: `(config key, reason)` when the clip cannot be cached (key None: the key naming the
            dataset's sources); the reason does not name the clip.
        too_short: the problem is the clip itself being too short (left out with a warning unless
            `--strict`); otherwise it is a config error.
    """

    items: list[LatentItem] = field(default_factory=list)
    frames_needed: int = 0
    problem: tuple[str | None, str] | None = None
    too_short: bool = False


@dataclass
class TextItem:
    """One caption to encode: per image, or per source clip (shared by all its crops and sections)."""

    dataset: Any
    source: Path
    caption: str
    output: Path
    skip: bool = False
    stale_reason: str | None = None


def cache_mode(one_frame: bool, f1: bool) -> str:
    """`vanilla`, `f1` or `one_frame`, from the flags."""
    return "one_frame" if one_frame else "f1" if f1 else "vanilla"


def expected_settings(ds: BucketSettings, mode: str, no_2x: bool = False, no_4x: bool = False) -> dict[str, Any]:
    """Settings recorded in (and checked against) the latent caches of a dataset."""
    out: dict[str, Any] = {
        "mode": mode, "latent_window_size": ds.fp_latent_window_size, "resolution": ds.resolution,
        "enable_bucket": ds.enable_bucket, "bucket_no_upscale": ds.bucket_no_upscale,
    }
    if mode == "one_frame":
        out.update(one_frame_no_2x=no_2x, one_frame_no_4x=no_4x)
    return out


def mode_refusal(mode: str, kind: str) -> str | None:
    """Why a dataset of `kind` (`image` / `video`) cannot be cached in `mode`, or None when it can."""
    if mode == "one_frame" and kind == "video":
        return "video datasets cannot be cached with --one_frame (one-frame training uses image datasets with " \
               "control images)"
    if mode != "one_frame" and kind == "image":
        flag = "--f1 " if mode == "f1" else ""
        return f"image datasets are cached with --one_frame only; {flag}section caching needs video datasets (put " \
               "one-frame datasets in their own config)"
    return None


def _too_small(size: tuple[int, int], bucket: tuple[int, int]) -> str | None:
    if min(bucket) < MIN_BUCKET_SIDE:
        return f"{size[0]}x{size[1]} is too small (bucket {bucket[0]}x{bucket[1]})"
    return None


def plan_image(ds: BucketSettings, stem: str, size: tuple[int, int], controls: tuple[Path, ...]
               ) -> LatentItem | str:
    """The one-frame item of an image of `size` `(w, h)`, or why it cannot be cached."""
    bucket = select_bucket(size, ds.resolution, ds.enable_bucket, ds.bucket_no_upscale)
    small = _too_small(size, bucket)
    if small is not None:
        return small
    out = ds.cache_directory / image_cache_name(stem, *size)
    return LatentItem(stem, bucket, size, [out], controls=controls)


def plan_clip(ds: ClipSettings, stem: str, frames: int, size: tuple[int, int]) -> ClipPlan:
    """Crops, bucket and section files of a clip of `frames` source frames of `size` `(w, h)`.

    A clip too short for one section (or for every target_frames value) is `too_short`; crops that can
    never make a section whatever the clip (a target_frames value or max_frames below one section) are
    config errors.
    """
    window = ds.fp_latent_window_size
    need = min_section_frames(window)
    count = converted_frame_count(frames, ds.source_fps)
    crops = frame_crops(ds.frame_extraction, count, ds.target_frames, frame_stride=ds.frame_stride,
                        frame_sample=ds.frame_sample, max_frames=ds.max_frames)
    fps_note = f" at 30 fps (source_fps {ds.source_fps:g})" if ds.source_fps else ""
    if not crops:
        return ClipPlan(problem=("target_frames", f"{count} frames{fps_note}, fewer than every target_frames value "
                                                  f"{list(ds.target_frames)}: nothing to cache"), too_short=True)
    short = sorted({length for _, length in crops if num_cache_sections(length, window) < 1})
    if short:
        reason = f"shorter than one section, fp_latent_window_size = {window} needs at least {need} frames " \
                 f"(4 * {window} + 1)"
        if ds.frame_extraction == "full":
            bad_key = "max_frames" if ds.max_frames < need <= count else "fp_latent_window_size"
            what = f"{count} frames{fps_note}, cropped to {short[0]}: {reason}"
            # the clip itself is short when max_frames would allow a section
            return ClipPlan(problem=(bad_key, what), too_short=ds.max_frames >= need)
        what = f"crops of {', '.join(map(str, short))} frames ({ds.frame_extraction}): {reason}"
        return ClipPlan(problem=("target_frames", what))
    # Like the reference, video clips are always aspect-bucketed (enable_bucket / bucket_no_upscale apply to
    # images only), so caches of the same config are interchangeable with the reference trainer's.
    bucket = select_bucket(size, ds.resolution, True, False)
    small = _too_small(size, bucket)
    if small is not None:
        return ClipPlan(problem=(None, small))
    items = []
    for start, length in crops:
        n = num_cache_sections(length, window)
        outs = [ds.cache_directory / section_cache_name(stem, start, length, s, *bucket) for s in range(n)]
        items.append(LatentItem(crop_stem(stem, start, length), bucket, bucket, outs, start, length))
    return ClipPlan(items, max(start + length for start, length in crops))


def text_output(ds: BucketSettings, stem: str) -> Path:
    """The text cache file of an image or source clip."""
    return ds.cache_directory / text_cache_name(stem)
