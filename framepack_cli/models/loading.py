"""Reading weight files in every layout users have: single safetensors, `-NNNNN-of-MMMMM` shards,
HF directories / snapshots, and torch pickles (always `weights_only=True`).

Nothing here knows which model a file holds; `framepack_cli.models.detect` decides that from key names
and shapes. Errors are `ModelFormatError` naming the file and what was wrong.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_cli.errors import ModelFormatError
from framepack_cli.models.detect import detect_kind
from framepack_cli.models.tensor_info import TensorInfo

if TYPE_CHECKING:
    import torch

SHARD_RE = re.compile(r"^(.*?)(\d+)-of-(\d+)\.safetensors$")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

# safetensors dtype names -> bytes per element (for truncation checks without torch)
_ST_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1,
}


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read a safetensors header (tensor names, dtypes, shapes, metadata) without loading data or torch.

    Raises:
        ModelFormatError: the file is not safetensors, or is truncated.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ModelFormatError(f"{path}: file is empty or truncated ({size} bytes), not a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > min(size - 8, 100 * 1024 * 1024):
                raise ModelFormatError(f"{path}: not a safetensors file (bad header length {n})")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: cannot read safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, info in header.items():
        try:
            tensors[name] = TensorInfo(info["dtype"], tuple(int(s) for s in info["shape"]))
            data_end = max(data_end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ModelFormatError(f"{path}: not a safetensors file (bad entry for {name!r})") from None
    if 8 + n + data_end > size:
        raise ModelFormatError(
            f"{path}: file is truncated ({size} bytes, header says {8 + n + data_end}); download it again"
        )
    return tensors, dict(metadata)


def expand_shards(path: Path) -> list[Path]:
    """Given any shard of a `name-00001-of-00003.safetensors` set, return all shards in order.

    A file that is not a shard is returned alone. Missing sibling shards are an error naming them.
    """
    m = SHARD_RE.match(path.name)
    if not m:
        return [path]
    prefix, idx, total = m.group(1), m.group(2), m.group(3)
    width = len(idx)
    files = [path.with_name(f"{prefix}{i:0{width}d}-of-{total}.safetensors") for i in range(1, int(total) + 1)]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise ModelFormatError(
            f"{path}: sharded checkpoint is incomplete, missing {', '.join(missing)}",
            hint="download every shard into the same directory",
        )
    return files


def find_weight_files(path: Path, subfolders: tuple[str, ...] = (), kind: str | None = None) -> list[Path]:
    """Resolve a user path (file, first shard, directory, HF snapshot) to the list of weight files.

    For a directory: look in the directory itself, then in each of `subfolders` (e.g. `vae`,
    `text_encoder`); prefer `*.safetensors`, else a single pickle. A directory holding several different
    checkpoints is resolved by `kind` (the one whose tensors look like that model), else refused with the
    list, never guessed by name order.

    Raises:
        ModelFormatError: path missing, a directory holding no weights, or an ambiguous directory.
    """
    if not path.exists():
        raise ModelFormatError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".json":
            raise ModelFormatError(f"{path}: this is a JSON file, not model weights")
        return expand_shards(path)
    for d in (path, *(path / s for s in subfolders)):
        if not d.is_dir():
            continue
        candidates = [x for x in sorted(d.iterdir()) if x.is_file() and x.suffix in WEIGHT_SUFFIXES]
        st = [x for x in candidates if x.suffix == ".safetensors"]
        sets: list[list[Path]] = []
        for f in st or candidates[:1]:
            if not any(f in s for s in sets):
                sets.append(expand_shards(f) if f.suffix == ".safetensors" else [f])
        if len(sets) == 1:
            return sets[0]
        if len(sets) > 1:
            if kind is not None:
                matching = [s for s in sets if detect_kind(read_header_infos(s)).kind == kind]
                if len(matching) == 1:
                    return matching[0]
            names = ", ".join(s[0].name for s in sets)
            raise ModelFormatError(f"{d}: holds several checkpoints ({names}); pass the file itself")
    looked = ", ".join(str(d) for d in (path, *(path / s for s in subfolders)))
    raise ModelFormatError(f"{path}: directory holds no weight files (looked in {looked})")


def read_header_infos(files: list[Path]) -> dict[str, TensorInfo]:
    """Tensor names/dtypes/shapes of a set of weight files without loading the data.

    Pickles have no header: they are loaded (weights_only) and described.
    """
    infos: dict[str, TensorInfo] = {}
    for f in files:
        if f.suffix == ".safetensors":
            infos.update(read_safetensors_header(f)[0])
        else:
            sd = load_pickle_state_dict(f)
            for k, v in sd.items():
                infos[k] = TensorInfo(_torch_dtype_to_st(v.dtype), tuple(v.shape))
    return infos


def _torch_dtype_to_st(dtype: torch.dtype) -> str:
    from framepack_cli.models.dtypes import ST_NAMES

    return ST_NAMES.get(dtype, str(dtype))


_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP/WAV/AVI) file"), (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"version https://git-lfs", "a Git LFS pointer (the real file was not downloaded)"), (b"<", "an HTML/XML file"),
    (b"{", "a JSON file"),
)


def _sniff(path: Path) -> str | None:
    """What a non-checkpoint file is, from its first bytes (None when it may be a torch checkpoint)."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head.startswith((b"PK\x03\x04", b"\x80")):  # torch zip archive, or a raw pickle
        return None
    return "an unknown file (neither safetensors nor a torch checkpoint)" if head else "an empty file"


def load_pickle_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a torch pickle with `weights_only=True`; unwrap a `state_dict` entry if present."""
    import torch

    what = _sniff(path)
    if what is not None:
        raise ModelFormatError(f"{path}: {what}, not model weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception:  # noqa: BLE001 - garbage makes the unpickler raise almost anything; all mean the same
        # torch's own text may suggest weights_only=False, which this tool never does: say it plainly instead.
        raise ModelFormatError(
            f"{path}: cannot read as a torch checkpoint (only plain tensor state dicts are loaded, with "
            "weights_only=True); convert it to .safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFormatError(f"{path}: torch checkpoint does not hold a state dict of tensors")
    return obj


def load_state_dict(
    files: list[Path], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    transform: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Load and merge the tensors of `files` (safetensors or pickle). Floating tensors are cast to
    `dtype` when given; integer/bool tensors keep theirs.

    `transform(key, tensor)`, when given, runs on each tensor as it is read and returns what to keep under
    which keys (e.g. an fp8 weight and its scale, or nothing), so memory never holds the untransformed model
    from a safetensors file (pickles are loaded whole first)."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            read_safetensors_header(f)  # clear error for truncated / non-safetensors files
            try:
                with safe_open(str(f), framework="pt", device=str(device)) as h:
                    for k in h.keys():
                        if transform is None:
                            sd[k] = h.get_tensor(k)
                        else:
                            sd.update(transform(k, h.get_tensor(k)))
            except (SafetensorError, OSError) as e:
                raise ModelFormatError(f"{f}: cannot read safetensors file ({e})") from None
        else:
            part = load_pickle_state_dict(f)
            if transform is None:
                sd.update(part)
            else:
                for k in list(part):
                    sd.update(transform(k, part.pop(k)))
    if dtype is not None:
        for k, v in sd.items():
            if v.is_floating_point() and v.dtype != dtype:
                sd[k] = v.to(dtype)
    return sd


def read_config_json(files: list[Path]) -> dict | None:
    """A `config.json` beside the weights (it wins over shape inference), or None."""
    cfg = files[0].parent / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{cfg}: unreadable config.json ({e})") from None


def strip_prefix(sd: dict, prefix: str) -> dict:
    """Drop `prefix` from every key that has it (keys without it are kept as they are)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in sd.items()}


def key_mismatch(expected: Iterable[str], got: Iterable[str], n: int = 3) -> str | None:
    """`"2 missing (a, b); 1 unexpected (c)"` when the key sets differ, else None (for load errors)."""
    exp, have = set(expected), set(got)
    parts = []
    for label, keys in (("missing", exp - have), ("unexpected", have - exp)):
        if keys:
            shown = ", ".join(sorted(keys)[:n]) + (", ..." if len(keys) > n else "")
            parts.append(f"{len(keys)} {label} ({shown})")
    return "; ".join(parts) or None


def resolve_dit_files(path: str | Path) -> list[Path]:
    """Weight files of a DiT given as a file, any shard, a directory or an HF snapshot (`transformer/`).

    Raises:
        ModelFormatError: nothing usable at `path`, or shards missing.
    """
    path = Path(path)
    if path.is_dir() and (path / "transformer").is_dir():
        # A pipeline snapshot keeps its DiT in transformer/ next to other components' weights.
        try:
            return find_weight_files(path / "transformer", kind="dit")
        except ModelFormatError:
            pass
    return find_weight_files(path, ("transformer",), kind="dit")
