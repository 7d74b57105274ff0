"""Engines of `framepack cache latents` and `framepack cache text` (training.md §2-§3).

Both run in three phases so that every user mistake surfaces before a model loads:

1. plan: load and validate the dataset config, probe every clip and image, compute crops, buckets,
   sections and output files, refuse datasets the mode cannot use, and decide what `--skip_existing`
   skips -- all problems at once, one line each. A clip too short for one section is left out with a
   warning (`--strict`: an error like the others);
2. create every cache folder and prove it writable, then load the models (only if something is left to do);
3. stream the sources through a small thread pool (decode + bucket resize), group them into batches
   like the reference, encode, and write each cache file atomically; a failing source is recorded and
   the run goes on, a failing write (disk full) ends it (exit 3). Stale cache files are then deleted when
   framepack wrote them for the same dataset; others are kept. A summary on stdout (cached, skipped,
   clips left out, files removed and kept with why) ends the run; failed items exit 2.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError, NotBuiltError, ResourceError
from framepack_cli.io.cache_format import (
    LATENT_SUFFIX,
    TEXT_SUFFIX,
    cache_mismatches,
    cache_owner,
    crop_stem,
    image_cache_name,
    latent_cache_metadata,
    latent_cache_tensors,
    read_cache_header,
    remove_temp_files,
    replace_nans,
    save_cache_file,
    save_text_cache,
    section_cache_name,
    text_cache_name,
    text_cache_tensors,
)
from framepack_cli.options.cache import CacheLatentsOptions, CacheTextOptions
from framepack_cli.options.dataset import (
    DatasetConfig,
    ImageDataset,
    ImageItem,
    VideoDataset,
    VideoItem,
    dataset_identity,
    source_key,
)
from framepack_cli.plan.frames import (
    CacheSection,
    converted_frame_count,
    f1_cache_sections,
    frame_crops,
    min_section_frames,
    num_cache_sections,
    one_frame_indices,
    select_bucket,
    split_context,
    trimmed_frames,
    vanilla_cache_sections,
)

if TYPE_CHECKING:
    import torch

Dataset = ImageDataset | VideoDataset


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


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
        image: the image item (one-frame).
        skip: all outputs exist, are complete and were made with the same settings.
        stale_reason: why existing outputs are rewritten despite `--skip_existing`.
    """

    name: str
    bucket: tuple[int, int]
    recorded: tuple[int, int]
    outputs: list[Path]
    start: int = 0
    length: int = 0
    image: ImageItem | None = None
    skip: bool = False
    stale_reason: str | None = None


@dataclass
class SourceJob:
    """A source to decode once: a clip with all its crops, or an image."""

    dataset: Dataset
    path: Path
    items: list[LatentItem]
    frames_needed: int = 0  # converted frames to decode (video)


@dataclass
class CacheSummary:
    """Outcome of a caching run.

    Attributes:
        cached: items encoded and written.
        files: cache files written.
        skipped: items left as they were (`--skip_existing`).
        recached: items rewritten although `--skip_existing` was given (incomplete or other settings).
        failed: `(item, reason)` of every item that could not be cached.
        too_short: `(clip, reason)` of every clip left out because it is too short for one section (or for
            every target_frames value); `--strict` refuses the run instead.
        removed_files: stale cache files deleted (written by framepack for this dataset, not produced by
            this run).
        kept_files: `(file, why)` of cache files in the cache folders that this run does not produce and
            did not delete (not written by framepack, another dataset's, `--keep_cache`).
        seconds: wall time.
    """

    cached: int = 0
    files: int = 0
    skipped: int = 0
    recached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    too_short: list[tuple[str, str]] = field(default_factory=list)
    removed_files: list[Path] = field(default_factory=list)
    kept_files: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def removed(self) -> int:
        """How many stale cache files were deleted."""
        return len(self.removed_files)

    @property
    def kept(self) -> int:
        """How many cache files this run does not produce were kept."""
        return len(self.kept_files)


def cache_mode(opts: CacheLatentsOptions) -> str:
    """`vanilla`, `f1` or `one_frame`, from the flags."""
    return "one_frame" if opts.one_frame else "f1" if opts.f1 else "vanilla"


def expected_settings(ds: Dataset, mode: str, no_2x: bool = False, no_4x: bool = False) -> dict[str, Any]:
    """Settings recorded in (and checked against) the latent caches of a dataset."""
    out: dict[str, Any] = {
        "mode": mode, "latent_window_size": ds.fp_latent_window_size, "resolution": ds.resolution,
        "enable_bucket": ds.enable_bucket, "bucket_no_upscale": ds.bucket_no_upscale,
    }
    if mode == "one_frame":
        out.update(one_frame_no_2x=no_2x, one_frame_no_4x=no_4x)
    return out


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise FramepackError(f"{path}: cannot read image ({e})") from None


def _plan_images(cfg: DatasetConfig, ds: ImageDataset, errors: list[str]) -> list[SourceJob]:
    key = source_key(ds)
    if ds.fp_1f_target_index is None:
        errors.append(cfg.problem(ds, "fp_1f_target_index", "required by --one_frame: the latent position of the "
                                  "target (9 for the default one-frame recipe, 1 for kisekaeichi)"))
    if any(not item.controls for item in ds.items):
        errors.append(cfg.problem(ds, "control_directory", "--one_frame needs control images: set control_directory "
                                  "(or control_path in the JSONL lines)"))
        return []
    jobs = []
    for item in ds.items:
        try:
            w, h = _image_size(item.path)
            for c in item.controls:
                _image_size(c)
        except FramepackError as e:
            errors.append(cfg.problem(ds, key, str(e)))
            continue
        bucket = select_bucket((w, h), ds.resolution, ds.enable_bucket, ds.bucket_no_upscale)
        if min(bucket) < 16:
            errors.append(cfg.problem(ds, key, f"{item.path}: {w}x{h} is too small (bucket {bucket[0]}x{bucket[1]})"))
            continue
        out = ds.cache_directory / image_cache_name(item.stem, w, h)
        jobs.append(SourceJob(ds, item.path, [LatentItem(item.stem, bucket, (w, h), [out], image=item)]))
    return jobs


def _plan_videos(cfg: DatasetConfig, ds: VideoDataset, errors: list[str],
                 too_short: list[tuple[str, str, str]] | None = None) -> list[SourceJob]:
    """Jobs of a video dataset. A clip too short for one section (or for every target_frames value) goes to
    `too_short` as `(clip, reason, error line)`, or to `errors` when `too_short` is None (`--strict`). Crops
    that can never make a section whatever the clip (a target_frames value or max_frames below one section)
    are config errors either way."""
    from framepack_cli.io.video_frames import probe_clip

    key = source_key(ds)
    window = ds.fp_latent_window_size
    need = min_section_frames(window)
    jobs = []

    def clip_too_short(path: Path, bad_key: str, reason: str) -> None:
        line = cfg.problem(ds, bad_key, f"{path}: {reason}")
        if too_short is None:
            errors.append(line)
        else:
            too_short.append((str(path), reason, line))

    for item in ds.items:
        try:
            info = probe_clip(item.path)
        except FramepackError as e:
            errors.append(cfg.problem(ds, key, str(e)))
            continue
        count = converted_frame_count(info.frames, ds.source_fps)
        crops = frame_crops(ds.frame_extraction, count, ds.target_frames, frame_stride=ds.frame_stride,
                            frame_sample=ds.frame_sample, max_frames=ds.max_frames)
        fps_note = f" at 30 fps (source_fps {ds.source_fps:g})" if ds.source_fps else ""
        if not crops:
            clip_too_short(item.path, "target_frames", f"{count} frames{fps_note}, fewer than every target_frames "
                                                       f"value {list(ds.target_frames)}: nothing to cache")
            continue
        short = sorted({length for _, length in crops if num_cache_sections(length, window) < 1})
        if short:
            reason = f"shorter than one section, fp_latent_window_size = {window} needs at least {need} frames " \
                     f"(4 * {window} + 1)"
            if ds.frame_extraction == "full":
                bad_key = "max_frames" if ds.max_frames < need <= count else "fp_latent_window_size"
                what = f"{count} frames{fps_note}, cropped to {short[0]}: {reason}"
                if ds.max_frames >= need:  # the clip itself is short
                    clip_too_short(item.path, bad_key, what)
                    continue
            else:
                bad_key = "target_frames"
                what = f"crops of {', '.join(map(str, short))} frames ({ds.frame_extraction}): {reason}"
            errors.append(cfg.problem(ds, bad_key, f"{item.path}: {what}"))
            continue
        # Like the reference, video clips are always aspect-bucketed (enable_bucket / bucket_no_upscale apply to
        # images only), so caches of the same config are interchangeable with the reference trainer's.
        bucket = select_bucket((info.width, info.height), ds.resolution, True, False)
        if min(bucket) < 16:
            errors.append(cfg.problem(ds, key, f"{item.path}: {info.width}x{info.height} is too small "
                                      f"(bucket {bucket[0]}x{bucket[1]})"))
            continue
        items = []
        for start, length in crops:
            n = num_cache_sections(length, window)
            outs = [ds.cache_directory / section_cache_name(item.stem, start, length, s, *bucket) for s in range(n)]
            items.append(LatentItem(crop_stem(item.stem, start, length), bucket, bucket, outs, start, length))
        jobs.append(SourceJob(ds, item.path, items, max(start + length for start, length in crops)))
    return jobs


def _mark_skips(jobs: list[SourceJob], settings: Callable[[Dataset], dict]) -> None:
    for job in jobs:
        expected = settings(job.dataset)
        for item in job.items:
            reasons = []
            for out in item.outputs:
                if not out.exists():
                    reasons.append("missing")
                    break
                try:
                    mismatch = cache_mismatches(out, expected, wanted_by="this run makes")
                except FramepackError:
                    reasons.append(f"{out.name} is incomplete or unreadable")
                    break
                if mismatch:
                    reasons.append(mismatch[0][len(f"{out}: "):])
                    break
            if not reasons:
                item.skip = True
            elif reasons[0] != "missing":
                item.stale_reason = reasons[0]


def plan_latents(cfg: DatasetConfig, opts: CacheLatentsOptions
                 ) -> tuple[list[list[SourceJob]], list[tuple[str, str, str]]]:
    """Sources, items and output files of every dataset, or one FramepackError listing every problem.

    Returns:
        One list of jobs per dataset, in config order; and the clips left out as too short for one
        section, `(clip, reason, error line)` (always empty with `--strict`: they are errors then).
    """
    mode = cache_mode(opts)
    errors: list[str] = []
    too_short: list[tuple[str, str, str]] | None = None if opts.strict else []
    plans = []
    for ds in cfg.datasets:
        if mode == "one_frame" and ds.kind == "video":
            errors.append(cfg.problem(ds, source_key(ds), "video datasets cannot be cached with --one_frame "
                                      "(one-frame training uses image datasets with control images)"))
            plans.append([])
        elif mode != "one_frame" and ds.kind == "image":
            flag = "--f1 " if mode == "f1" else ""
            errors.append(cfg.problem(ds, source_key(ds), f"image datasets are cached with --one_frame only; {flag}"
                                      "section caching needs video datasets (put one-frame datasets in their own "
                                      "config)"))
            plans.append([])
        elif ds.kind == "image":
            plans.append(_plan_images(cfg, ds, errors))
        else:
            plans.append(_plan_videos(cfg, ds, errors, too_short))
    if errors:
        raise FramepackError("\n".join(errors))
    if opts.skip_existing:
        for jobs in plans:
            _mark_skips(jobs, lambda ds: expected_settings(ds, mode, opts.one_frame_no_2x, opts.one_frame_no_4x))
    return plans, too_short or []


# --------------------------------------------------------------------------------------------------
# Loading sources (worker threads)
# --------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """Decoded, bucket-resized pixels of one item, ready to encode.

    Attributes:
        item: the planned item.
        frames: uint8 `[T, H, W, 3]` (video: the trimmed crop; one-frame: controls then target).
        siglip: uint8 `[H, W, 3]` image for SigLIP (first crop frame / control 0).
        alphas: per frame, the bucket-resized uint8 alpha channel or None (one-frame controls).
    """

    item: LatentItem
    frames: np.ndarray
    siglip: np.ndarray
    alphas: list[np.ndarray | None] = field(default_factory=list)


def _load_video(job: SourceJob) -> list[Loaded]:
    from framepack_cli.io.video_frames import read_frames

    ds = job.dataset
    todo = [it for it in job.items if not it.skip]
    bucket = todo[0].bucket
    frames = read_frames(job.path, source_fps=ds.source_fps, stop=job.frames_needed, size=bucket)
    out = []
    for it in todo:
        if it.start + it.length > len(frames):
            raise FramepackError(f"{job.path}: decoded {len(frames)} frames, the crop {it.name} needs "
                                 f"{it.start + it.length} (the container's frame count was wrong)")
        crop = frames[it.start : it.start + trimmed_frames(it.length, ds.fp_latent_window_size)]
        out.append(Loaded(it, np.stack(crop), crop[0]))
    return out


def _load_image_item(job: SourceJob) -> list[Loaded]:
    from framepack_cli.io.images import load_image, resize_to_bucket

    (it,) = job.items
    w, h = it.bucket
    target, _ = load_image(it.image.path)  # the target's alpha is dropped, as in the reference
    frames, alphas = [], []
    for path in it.image.controls:
        rgb, alpha = load_image(path)
        if alpha is None:
            frames.append(resize_to_bucket(rgb, w, h))
            alphas.append(None)
        else:
            # Resized together with its colour (as the reference resizes the RGBA image), then split off.
            rgba = resize_to_bucket(np.dstack([rgb, alpha]), w, h)
            frames.append(np.ascontiguousarray(rgba[..., :3]))
            alphas.append(np.ascontiguousarray(rgba[..., 3]))
    frames.append(resize_to_bucket(target, w, h))
    alphas.append(None)
    return [Loaded(it, np.stack(frames), frames[0], alphas)]


def load_job(job: SourceJob) -> list[Loaded]:
    """Decode and resize a source's pending items (runs in a worker thread)."""
    return _load_image_item(job) if job.dataset.kind == "image" else _load_video(job)


def prefetch(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int) -> Iterator[tuple[Any, Future]]:
    """Run `fn` over `jobs` in `workers` threads, at most `workers + 1` ahead, yielding in order.

    Bounded look-ahead keeps memory flat on long datasets (a decoded clip waits at most a few batches).
    """
    it = iter(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for job in it:
            pending.append((job, pool.submit(fn, job)))
            if len(pending) > workers:
                break
        while pending:
            job, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield job, fut


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


@dataclass
class LatentModels:
    """What latent caching runs with.

    `embeddings` memoises SigLIP outputs by image content: every crop of a clip that starts at the same
    frame (`head` with several `target_frames`, or the same clip in two datasets) has the same start image.
    """

    vae: Any
    siglip: Any
    device: Any
    dtype: Any
    embeddings: dict = field(default_factory=dict)


def _pixels(frames: np.ndarray, models: LatentModels, normalize_in_float32: bool = False) -> torch.Tensor:
    """uint8 `[B, T, H, W, 3]` -> `[B, 3, T, H, W]` in [-1, 1].

    The reference normalises video crops after the cast to the compute dtype and one-frame stacks before it
    (in float32); both orders are kept so that float16 caches match it bit for bit.
    """
    import torch

    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3)
    if normalize_in_float32:
        return (x.float() / 127.5 - 1.0).to(device=models.device, dtype=models.dtype)
    return x.to(device=models.device, dtype=models.dtype) / 127.5 - 1.0


_EMBEDDING_MEMO = 64  # start images remembered; a few MB at most for the real 729 x 1152 embeddings


def _siglip(models: LatentModels, image: np.ndarray) -> torch.Tensor:
    import hashlib

    from framepack_cli.models.image_encoder import encode_image

    key = (image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest())
    emb = models.embeddings.get(key)
    if emb is None:
        if len(models.embeddings) >= _EMBEDDING_MEMO:
            models.embeddings.pop(next(iter(models.embeddings)))
        emb = models.embeddings[key] = encode_image(models.siglip, image)[0]
    return emb


def _index(values: Iterable[int]) -> torch.Tensor:
    import torch

    return torch.tensor(list(values), dtype=torch.int64)


def _context(latent: torch.Tensor, frames: tuple[int | None, ...]) -> torch.Tensor:
    """Gather latent frames `[16, len(frames), h, w]`, zeros where the frame is None."""
    import torch

    out = torch.zeros((latent.shape[0], len(frames), *latent.shape[2:]), dtype=latent.dtype)
    for i, f in enumerate(frames):
        if f is not None:
            out[:, i] = latent[:, f]
    return out


def encode_sections(batch: list[Loaded], models: LatentModels, settings: dict, f1: bool,
                    dataset: str | None = None) -> list[list[tuple]]:
    """VAE + SigLIP encode a batch of equally long crops; returns per item `(path, tensors, metadata)` per section.

    The trimmed crop is encoded in one pass; sections are cut from its latents (training.md §2.4-§2.5).
    """
    import torch

    from framepack_cli.models.vae import vae_encode

    window = settings["latent_window_size"]
    x = _pixels(np.stack([ld.frames for ld in batch]), models)
    with torch.no_grad():
        latents = vae_encode(models.vae, x).to("cpu", models.dtype)
    out = []
    for b, ld in enumerate(batch):
        lat = latents[b]
        n = (lat.shape[1] - 1) // window
        emb = _siglip(models, ld.siglip)
        plan: list[CacheSection] = f1_cache_sections(n, window) if f1 else vanilla_cache_sections(n, window)
        files = []
        for sec in plan:
            one_x, two_x, four_x = split_context(sec.context, f1)
            tensors = latent_cache_tensors(
                latents=lat[:, sec.target_start : sec.target_start + window],
                clean_latents=torch.cat([lat[:, 0:1], _context(lat, one_x)], dim=1),
                clean_latents_2x=_context(lat, two_x), clean_latents_4x=_context(lat, four_x),
                image_embeddings=emb, latent_indices=_index(sec.latent_indices),
                clean_latent_indices=_index(sec.clean_latent_indices),
                clean_latent_2x_indices=_index(sec.clean_latent_2x_indices),
                clean_latent_4x_indices=_index(sec.clean_latent_4x_indices),
            )
            meta = latent_cache_metadata(*ld.item.recorded, ld.item.length, settings, dataset)
            files.append((ld.item.outputs[sec.index], tensors, meta))
        out.append(files)
    return out


def encode_one_frame(batch: list[Loaded], models: LatentModels, settings: dict, ds: ImageDataset,
                     dataset: str | None = None) -> list[list[tuple]]:
    """One-frame caches of a batch: controls and target VAE-encoded one frame at a time (training.md §2.6)."""
    import torch

    from framepack_cli.io.images import mask_to_latent
    from framepack_cli.models.vae import vae_encode

    idx = one_frame_indices(ds.fp_latent_window_size, ds.fp_1f_clean_indices, ds.fp_1f_target_index,
                            ds.fp_1f_no_post, settings["one_frame_no_2x"], settings["one_frame_no_4x"])
    x = _pixels(np.stack([ld.frames for ld in batch]), models, normalize_in_float32=True)
    with torch.no_grad():
        # One frame at a time: the causal VAE compresses 4 frames into one after the first.
        latents = torch.cat([vae_encode(models.vae, x[:, :, i : i + 1]).to("cpu", models.dtype)
                             for i in range(x.shape[2])], dim=2)
    out = []
    for b, ld in enumerate(batch):
        w, h = ld.item.bucket
        for i, alpha in enumerate(ld.alphas):
            if alpha is not None:
                latents[b : b + 1, :, i : i + 1] *= mask_to_latent(alpha, w, h).to(latents.dtype)
        lat = latents[b]
        clean = lat[:, :-1]
        if idx.zero_post:
            clean = torch.cat([clean, torch.zeros_like(lat[:, :1])], dim=1)
        idx2, idx4 = idx.clean_latent_2x_indices, idx.clean_latent_4x_indices
        tensors = latent_cache_tensors(
            latents=lat[:, -1:], clean_latents=clean, image_embeddings=_siglip(models, ld.siglip),
            latent_indices=_index(idx.latent_indices), clean_latent_indices=_index(idx.clean_latent_indices),
            clean_latent_2x_indices=None if idx2 is None else _index(idx2),
            clean_latent_4x_indices=None if idx4 is None else _index(idx4),
        )
        out.append([(ld.item.outputs[0], tensors, latent_cache_metadata(*ld.item.recorded, None, settings,
                                                                               dataset))])
    return out


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------


def _default_sink() -> ProgressSink:
    from framepack_cli.cli.render import RichProgress

    return RichProgress()


def _workers(n: int | None) -> int:
    return n if n is not None else max(1, (os.cpu_count() or 2) - 1)


def _remove_stale(ds: Dataset, suffix: str, expected: set[Path], keep: bool, summary: CacheSummary) -> None:
    """Delete the cache files of this kind in `ds`'s cache folder that this run does not produce.

    Only files this tool wrote for this dataset (their `framepack_cli.version` / `framepack_cli.dataset`
    metadata says so) are deleted, and not with `--keep_cache`; any other file (a reference-made cache, a
    user's file, one of another dataset) is kept. Both lists go into the summary with the reasons.
    """
    directory = ds.cache_directory
    if not directory.is_dir():
        return
    wanted = {p.resolve() for p in expected}
    identity = dataset_identity(ds)
    for p in sorted(directory.glob(f"*{suffix}")):
        if suffix == LATENT_SUFFIX and p.name.endswith(TEXT_SUFFIX):
            continue
        if p.resolve() in wanted or not p.is_file():
            continue
        owner = cache_owner(p)
        if not owner.ours or owner.dataset is None:
            summary.kept_files.append((p, owner.reason))
        elif owner.dataset != identity:
            summary.kept_files.append((p, "written by framepack for another dataset"))
        elif keep:
            summary.kept_files.append((p, "stale (not produced by this run), kept because of --keep_cache"))
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                summary.kept_files.append((p, f"stale, but could not be removed ({e.strerror or e})"))
                continue
            summary.removed_files.append(p)


def prepare_cache_dirs(cfg: DatasetConfig, datasets: Iterable[Dataset]) -> list[tuple[Path, Path | None]]:
    """Create every dataset's cache_directory if missing and prove it writable, before any model loads.

    Returns:
        `(folder, top folder created or None)` pairs for `release_cache_dirs`.

    Raises:
        FramepackError: a cache_directory is a file (exit 2).
        ResourceError: one cannot be created or written (exit 3); folders created so far are removed.
    """
    from framepack_cli.io.writable import ensure_writable_dir

    made: list[tuple[Path, Path | None]] = []
    try:
        for ds in datasets:
            if any(ds.cache_directory == d for d, _ in made):
                continue
            made.append((ds.cache_directory, ensure_writable_dir(ds.cache_directory,
                                                                f"{cfg.path}: {ds.label}: cache_directory")))
    except FramepackError:
        release_cache_dirs(made)
        raise
    return made


def release_cache_dirs(made: list[tuple[Path, Path | None]]) -> None:
    """Remove the cache folders `prepare_cache_dirs` created that are still empty (a run that wrote nothing)."""
    from framepack_cli.io.writable import remove_created

    for folder, top in made:
        remove_created(folder, top)


def _report_recache(pairs: list[tuple[str, str]], sink: ProgressSink) -> None:
    """One line on items `--skip_existing` does not skip, with the first reason."""
    if pairs:
        name, reason = pairs[0]
        more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
        sink.message(f"Re-caching {len(pairs)} item(s) despite --skip_existing: {name}: {reason}{more}")


def _finish(summary: CacheSummary, what: str, sink: ProgressSink) -> CacheSummary:
    """The run's summary on stdout (counts, clips left out, stale files removed or kept); failures raise."""
    parts = [f"{summary.cached} {what} cached ({summary.files} files)", f"{summary.skipped} skipped (already cached)",
             f"{len(summary.failed)} failed"]
    if summary.recached:
        parts.insert(1, f"{summary.recached} re-cached (incomplete or made with other settings)")
    if summary.too_short:
        parts.append(f"{len(summary.too_short)} clip(s) too short (not cached)")
    files = []
    if summary.removed:
        files.append(f"{summary.removed} stale cache file(s) removed")
    if summary.kept:
        files.append(f"{summary.kept} other cache file(s) kept")
    sink.result(f"Done in {summary.seconds:.1f}s: " + ", ".join(parts) + "".join(f"; {f}" for f in files))
    for clip, reason in summary.too_short:
        sink.result(f"Not cached (too short): {clip}: {reason}")
    for p in summary.removed_files:
        sink.result(f"Removed stale cache file {p}")
    for p, why in summary.kept_files:
        sink.result(f"Kept {p}: {why}")
    if summary.failed:
        raise FramepackError("\n".join([f"{len(summary.failed)} item(s) could not be cached:"]
                                       + [f"  {name}: {reason}" for name, reason in summary.failed]),
                             hint="fix them and re-run with --skip_existing to cache only what is missing")
    return summary


def run_latents(opts: CacheLatentsOptions, sink: ProgressSink | None = None) -> CacheSummary:
    """Run `framepack cache latents` with validated options.

    Returns:
        The run's summary (also printed).

    Raises:
        FramepackError: config problems (all at once, before any model loads), model files, or items
            that failed (after the others were cached).
    """
    if opts.debug_mode is not None:
        from framepack_cli import __version__

        raise NotBuiltError(f"--debug_mode: dataset previews are not built yet in framepack {__version__}; "
                            "run without it to cache")
    t0 = time.perf_counter()
    from framepack_cli.options.dataset import load_dataset_config

    cfg = load_dataset_config(opts.dataset_config, batch_size=opts.batch_size)
    plans, too_short = plan_latents(cfg, opts)
    sink = sink or _default_sink()
    try:
        return _run_latents(cfg, plans, too_short, opts, sink, t0)
    finally:
        sink.close()


def _run_latents(cfg: DatasetConfig, plans: list[list[SourceJob]], too_short: list[tuple[str, str, str]],
                 opts: CacheLatentsOptions, sink: ProgressSink, t0: float) -> CacheSummary:
    for w in cfg.warnings:
        sink.message(f"Warning: {w}")
    summary = CacheSummary()
    for clip, reason, line in too_short:
        sink.message(f"Warning: {line}; this clip is not cached (--strict refuses the run instead)")
        summary.too_short.append((clip, reason))
    items = [it for jobs in plans for job in jobs for it in job.items]
    todo = [it for it in items if not it.skip]
    summary.skipped = len(items) - len(todo)
    summary.recached = sum(1 for it in todo if it.stale_reason)
    _report_recache([(it.name, it.stale_reason) for it in todo if it.stale_reason], sink)
    made = prepare_cache_dirs(cfg, [jobs[0].dataset for jobs in plans if jobs])
    try:
        return _encode_datasets(plans, opts, sink, summary, items, todo, t0)
    finally:
        release_cache_dirs(made)


def _encode_datasets(plans: list[list[SourceJob]], opts: CacheLatentsOptions, sink: ProgressSink,
                     summary: CacheSummary, items: list[LatentItem], todo: list[LatentItem], t0: float
                     ) -> CacheSummary:
    import torch

    from framepack_cli.engine.context import resolve_device

    mode = cache_mode(opts)
    models = None
    if todo:
        device = resolve_device(opts.device)
        if opts.disable_cudnn_backend:
            torch.backends.cudnn.enabled = False
        models = _load_latent_models(opts, device, sink)
    sink.start_items(len(items), f"caching latents ({mode})")
    sink.advance(summary.skipped)
    for jobs in plans:
        if not jobs:
            continue
        ds = jobs[0].dataset
        remove_temp_files(ds.cache_directory)
        settings = expected_settings(ds, mode, opts.one_frame_no_2x, opts.one_frame_no_4x)
        pending = [j for j in jobs if any(not it.skip for it in j.items)]
        groups: dict[tuple, list[Loaded]] = {}

        def flush(key: tuple, ds: Dataset = ds, settings: dict = settings, groups: dict = groups) -> None:
            batch = groups.pop(key)
            chunk = opts.batch_size or len(batch)
            for i in range(0, len(batch), chunk):
                _encode_and_save(batch[i : i + chunk], models, settings, ds, mode, summary, sink)

        for job, fut in prefetch(load_job, pending, _workers(opts.num_workers)):
            try:
                loaded = fut.result()
            except FramepackError as e:
                failed = [it for it in job.items if not it.skip]
                summary.failed += [(it.name, e.message) for it in failed]
                sink.advance(len(failed))
                continue
            for ld in loaded:
                key = (*ld.item.bucket, ld.frames.shape[0], ds.fp_latent_window_size)
                groups.setdefault(key, []).append(ld)
                if len(groups[key]) >= ds.batch_size:
                    flush(key)
        for key in list(groups):
            flush(key)
        expected = {p for job in jobs for it in job.items for p in it.outputs}
        _remove_stale(ds, LATENT_SUFFIX, expected, opts.keep_cache, summary)
    sink.end_items()
    summary.seconds = time.perf_counter() - t0
    return _finish(summary, "items", sink)


def _load_latent_models(opts: CacheLatentsOptions, device, sink: ProgressSink) -> LatentModels:
    """The VAE and SigLIP in their dtypes (`--vae_dtype` / `--image_encoder_dtype`, auto = the precision table);
    the latents are stored in the VAE's dtype."""
    from framepack_cli.engine.precision import precision_for
    from framepack_cli.models.image_encoder import load_image_encoder
    from framepack_cli.models.vae import load_vae

    precision = precision_for(opts, device)
    sink.message(f"Loading VAE {opts.vae}")
    vae = load_vae(opts.vae, device=device, dtype=precision.vae, chunk_size=opts.vae_chunk_size,
                   spatial_tile_sample_min_size=opts.vae_spatial_tile_sample_min_size, tiling=opts.vae_tiling)
    sink.message(f"Loading image encoder {opts.image_encoder}")
    siglip = load_image_encoder(opts.image_encoder, device=device, dtype=precision.image_encoder)
    return LatentModels(vae, siglip, device, precision.vae)


def _encode_and_save(batch: list[Loaded], models: LatentModels, settings: dict, ds: Dataset, mode: str,
                     summary: CacheSummary, sink: ProgressSink) -> None:
    import torch

    try:
        if mode == "one_frame":
            results = encode_one_frame(batch, models, settings, ds, dataset=dataset_identity(ds))
        else:
            results = encode_sections(batch, models, settings, f1=mode == "f1", dataset=dataset_identity(ds))
    except (FramepackError, torch.cuda.OutOfMemoryError) as e:
        if isinstance(e, FramepackError):
            reason = e.message
        else:  # one long clip should not end the run: report it with what lowers the VAE's memory
            reason = ("out of GPU memory while encoding; try --vae_chunk_size 32 (or 16), --vae_tiling, or a "
                      "smaller batch_size")
            torch.cuda.empty_cache()
        summary.failed += [(ld.item.name, reason) for ld in batch]
        sink.advance(len(batch))
        return
    for ld, files in zip(batch, results, strict=True):
        try:
            for path, tensors, meta in files:
                bad = replace_nans(tensors)
                if bad:
                    sink.message(f"Warning: {path.name}: NaN in {', '.join(bad)} replaced by 0")
                save_cache_file(path, tensors, meta)
                summary.files += 1
            summary.cached += 1
        except ResourceError:
            raise  # disk full or folder gone: every other item would fail the same way
        except FramepackError as e:
            summary.failed.append((ld.item.name, e.message))
        sink.advance()


# --------------------------------------------------------------------------------------------------
# Text encoder caches
# --------------------------------------------------------------------------------------------------


@dataclass
class TextItem:
    """One caption to encode: per image, or per source clip (shared by all its crops and sections)."""

    dataset: Dataset
    source: Path
    caption: str
    output: Path
    skip: bool = False
    stale_reason: str | None = None


def plan_text(cfg: DatasetConfig, skip_existing: bool) -> list[TextItem]:
    """Every caption of every dataset with its output file; with `skip_existing`, which ones stay."""
    items = []
    for ds in cfg.datasets:
        src: Iterable[ImageItem | VideoItem] = ds.items
        for it in src:
            items.append(TextItem(ds, it.path, it.caption, ds.cache_directory / text_cache_name(it.stem)))
    if skip_existing:
        for it in items:
            if not it.output.exists():
                continue
            try:
                _, meta = read_cache_header(it.output)
            except FramepackError:
                it.stale_reason = "incomplete or unreadable"
                continue
            # A changed caption would otherwise keep training on the old text.
            if meta.get("caption1") != it.caption:
                it.stale_reason = "caption changed"
            else:
                it.skip = True
    return items


def run_text(opts: CacheTextOptions, sink: ProgressSink | None = None) -> CacheSummary:
    """Run `framepack cache text` with validated options.

    Returns:
        The run's summary (also printed).

    Raises:
        FramepackError: config problems (before any model loads), model files, or failed items.
    """
    t0 = time.perf_counter()
    from framepack_cli.options.dataset import load_dataset_config

    cfg = load_dataset_config(opts.dataset_config, batch_size=opts.batch_size)
    items = plan_text(cfg, opts.skip_existing)
    sink = sink or _default_sink()
    try:
        return _run_text(cfg, items, opts, sink, t0)
    finally:
        sink.close()


def _run_text(cfg: DatasetConfig, items: list[TextItem], opts: CacheTextOptions, sink: ProgressSink,
              t0: float) -> CacheSummary:
    for w in cfg.warnings:
        sink.message(f"Warning: {w}")
    empty = [it for it in items if not it.caption.strip()]
    if empty:
        # Encoded as they are, like the reference's text caching (its trainer's caches); only inference turns an
        # empty prompt into " ".
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        sink.message(f"Warning: {len(empty)} empty caption(s), encoded as they are (as the reference does): "
                     f"{empty[0].source}{more}")
    summary = CacheSummary()
    todo = [it for it in items if not it.skip]
    summary.skipped = len(items) - len(todo)
    summary.recached = sum(1 for it in todo if it.stale_reason)
    _report_recache([(str(it.source), it.stale_reason) for it in todo if it.stale_reason], sink)
    made = prepare_cache_dirs(cfg, list({id(it.dataset): it.dataset for it in items}.values()))
    try:
        return _encode_texts(items, todo, opts, summary, sink, t0)
    finally:
        release_cache_dirs(made)


def _encode_texts(items: list[TextItem], todo: list[TextItem], opts: CacheTextOptions, summary: CacheSummary,
                  sink: ProgressSink, t0: float) -> CacheSummary:
    import torch

    from framepack_cli.engine.context import resolve_device
    from framepack_cli.engine.precision import precision_for
    from framepack_cli.models.text_encoders import (
        encode_prompt,
        load_text_encoder1,
        load_text_encoder2,
        load_tokenizers,
    )

    for directory in {it.dataset.cache_directory for it in items}:
        remove_temp_files(directory)
    sink.start_items(len(items), "caching text")
    sink.advance(summary.skipped)
    if todo:
        device = resolve_device(opts.device)
        dtype = precision_for(opts, device).text_encoder
        tok1, tok2 = load_tokenizers(opts.text_encoder1, opts.text_encoder2, opts.tokenizer1, opts.tokenizer2)
        sink.message(f"Loading text encoders {opts.text_encoder1}, {opts.text_encoder2}")
        te1 = load_text_encoder1(opts.text_encoder1, device=device, dtype=dtype, fp8=opts.fp8_llm)
        te2 = load_text_encoder2(opts.text_encoder2, device=device, dtype=dtype)
        for it in todo:
            try:
                with torch.no_grad():
                    vec, mask, pooler = encode_prompt(it.caption, te1, tok1, te2, tok2)
                tensors = text_cache_tensors(vec[0], mask[0], pooler[0])
                bad = replace_nans(tensors)
                if bad:
                    sink.message(f"Warning: {it.output.name}: NaN in {', '.join(bad)} replaced by 0")
                save_text_cache(it.output, tensors, it.caption, dataset_identity(it.dataset))
                summary.cached += 1
                summary.files += 1
            except ResourceError:
                raise
            except FramepackError as e:
                summary.failed.append((str(it.source), e.message))
            sink.advance()
    by_dataset: dict[int, tuple[Dataset, set[Path]]] = {}
    for it in items:
        by_dataset.setdefault(id(it.dataset), (it.dataset, set()))[1].add(it.output)
    for ds, expected in by_dataset.values():
        _remove_stale(ds, TEXT_SUFFIX, expected, opts.keep_cache, summary)
    sink.end_items()
    summary.seconds = time.perf_counter() - t0
    return _finish(summary, "captions", sink)
