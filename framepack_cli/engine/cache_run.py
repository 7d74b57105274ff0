"""What `framepack cache latents` and `framepack cache text` share: the run's summary, the cache folders
(created and proven writable before any model loads, removed again when the run wrote nothing), stale
cache files (deleted only when framepack wrote them for the same dataset) and the closing report on stdout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError
from framepack_cli.io.cache_format import cache_owner
from framepack_cli.options.dataset import DatasetConfig, ImageDataset, VideoDataset, dataset_identity
from framepack_cli.plan.cache_names import LATENT_SUFFIX, TEXT_SUFFIX

Dataset = ImageDataset | VideoDataset


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


def remove_stale(ds: Dataset, suffix: str, expected: set[Path], keep: bool, summary: CacheSummary) -> None:
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


def report_config_warnings(cfg: DatasetConfig, sink: ProgressSink) -> None:
    """The dataset config's harmless oddities (renamed keys, rounded target_frames), one line each."""
    for w in cfg.warnings:
        sink.message(f"Warning: {w}")


def report_recache(pairs: list[tuple[str, str]], sink: ProgressSink) -> None:
    """One line on items `--skip_existing` does not skip, with the first reason."""
    if pairs:
        name, reason = pairs[0]
        more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
        sink.message(f"Re-caching {len(pairs)} item(s) despite --skip_existing: {name}: {reason}{more}")


def finish(summary: CacheSummary, what: str, sink: ProgressSink) -> CacheSummary:
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
