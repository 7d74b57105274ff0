"""Engine of `framepack cache text` (training.md §3): every caption of a dataset encoded with LLaMA and CLIP-L
into one text cache per image or source clip.

Like latent caching: the config is validated and every output named before a model loads; cache folders
are created and proven writable first; `--skip_existing` keeps a cache only when it is complete and records
the same caption; each file is written atomically (merged into an existing file's foreign keys); stale text
caches framepack wrote for the same dataset are deleted; a summary on stdout ends the run.
"""

from __future__ import annotations

import time

from framepack_cli.engine.cache_models import load_text_models
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
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.io.cache_format import (
    read_cache_header,
    remove_temp_files,
    replace_nans,
    save_text_cache,
    text_cache_tensors,
)
from framepack_cli.options.cache import CacheTextOptions
from framepack_cli.options.dataset import DatasetConfig, dataset_identity
from framepack_cli.plan.cache_items import TextItem, text_output
from framepack_cli.plan.cache_names import TEXT_SUFFIX


def plan_text(cfg: DatasetConfig, skip_existing: bool) -> list[TextItem]:
    """Every caption of every dataset with its output file; with `skip_existing`, which ones stay."""
    items = [TextItem(ds, it.path, it.caption, text_output(ds, it.stem)) for ds in cfg.datasets for it in ds.items]
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


def run_text(opts: CacheTextOptions, sink: ProgressSink) -> CacheSummary:
    """Run `framepack cache text` with validated options, reporting to `sink` (the caller closes it).

    Returns:
        The run's summary (also printed).

    Raises:
        FramepackError: config problems (before any model loads), model files, or failed items.
    """
    t0 = time.perf_counter()
    from framepack_cli.options.dataset import load_dataset_config

    cfg = load_dataset_config(opts.dataset_config, batch_size=opts.batch_size)
    items = plan_text(cfg, opts.skip_existing)
    report_config_warnings(cfg, sink)
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
    report_recache([(str(it.source), it.stale_reason) for it in todo if it.stale_reason], sink)
    made = prepare_cache_dirs(cfg, list({id(it.dataset): it.dataset for it in items}.values()))
    try:
        return _encode_texts(items, todo, opts, summary, sink, t0)
    finally:
        release_cache_dirs(made)


def _encode_texts(items: list[TextItem], todo: list[TextItem], opts: CacheTextOptions, summary: CacheSummary,
                  sink: ProgressSink, t0: float) -> CacheSummary:
    import torch

    from framepack_cli.engine.context import resolve_device
    from framepack_cli.models.text_encoders import encode_prompt

    for directory in {it.dataset.cache_directory for it in items}:
        remove_temp_files(directory)
    sink.start_items(len(items), "caching text")
    sink.advance(summary.skipped)
    if todo:
        device = resolve_device(opts.device)
        m = load_text_models(opts, device, sink)
        for it in todo:
            try:
                with torch.no_grad():
                    vec, mask, pooler = encode_prompt(it.caption, m.te1, m.tok1, m.te2, m.tok2)
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
    by_dataset: dict[int, tuple[Dataset, set]] = {}
    for it in items:
        by_dataset.setdefault(id(it.dataset), (it.dataset, set()))[1].add(it.output)
    for ds, expected in by_dataset.values():
        remove_stale(ds, TEXT_SUFFIX, expected, opts.keep_cache, summary)
    sink.end_items()
    summary.seconds = time.perf_counter() - t0
    return finish(summary, "captions", sink)
