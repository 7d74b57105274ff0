"""Engine of `framepack download`: fetch the catalog's files with huggingface_hub into the models directory.

1. Ask the hub for each repository's file list with sizes and hashes (`HfApi.model_info(files_metadata=True)`)
   and pick the files the catalog (`plan.model_catalog`) names.
2. Print what will be fetched and the disk space needed; refuse (exit 3, one line) when the disk lacks it;
   `--dry_run` stops here.
3. Fetch each missing file with `hf_hub_download` into the hub cache layout under the models directory: files
   already complete are not fetched again; a connection cut mid-file resumes from the bytes received (HTTP Range);
   a run stopped part-way keeps every complete file, so the same command continues where it stopped (the file in
   flight continues too: LFS files are received into `blobs/<sha256>.framepack-partial`, which the next run
   continues with an HTTP Range request, since huggingface_hub 2 never reuses a partial file across runs). Each
   new LFS file is checked against the sha256 the hub lists before it counts as fetched.

The endpoint is `$HF_ENDPOINT` (read when the command runs), default https://huggingface.co.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError, Interrupted, ResourceError
from framepack_cli.io.hashing import sha256_file
from framepack_cli.io.writable import resource_error_for
from framepack_cli.options.download import DownloadOptions
from framepack_cli.plan.model_catalog import COMPONENTS, Source, dit_source

SPACE_MARGIN = 64 * 2**20  # keep a little room (hub bookkeeping: refs, locks, symlinks)


@dataclass
class PlannedFile:
    repo: str
    revision: str
    path: str  # repository path
    size: int
    sha256: str | None  # LFS files only
    present: bool = False


@dataclass
class PlannedSource:
    component: str  # `dit`, `dit-f1`, `vae`, ...
    source: Source
    commit: str
    files: list[PlannedFile] = field(default_factory=list)

    partial: int = 0  # bytes of unfinished transfers an earlier run left

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.present) - self.partial


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def selected_sources(opts: DownloadOptions) -> list[tuple[str, Source]]:
    """(component, source) pairs to fetch, in order, from the options."""
    out: list[tuple[str, Source]] = []
    for name in opts.selected_components:
        if name == "dit":
            for variant in opts.variants:
                out.append(("dit" if variant == "framepack" else "dit-f1", dit_source(variant, opts.dit_format)))
        else:
            out.append((name, COMPONENTS[name].sources[0]))
    return out


def _hub_call_error(exc: Exception, repo: str, what: str) -> FramepackError:
    """One line for a failed hub request: a missing repository or file (exit 2), an unreachable hub (exit 3)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint() or "https://huggingface.co"
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError)
                                                  and "HF_HUB_OFFLINE" in str(exc)):
        return FramepackError(f"{repo}: HF_HUB_OFFLINE is set, so {what} cannot be fetched",
                              hint="unset HF_HUB_OFFLINE for `framepack download` (other commands never use the "
                              "network)")
    if isinstance(exc, GatedRepoError):
        return FramepackError(f"{repo}: the repository is gated on {where}; {what} needs an accepted licence",
                              hint="accept it on the repository page and run `hf auth login`")
    if isinstance(exc, RepositoryNotFoundError):
        return FramepackError(f"{repo}: repository not found on {where} (404)",
                              hint="check HF_ENDPOINT, or report it: the catalog may be out of date")
    if isinstance(exc, RevisionNotFoundError):
        return FramepackError(f"{repo}: revision not found on {where}")
    if isinstance(exc, EntryNotFoundError):
        return FramepackError(f"{repo}: {what} not found on {where} (404)",
                              hint="the repository changed; report it (the catalog may be out of date)")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return ResourceError(f"{repo}: the hub answered {status} for {what} ({where})",
                             hint="run the same command again later (complete files are kept)")
    return ResourceError(f"{repo}: cannot reach {where} for {what} ({type(exc).__name__})",
                         hint="check the network (or HF_ENDPOINT) and run the same command again; complete files "
                         "are kept")


def plan(opts: DownloadOptions) -> list[PlannedSource]:
    """Ask the hub for the files of every selected source; mark those already complete in the models directory."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint())
    infos: dict[tuple[str, str], object] = {}
    out: list[PlannedSource] = []
    for component, src in selected_sources(opts):
        key = (src.repo, src.revision)
        if key not in infos:
            try:
                infos[key] = api.model_info(src.repo, revision=src.revision, files_metadata=True)
            except (HfHubHTTPError, OSError, ValueError) as e:
                raise _hub_call_error(e, src.repo, "the file list") from None
            except Exception as e:  # httpx transport errors (connection refused, DNS) are not OSErrors
                raise _hub_call_error(e, src.repo, "the file list") from None
        info = infos[key]
        commit = getattr(info, "sha", None) or src.revision
        files = []
        for sib in getattr(info, "siblings", None) or []:
            if not src.wants(sib.rfilename):
                continue
            lfs = getattr(sib, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            size = sib.size if sib.size is not None else (getattr(lfs, "size", None) or 0)
            files.append(PlannedFile(src.repo, src.revision, sib.rfilename, int(size), sha))
        for pattern in src.files:
            if "*" not in pattern and not any(f.path == pattern for f in files):
                raise FramepackError(f"{src.repo}: {pattern} is not in the repository (revision {src.revision})",
                                     hint="the repository changed; report it (the catalog may be out of date)")
        if not any(_matches_entry(f.path, src) for f in files):
            raise FramepackError(f"{src.repo}: no file matching {src.entry} in the repository "
                                 f"(revision {src.revision})",
                                 hint="the repository changed; report it (the catalog may be out of date)")
        files.sort(key=lambda f: f.path)
        for f in files:
            f.present = _is_complete(f, commit, opts.target_dir)
        partial = sum(partial_bytes(opts.target_dir, f) for f in files if not f.present)
        out.append(PlannedSource(component, src, commit, files, partial))
    return out


def _matches_entry(path: str, src: Source) -> bool:
    from framepack_cli.plan.model_catalog import path_matches

    return path_matches(path, src.entry)


def _is_complete(f: PlannedFile, commit: str, cache_dir: Path) -> bool:
    """Is this file already in the models directory at this commit, with the hub's size?"""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(f.repo, f.path, cache_dir=str(cache_dir), revision=commit)
    except (OSError, ValueError):
        return False
    if not isinstance(cached, str):
        return False
    try:
        return os.path.getsize(cached) == f.size
    except OSError:
        return False


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds `path` (its first existing parent)."""
    for p in [path, *path.parents]:
        if p.exists():
            return shutil.disk_usage(p).free
    return shutil.disk_usage(Path.cwd()).free


def describe(planned: list[PlannedSource], target: Path, sink: ProgressSink) -> int:
    """Print the plan (one line per component, then the total); return the bytes still to fetch."""
    need = 0
    for ps in planned:
        total = sum(f.size for f in ps.files)
        missing = ps.missing_bytes
        need += missing
        left = sum(1 for f in ps.files if not f.present)
        state = "complete" if not left else f"{left} of {len(ps.files)} files to fetch, {_gb(missing)}" + (
            f" ({_gb(ps.partial)} already received)" if ps.partial else "")
        sink.message(f"{ps.component}: {ps.source.repo} ({ps.source.label}, {len(ps.files)} files, {_gb(total)}): "
                     f"{state}")
    sink.message(f"Models directory {target}: {_gb(need)} to fetch")
    return need


PARTIAL = ".framepack-partial"  # suffix of a blob being fetched: kept when a run stops, continued by the next one


def repo_folder(cache_dir: Path, repo: str) -> Path:
    return cache_dir / ("models--" + repo.replace("/", "--"))


def partial_path(cache_dir: Path, f: PlannedFile) -> Path | None:
    """Where the unfinished transfer of an LFS file lies (its blob name is its sha256, as the hub's etag)."""
    return repo_folder(cache_dir, f.repo) / "blobs" / (f.sha256 + PARTIAL) if f.sha256 else None


def partial_bytes(cache_dir: Path, f: PlannedFile) -> int:
    part = partial_path(cache_dir, f)
    try:
        n = part.stat().st_size if part is not None else 0
    except OSError:
        return 0
    return n if n <= f.size else 0


def _fill_blob(f: PlannedFile, cache_dir: Path) -> None:
    """Fetch an LFS file's bytes into its blob, continuing a transfer an earlier run left (HTTP Range), and check
    them against the hub's sha256. huggingface_hub 2 never reuses a partial file across runs (each attempt writes
    a fresh temporary file and removes it on failure), so the transfer is ours; `hf_hub_download` then finds the
    blob and writes the snapshot link and refs itself."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(f.repo, f.path, revision=f.revision, endpoint=endpoint()),
                                endpoint=endpoint())
    if meta.etag != f.sha256 or meta.location is None:
        return  # not a plain LFS blob (or the file changed since the listing): leave it to hf_hub_download
    blobs = repo_folder(cache_dir, f.repo) / "blobs"
    blob = blobs / f.sha256
    if blob.exists():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    part = blobs / (f.sha256 + PARTIAL)
    have = partial_bytes(cache_dir, f)
    mode = "r+b" if part.exists() else "wb"
    with open(part, mode) as fh:
        fh.truncate(have)
        fh.seek(have)
        http_get(meta.location, fh, resume_size=have, headers=build_hf_headers(), expected_size=f.size,
                 displayed_filename=f.path)
    got = sha256_file(str(part))
    if got != f.sha256:
        part.unlink(missing_ok=True)  # our own transfer: not the hub's bytes, not kept
        raise ResourceError(f"{f.repo}: {f.path} arrived damaged (sha256 {got[:12]}..., the hub lists "
                            f"{f.sha256[:12]}...)", hint="run the same command again to fetch it anew")
    os.replace(part, blob)


def _fetch(f: PlannedFile, cache_dir: Path) -> str:
    from huggingface_hub import hf_hub_download

    try:
        if f.sha256 is not None:
            _fill_blob(f, cache_dir)
        local = hf_hub_download(f.repo, f.path, revision=f.revision, cache_dir=str(cache_dir), endpoint=endpoint())
    except FramepackError:
        raise
    except OSError as e:
        if getattr(e, "errno", None) is not None:
            raise resource_error_for(e, "--models_dir", cache_dir) from None
        raise _hub_call_error(e, f.repo, f.path) from None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # hub HTTP errors and httpx transport errors
        raise _hub_call_error(e, f.repo, f.path) from None
    if f.sha256 is not None:
        got = sha256_file(local)
        if got != f.sha256:
            blob = os.path.realpath(local)
            for p in (local, blob):  # our own download: do not keep a file that is not the hub's
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise ResourceError(f"{f.repo}: {f.path} arrived damaged (sha256 {got[:12]}..., the hub lists "
                                f"{f.sha256[:12]}...)", hint="run the same command again to fetch it anew")
    return local


def run(opts: DownloadOptions, sink: ProgressSink) -> None:
    """Run `framepack download` with validated options."""
    target = opts.target_dir
    planned = plan(opts)
    need = describe(planned, target, sink)
    free = free_space(target)
    if need and need + SPACE_MARGIN > free:
        raise ResourceError(f"--models_dir {target}: {_gb(need)} to fetch but only {_gb(free)} free on that disk",
                            hint="free some space or pass --models_dir on a larger disk")
    if opts.dry_run:
        sink.message("Dry run: nothing fetched")
        return
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise resource_error_for(e, "--models_dir", target) from None
    todo = [(ps, f) for ps in planned for f in ps.files if not f.present]
    done = 0
    try:
        for _ps, f in todo:
            sink.message(f"Fetching {f.repo}/{f.path} ({_gb(f.size)}) [{done + 1}/{len(todo)}]")
            _fetch(f, target)
            done += 1
    except KeyboardInterrupt:
        raise Interrupted(f"Interrupted: fetched {done} of {len(todo)} files into {target}; run the same command "
                          "again to continue (complete files are kept)") from None
    from framepack_cli.models.store import complete_entry, snapshot_dir

    for ps in planned:
        snap = snapshot_dir(ps.source, target)
        entry = complete_entry(ps.source, snap) if snap is not None else None
        if entry is None:
            raise FramepackError(f"{ps.source.repo}: fetched, but {ps.source.entry} is not complete in {target}",
                                 hint="run the same command again")
        flag = COMPONENTS[ps.component].flag
        sink.result(f"{ps.component}: {entry}" + (f" ({flag})" if flag else ""))
    if done:
        sink.message(f"Done: fetched {done} files ({_gb(need)}) into {target}; commands find them without model flags")
    else:
        sink.message(f"Everything is already in {target}; commands find it without model flags")
