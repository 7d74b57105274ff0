"""Reading weight files in every layout users have: single safetensors, `-NNNNN-of-MMMMM` shards,
HF directories / snapshots, and torch pickles (always `weights_only=True`).

Nothing here knows which model a file holds; `framepack_cli.models.detect` decides that from key names
and shapes. Errors are `ModelFormatError` naming the file and what was wrong.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator
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


def _safetensors_entries(path: Path) -> tuple[int, list[tuple[str, str, tuple[int, ...], int, int]]]:
    """(data start, [(name, dtype, shape, begin, end)] in file order) of a safetensors file (checked first)."""
    read_safetensors_header(path)  # clear errors for truncated / non-safetensors files
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    entries = [(k, v["dtype"], tuple(int(s) for s in v["shape"]), int(v["data_offsets"][0]),
                int(v["data_offsets"][1])) for k, v in header.items()]
    return 8 + n, sorted(entries, key=lambda e: e[3])


def iter_safetensors(path: Path, keep: Callable[[str], bool] | None = None,
                     dtype_for: Callable[[str, torch.dtype], torch.dtype] | None = None,
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a safetensors file one at a time, read with plain reads (no memory map, so nothing of
    the file stays resident once a tensor is dropped); every tensor yielded owns its memory.

    Args:
        keep: only keys for which it is true are read (the others are skipped without reading their bytes).
        dtype_for: `dtype_for(key, stored dtype)` -> the dtype to yield. A tensor to convert is read into one
            staging buffer reused for the whole file (no per-tensor temporaries that fragment the heap) and
            converted from there; any other is read straight into its own tensor.

    Raises:
        ModelFormatError: not safetensors, truncated, or a dtype torch does not have.
    """
    import torch

    from framepack_cli.models.dtypes import ST_TORCH

    start, entries = _safetensors_entries(path)
    stored: dict[str, torch.dtype] = {}
    for name, st_dtype, *_ in entries:
        dtype = ST_TORCH.get(st_dtype) or getattr(torch, _EXTRA_ST.get(st_dtype, "-"), None)
        if dtype is None:
            raise ModelFormatError(f"{path}: tensor {name!r} has dtype {st_dtype}, which torch cannot load")
        stored[name] = dtype
    wanted = [e for e in entries if keep is None or keep(e[0])]
    target = {e[0]: dtype_for(e[0], stored[e[0]]) if dtype_for is not None else stored[e[0]] for e in wanted}
    staged = [e[4] - e[3] for e in wanted if target[e[0]] != stored[e[0]]]
    staging = torch.empty(max(staged), dtype=torch.uint8) if staged else None
    try:
        with path.open("rb", buffering=0) as f:
            for name, _, shape, begin, end in wanted:
                convert = target[name] != stored[name]
                if convert:
                    raw = staging[: end - begin]
                else:
                    raw = torch.empty(shape, dtype=stored[name]).reshape(-1).view(torch.uint8)
                f.seek(start + begin)
                view, done = memoryview(raw.numpy()), 0
                while done < len(view):
                    got = f.readinto(view[done:])
                    if not got:
                        raise ModelFormatError(f"{path}: file is truncated while reading {name!r}; download it again")
                    done += got
                tensor = raw.view(stored[name]).reshape(shape)
                yield name, tensor.to(target[name]) if convert else tensor
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read safetensors file ({e})") from None


_EXTRA_ST = {"U16": "uint16", "U32": "uint32", "U64": "uint64"}


def load_state_dict(
    files: list[Path], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    keep: Callable[[str], bool] | None = None, dtype_for: Callable[[str, torch.dtype], torch.dtype] | None = None,
    transform: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Load and merge the tensors of `files` (safetensors or pickle), streamed: one tensor at a time is read,
    cast and moved, so loading never holds a second copy of the model (safetensors: the peak is the loaded
    model plus one staging tensor as stored; shards are read one after the other).

    Args:
        device: where the tensors end up (without `transform`; with it, `transform` places them).
        dtype: floating tensors are cast to it when given; integer/bool tensors keep theirs.
        keep: only keys for which it is true are loaded (safetensors skip the others unread).
        dtype_for: `dtype_for(key, stored dtype)` -> dtype, a per-key choice for floating tensors (wins over
            `dtype`; e.g. the DiT's float32 output projection).
        transform: `transform(key, tensor)` runs on each tensor as it is read (on the CPU, in its chosen dtype)
            and returns what to keep under which keys (e.g. an fp8 weight and its scale, or nothing).
    """

    def choose(k: str, stored: torch.dtype) -> torch.dtype:
        if not stored.is_floating_point:
            return stored
        if dtype_for is not None:
            return dtype_for(k, stored)
        return dtype if dtype is not None else stored

    def put(k: str, v: torch.Tensor) -> None:
        if transform is None:
            sd[k] = v.to(device=device)
        else:
            sd.update(transform(k, v))

    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            for k, v in iter_safetensors(f, keep, choose):
                put(k, v)
                del v
        else:
            pickled = load_pickle_state_dict(f)
            for k in list(pickled):
                v = pickled.pop(k)
                if keep is None or keep(k):
                    put(k, v.to(dtype=choose(k, v.dtype)))
                del v
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
