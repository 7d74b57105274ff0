"""FramePack cache files: tensor keys, metadata, crash-safe writes and compatibility checks.

Keys are the reference trainer's (training.md §2.2-§2.3, §3.3), so caches written here and by musubi-tuner
are interchangeable; file names are in `plan.cache_names`.

On top of the reference metadata (`architecture`, `width`, `height`, `format_version`, `frame_count`;
text caches: `architecture`, `caption1`, `format_version`) our caches record, under `framepack_cli.*` keys,
the settings that must match at training time (latent caches), the writer (`framepack_cli.version`) and
the dataset they were made for (`framepack_cli.dataset`, see `options.dataset.dataset_identity`). The
reference trainer ignores metadata, so these extra keys cost nothing in interchangeability; they let a
run delete only stale caches it made itself for the same dataset (`cache_owner`).

Every file is written to a hidden temporary name in the same folder, synced, then renamed over the final
name: a run killed at any point leaves either the complete old file, the complete new file, or a
temporary file that the next run deletes -- never a truncated cache under a real name.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_cli.errors import FramepackError
from framepack_cli.io.writable import resource_error_for

if TYPE_CHECKING:
    import torch

ARCHITECTURE = "framepack"
FORMAT_VERSION = "1.0.1"
META_PREFIX = "framepack_cli."
TEMP_SUFFIX = ".framepack-tmp"
VERSION_KEY = META_PREFIX + "version"  # the writer tag: present only in files framepack wrote
DATASET_KEY = META_PREFIX + "dataset"

# Settings a trainer must agree with. Values are stored as strings (safetensors metadata is str -> str).
SETTING_KEYS = (
    "mode", "latent_window_size", "resolution", "enable_bucket", "bucket_no_upscale",
    "one_frame_no_2x", "one_frame_no_4x",
)
MODES = ("vanilla", "f1", "one_frame")


# --------------------------------------------------------------------------------------------------
# Tensors and metadata
# --------------------------------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float16` -> `float16`, the dtype suffix of cache keys."""
    return str(dtype).removeprefix("torch.")


def latent_cache_tensors(
    *,
    latents: torch.Tensor,
    clean_latents: torch.Tensor,
    image_embeddings: torch.Tensor,
    latent_indices: torch.Tensor,
    clean_latent_indices: torch.Tensor,
    clean_latents_2x: torch.Tensor | None = None,
    clean_latents_4x: torch.Tensor | None = None,
    clean_latent_2x_indices: torch.Tensor | None = None,
    clean_latent_4x_indices: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of one latent cache file under the reference's keys.

    Every `latents*` key carries the target's `FxHxW` and dtype (the reference's convention: loaders strip
    both); `image_embeddings` carries the latent dtype string too, so it is stored in that dtype.

    Args:
        latents: target `[16, F, h, w]`.
        clean_latents: `[16, Nc, h, w]`.
        image_embeddings: SigLIP last hidden state `[729, D]`.
        latent_indices: `[F]` int64.
        clean_latent_indices: `[Nc]` int64.
        clean_latents_2x: `[16, 2, h, w]` or None (one-frame).
        clean_latents_4x: `[16, 16, h, w]` or None (one-frame).
        clean_latent_2x_indices: `[2]` int64 or None (`--one_frame_no_2x`).
        clean_latent_4x_indices: `[16]` int64 or None (`--one_frame_no_4x`).
    """
    _, f, h, w = latents.shape
    ld = dtype_name(latents.dtype)
    idt = dtype_name(latent_indices.dtype)
    shape = f"{f}x{h}x{w}"
    sd = {
        f"latents_{shape}_{ld}": latents,
        f"image_embeddings_{ld}": image_embeddings.to(latents.dtype),
        f"latent_indices_{idt}": latent_indices,
        f"clean_latent_indices_{idt}": clean_latent_indices,
        f"latents_clean_{shape}_{ld}": clean_latents,
    }
    if clean_latent_2x_indices is not None:
        sd[f"clean_latent_2x_indices_{idt}"] = clean_latent_2x_indices
    if clean_latents_2x is not None:
        sd[f"latents_clean_2x_{shape}_{ld}"] = clean_latents_2x
    if clean_latent_4x_indices is not None:
        sd[f"clean_latent_4x_indices_{idt}"] = clean_latent_4x_indices
    if clean_latents_4x is not None:
        sd[f"latents_clean_4x_{shape}_{ld}"] = clean_latents_4x
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def text_cache_tensors(llama_vec: torch.Tensor, llama_mask: torch.Tensor, clip_pooler: torch.Tensor) -> dict:
    """Tensors of a text cache: `llama_vec_<dt>` `[512, D]`, `llama_attention_mask` `[512]` bool,
    `clip_l_pooler_<dt>` `[Dc]`."""
    return {
        f"llama_vec_{dtype_name(llama_vec.dtype)}": llama_vec.detach().cpu().contiguous(),
        "llama_attention_mask": llama_mask.detach().cpu().bool().contiguous(),
        f"clip_l_pooler_{dtype_name(clip_pooler.dtype)}": clip_pooler.detach().cpu().contiguous(),
    }


def _meta_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}x{value[1]}"
        return ",".join(str(v) for v in value)
    return str(value)


def _writer_metadata(dataset: str | None) -> dict[str, str]:
    from framepack_cli import __version__

    meta = {VERSION_KEY: __version__}
    if dataset is not None:
        meta[DATASET_KEY] = dataset
    return meta


def latent_cache_metadata(width: int, height: int, frame_count: int | None, settings: dict[str, Any],
                          dataset: str | None = None) -> dict:
    """Reference metadata plus our `framepack_cli.*` settings, writer version and dataset identity.

    Args:
        width: recorded width (original image size, or the video bucket width).
        height: recorded height.
        frame_count: untrimmed crop length for videos, None for images.
        settings: values for (a subset of) `SETTING_KEYS`.
        dataset: identity of the dataset the cache is made for (`dataset_identity`).
    """
    meta = {"architecture": ARCHITECTURE, "width": str(width), "height": str(height), "format_version": FORMAT_VERSION}
    if frame_count is not None:
        meta["frame_count"] = str(frame_count)
    for key, value in settings.items():
        if key not in SETTING_KEYS:
            raise ValueError(f"unknown cache setting {key!r}")
        meta[META_PREFIX + key] = _meta_value(value)
    meta.update(_writer_metadata(dataset))
    return meta


def text_cache_metadata(caption: str, dataset: str | None = None) -> dict:
    """Metadata of a text cache: the reference's three keys, plus our writer version and dataset identity."""
    return {"architecture": ARCHITECTURE, "caption1": caption, "format_version": FORMAT_VERSION,
            **_writer_metadata(dataset)}


@dataclass(frozen=True)
class CacheOwner:
    """Who wrote a cache file, from its metadata.

    Attributes:
        ours: written by framepack (it has `framepack_cli.version`).
        dataset: the dataset identity it records (None: not ours, or written without one).
        reason: for a file that is not ours or records no dataset, why (for the run's summary).
    """

    ours: bool
    dataset: str | None = None
    reason: str = ""


def cache_owner(path: Path) -> CacheOwner:
    """Read who wrote `path` (header only, no torch); unreadable or foreign files are never ours."""
    try:
        _, meta = read_cache_header(path)
    except FramepackError:
        return CacheOwner(False, reason="unreadable or incomplete, so not known to be written by framepack")
    if VERSION_KEY not in meta:
        return CacheOwner(False, reason="not written by framepack (no framepack_cli metadata: made by another tool, "
                                        "such as musubi-tuner, or by hand)")
    dataset = meta.get(DATASET_KEY)
    if dataset is None:
        return CacheOwner(True, reason="written by framepack without a dataset identity (an older version)")
    return CacheOwner(True, dataset)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def replace_nans(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Zero NaNs in place (as the reference does); returns the keys that had any."""
    import torch

    bad = []
    for key, t in tensors.items():
        if t.is_floating_point() and torch.isnan(t).any():
            t.nan_to_num_(nan=0.0)
            bad.append(key)
    return bad


def save_cache_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                    flag: str = "cache_directory") -> None:
    """Write a safetensors file atomically: temporary file in the same folder, fsync, rename.

    Nothing is left under either name when the write fails.

    Raises:
        ResourceError: the folder is not writable or the disk is full: `<flag>: cannot write <path>: <errno
            text>` with what would help (exit code 3).
    """
    from safetensors.torch import save

    path = Path(path)
    data = save(tensors, metadata=metadata)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # e.g. the folder is below a file: nothing to clean up
            tmp.unlink()
        raise resource_error_for(e, flag, path) from None


def remove_temp_files(directory: Path) -> int:
    """Delete temporary files an interrupted run left in a cache folder; returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    n = 0
    for p in directory.glob(f".*{TEMP_SUFFIX}"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def _base_key(key: str) -> str:
    """A cache key without its dtype suffix (and `latents_*` without `FxHxW`): what loaders see."""
    if key.endswith("_mask"):
        return key
    base = key.rsplit("_", 1)[0]
    if base.startswith("latents_"):
        base = base.rsplit("_", 1)[0]
    return base


def save_text_cache(path: Path, tensors: dict[str, torch.Tensor], caption: str, dataset: str | None = None) -> None:
    """Write a text cache, merged into an existing file like the reference does.

    Keys of the existing file that another architecture or tool stored are kept; the ones this cache
    replaces (same name once the dtype suffix is stripped, so a float16 entry does not survive next to
    a new float32 one) are dropped. Existing metadata is kept except `caption1` / `format_version`.

    Raises:
        FramepackError: the existing file belongs to another architecture, or writing fails.
    """
    path = Path(path)
    metadata = text_cache_metadata(caption, dataset)
    if path.exists():
        old_meta, old = _read_existing(path)
        if old_meta is not None:
            arch = old_meta.get("architecture")
            if arch is not None and arch != ARCHITECTURE:
                raise FramepackError(
                    f"{path}: existing text cache is for architecture {arch!r}, not {ARCHITECTURE!r}",
                    hint="use a separate cache_directory per architecture",
                )
            new_bases = {_base_key(k) for k in tensors}
            tensors = {**{k: v for k, v in old.items() if _base_key(k) not in new_bases}, **tensors}
            extra = {k: v for k, v in old_meta.items() if k not in ("caption1", "format_version")}
            metadata = {**extra, **metadata}
    save_cache_file(path, tensors, metadata)


def _read_existing(path: Path) -> tuple[dict | None, dict]:
    """Metadata and tensors of an existing cache; `(None, {})` when it is unreadable (then overwritten)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # a truncated or foreign file is simply replaced: it holds nothing worth keeping
        return None, {}


# --------------------------------------------------------------------------------------------------
# Reading back: settings and compatibility
# --------------------------------------------------------------------------------------------------


def read_cache_header(path: Path) -> tuple[dict, dict[str, str]]:
    """Tensor infos and metadata of a cache file, checking that it is complete (no torch needed).

    Raises:
        FramepackError: missing, truncated or not a safetensors file.
    """
    from framepack_cli.models.loading import read_safetensors_header

    path = Path(path)
    if not path.is_file():
        raise FramepackError(f"{path}: cache file not found")
    return read_safetensors_header(path)


def _indices(path: Path, key: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return tuple(int(v) for v in f.get_tensor(key).reshape(-1))


def _find(infos: dict, prefix: str) -> str | None:
    for k in infos:
        if k.startswith(prefix):
            return k
    return None


def cache_settings(path: Path) -> dict[str, str]:
    """The training-relevant settings of a latent cache, as strings.

    Read from our `framepack_cli.*` metadata; for caches without it (made by the reference trainer) the
    mode, window size and the one-frame 2x/4x switches are inferred from the stored indices. Settings
    that cannot be known (e.g. the resolution of a reference cache) are absent.

    Raises:
        FramepackError: missing, truncated or foreign file.
    """
    infos, meta = read_cache_header(path)
    if meta.get("architecture") not in (None, ARCHITECTURE):
        raise FramepackError(f"{path}: cache of architecture {meta.get('architecture')!r}, not {ARCHITECTURE!r}")
    out = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
    out.pop(VERSION_KEY[len(META_PREFIX):], None)
    out.pop(DATASET_KEY[len(META_PREFIX):], None)
    if "mode" in out and "latent_window_size" in out:
        return out
    lat = _find(infos, "latents_")
    li_key = _find(infos, "latent_indices_")
    ci_key = _find(infos, "clean_latent_indices_")
    if lat is None or li_key is None or ci_key is None:
        raise FramepackError(f"{path}: not a FramePack latent cache (latents / index tensors missing)")
    has_2x_latents = _find(infos, "latents_clean_2x_") is not None
    idx2 = _find(infos, "clean_latent_2x_indices_")
    idx4 = _find(infos, "clean_latent_4x_indices_")
    if not has_2x_latents and infos[lat].shape[1] == 1:
        out.setdefault("mode", "one_frame")
        out.setdefault("one_frame_no_2x", _meta_value(idx2 is None))
        out.setdefault("one_frame_no_4x", _meta_value(idx4 is None))
        if idx2 is not None:
            out.setdefault("latent_window_size", str(_indices(path, idx2)[0] - 2))
        elif idx4 is not None:
            out.setdefault("latent_window_size", str(_indices(path, idx4)[0] - 4))
        return out
    latent_idx = _indices(path, li_key)
    clean_idx = _indices(path, ci_key)
    # F1 always puts the target right after [start | 4x | 2x | 1x] = position 20 with clean [0, 19];
    # vanilla's target starts at P*W + 1 with clean [0, P*W + W + 1], which can never be that pair.
    is_f1 = latent_idx[0] == 20 and clean_idx == (0, 19)
    out.setdefault("mode", "f1" if is_f1 else "vanilla")
    out.setdefault("latent_window_size", str(len(latent_idx)))
    return out


_EXPECTED_NORMALIZERS = {
    "mode": lambda v: v if v in MODES else None,
    "latent_window_size": lambda v: str(int(v)),
    "resolution": lambda v: _meta_value((v, v) if isinstance(v, int) else tuple(v)),
    "enable_bucket": lambda v: _meta_value(bool(v)),
    "bucket_no_upscale": lambda v: _meta_value(bool(v)),
    "one_frame_no_2x": lambda v: _meta_value(bool(v)),
    "one_frame_no_4x": lambda v: _meta_value(bool(v)),
}

_DESCRIBE = {
    "mode": lambda v: {"vanilla": "vanilla sections (no --f1 / --one_frame)", "f1": "F1 sections (--f1)",
                       "one_frame": "one-frame images (--one_frame)"}.get(v, v),
    "latent_window_size": lambda v: f"fp_latent_window_size = {v}",
    "resolution": lambda v: f"resolution {v}",
    "enable_bucket": lambda v: f"enable_bucket = {v}",
    "bucket_no_upscale": lambda v: f"bucket_no_upscale = {v}",
    "one_frame_no_2x": lambda v: "--one_frame_no_2x" if v == "true" else "2x indices (no --one_frame_no_2x)",
    "one_frame_no_4x": lambda v: "--one_frame_no_4x" if v == "true" else "4x indices (no --one_frame_no_4x)",
}


def cache_mismatches(path: Path, expected: dict[str, Any], wanted_by: str = "training expects") -> list[str]:
    """Settings of a cache that differ from `expected`, one human-readable line each (empty = compatible).

    `wanted_by` names who wants `expected` in the lines ("training expects", "this run makes").

    Raises:
        ValueError: an unknown key in `expected` (a programming error).
        FramepackError: the file is missing, truncated or not a FramePack latent cache.
    """
    wanted: dict[str, str] = {}
    for key, value in expected.items():
        if key not in _EXPECTED_NORMALIZERS:
            raise ValueError(f"unknown cache setting {key!r} (known: {', '.join(SETTING_KEYS)})")
        norm = _EXPECTED_NORMALIZERS[key](value)
        if norm is None:
            raise ValueError(f"invalid expected {key}: {value!r}")
        wanted[key] = norm
    recorded = cache_settings(path)
    lines = []
    for key, value in wanted.items():
        got = recorded.get(key)
        if got is not None and got != value:
            lines.append(f"{path}: cached with {_DESCRIBE[key](got)}, but {wanted_by} {_DESCRIBE[key](value)}")
    return lines


def check_cache_compatible(path: str | Path, expected: dict[str, Any]) -> None:
    """Refuse a latent cache whose recorded settings differ from what training expects.

    Args:
        path: a `*_fp.safetensors` latent cache.
        expected: any of `mode` (`"vanilla"`, `"f1"`, `"one_frame"`), `latent_window_size` (int),
            `resolution` (int or `(w, h)`), `enable_bucket`, `bucket_no_upscale`, `one_frame_no_2x`,
            `one_frame_no_4x` (bools). Settings the file does not record (reference caches record no
            resolution) are not checked.

    Raises:
        FramepackError: one line per mismatching setting, with how to fix it.
        ValueError: an unknown key in `expected`.
    """
    lines = cache_mismatches(Path(path), expected)
    if lines:
        raise FramepackError(
            "\n".join(lines),
            hint="re-run `framepack cache latents` with the dataset config and mode flags used for training",
        )
