"""Engine of `framepack cache latents` (training.md §2).

It runs in three phases so that every user mistake surfaces before a model loads:

1. plan: load and validate the dataset config, probe every clip and image, compute crops, buckets,
   sections and output files (`plan.cache_items`), refuse datasets the mode cannot use, and decide what
   `--skip_existing` skips -- all problems at once, one line each. A clip too short for one section is left
   out with a warning (`--strict`: an error like the others);
2. create every cache folder and prove it writable, then load the models (only if something is left to do);
3. stream the sources through a small thread pool (decode + bucket resize), group them into batches
   like the reference, encode (`engine.latent_encoding`), and write each cache file atomically; a failing
   source is recorded and the run goes on, a failing write (disk full) ends it (exit 3). Stale cache files
   are then deleted when framepack wrote them for the same dataset; others are kept. A summary on stdout
   (cached, skipped, clips left out, files removed and kept with why) ends the run; failed items exit 2.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from framepack_cli.engine.cache_models import LatentModels, load_latent_models
from framepack_cli.engine.cache_run import (
    CacheSummary,
    Dataset,
    finish,
    prepare_cache_dirs,
    release_cache_dirs,
    remove_stale,
    report_config_warnings,
    report_recache,
)
from framepack_cli.engine.latent_encoding import Loaded, encode_one_frame, encode_sections
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError, NotBuiltError, ResourceError
from framepack_cli.io.cache_format import cache_mismatches, remove_temp_files, replace_nans, save_cache_file
from framepack_cli.options.cache import CacheLatentsOptions
from framepack_cli.options.dataset import DatasetConfig, ImageDataset, VideoDataset, dataset_identity, source_key
from framepack_cli.plan.cache_items import (
    LatentItem,
    SourceJob,
    cache_mode,
    expected_settings,
    mode_refusal,
    plan_clip,
    plan_image,
)
from framepack_cli.plan.cache_names import LATENT_SUFFIX
from framepack_cli.plan.frames import trimmed_frames

# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


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
            size = _image_size(item.path)
            for c in item.controls:
                _image_size(c)
        except FramepackError as e:
            errors.append(cfg.problem(ds, key, str(e)))
            continue
        planned = plan_image(ds, item.stem, size, item.controls)
        if isinstance(planned, str):
            errors.append(cfg.problem(ds, key, f"{item.path}: {planned}"))
            continue
        jobs.append(SourceJob(ds, item.path, [planned]))
    return jobs


def _plan_videos(cfg: DatasetConfig, ds: VideoDataset, errors: list[str],
                 too_short: list[tuple[str, str, str]] | None = None) -> list[SourceJob]:
    """Jobs of a video dataset. A clip too short for one section (or for every target_frames value) goes to
    `too_short` as `(clip, reason, error line)`, or to `errors` when `too_short` is None (`--strict`). Crops
    that can never make a section whatever the clip (a target_frames value or max_frames below one section)
    are config errors either way."""
    from framepack_cli.io.video_frames import probe_clip

    key = source_key(ds)
    jobs = []
    for item in ds.items:
        try:
            info = probe_clip(item.path)
        except FramepackError as e:
            errors.append(cfg.problem(ds, key, str(e)))
            continue
        plan = plan_clip(ds, item.stem, info.frames, (info.width, info.height))
        if plan.problem is not None:
            bad_key, reason = plan.problem
            line = cfg.problem(ds, bad_key or key, f"{item.path}: {reason}")
            if plan.too_short and too_short is not None:
                too_short.append((str(item.path), reason, line))
            else:
                errors.append(line)
            continue
        jobs.append(SourceJob(ds, item.path, plan.items, plan.frames_needed))
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
    mode = cache_mode(opts.one_frame, opts.f1)
    errors: list[str] = []
    too_short: list[tuple[str, str, str]] | None = None if opts.strict else []
    plans = []
    for ds in cfg.datasets:
        refusal = mode_refusal(mode, ds.kind)
        if refusal is not None:
            errors.append(cfg.problem(ds, source_key(ds), refusal))
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
    target, _ = load_image(job.path)  # the target's alpha is dropped, as in the reference
    frames, alphas = [], []
    for path in it.controls:
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


def _workers(n: int | None) -> int:
    return n if n is not None else max(1, (os.cpu_count() or 2) - 1)


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------


def run_latents(opts: CacheLatentsOptions, sink: ProgressSink) -> CacheSummary:
    """Run `framepack cache latents` with validated options, reporting to `sink` (the caller closes it).

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
    report_config_warnings(cfg, sink)
    summary = CacheSummary()
    for clip, reason, line in too_short:
        sink.message(f"Warning: {line}; this clip is not cached (--strict refuses the run instead)")
        summary.too_short.append((clip, reason))
    items = [it for jobs in plans for job in jobs for it in job.items]
    todo = [it for it in items if not it.skip]
    summary.skipped = len(items) - len(todo)
    summary.recached = sum(1 for it in todo if it.stale_reason)
    report_recache([(it.name, it.stale_reason) for it in todo if it.stale_reason], sink)
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

    mode = cache_mode(opts.one_frame, opts.f1)
    models = None
    if todo:
        device = resolve_device(opts.device)
        if opts.disable_cudnn_backend:
            torch.backends.cudnn.enabled = False
        models = load_latent_models(opts, device, sink)
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
        remove_stale(ds, LATENT_SUFFIX, expected, opts.keep_cache, summary)
    sink.end_items()
    summary.seconds = time.perf_counter() - t0
    return finish(summary, "items", sink)


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
