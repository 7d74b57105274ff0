"""`framepack generate --resume FILE_OR_SAVE_PATH`: find the checkpoint, read its settings and check the model
files, before validation (standard library only: the checkpoint's settings live in the safetensors header, the
model files are checked by size and a hash of their header).

Checkpoints (`framepack_cli.engine.resume` writes them):

- `<save_path>/.<output_name>.resume.safetensors`: one video job; tensors `history`, `rng_state`, `position`;
  metadata `framepack_resume` (format version), `settings` (the job's validated options as JSON), `given` (the
  options the run was given, a JSON list), `models` (model files' size + header hash), `images` (input images'
  sha256), `next_section` and `sections`.
- `<save_path>/.<from_file name>.batch.resume.json`: a `--from_file` batch; the run's settings, the file's hash
  and, per job (its `file line N` label), its checkpoint and the files it wrote once done.

What the command line may change on resume: the flags of `HARMLESS` (device, memory, decoding and output
format: the latents stay the same), the model paths when the file there is the same (size + header hash), and any
flag repeated with the checkpoint's value. Anything else is one line naming the flag (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from framepack_cli.io.hashing import sha256_file

CHECKPOINT_SUFFIX = ".resume.safetensors"
BATCH_SUFFIX = ".batch.resume.json"
FORMAT_VERSION = "1"

# Flags that do not change the latents: where and how the run computes, and how the result is decoded/written.
HARMLESS = frozenset({
    "resume", "no_resume_file", "device", "blocks_to_swap", "memory", "use_pinned_memory_for_block_swap", "force",
    "verbose", "models_dir", "disable_numpy_memmap", "tokenizer1", "tokenizer2", "output_type", "crf",
    "no_metadata", "vae_tiling", "vae_chunk_size", "vae_spatial_tile_sample_min_size", "bulk_decode", "decode",
    "vae_dtype",
})
# Model files: another path is accepted when the file there is the same one (size + header hash).
MODEL_FIELDS = ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "lora_weight")
PATH_FIELDS = frozenset({"end_image_path", "from_file", "save_path"})  # compared as resolved paths
HEADER_BYTES = 1 << 20  # non-safetensors files (.pt VAE): the first MiB stands for the header


def header_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (read from its header only)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"--resume: {path} is not a resume checkpoint (not a safetensors file)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"--resume: {path} is not a resume checkpoint (not a safetensors file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"--resume: {path} is not a resume checkpoint (not a safetensors file)") from None
    return header.get("__metadata__") or {}


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size and the sha256 of the header (safetensors: the 8-byte length and the JSON header; else 1 MiB)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if path.suffix == ".safetensors" and len(head) == 8:
            n = min(struct.unpack("<Q", head)[0], size)
            data = head + f.read(n)
        else:
            data = head + f.read(HEADER_BYTES - len(head))
    return {"path": str(path), "size": size, "header_sha256": hashlib.sha256(data).hexdigest()}


def model_files(value: str) -> list[Path]:
    """The weight files of a model flag's value: the file, or a folder's weight files (sorted)."""
    p = Path(value)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"))
    return [p]


def model_fingerprints(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per model flag set in `values`: the fingerprint of each of its files."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in MODEL_FIELDS:
        v = values.get(name)
        if not v:
            continue
        paths = [q for item in (v if isinstance(v, list) else [v]) for q in model_files(item)]
        out[name] = [file_fingerprint(q) for q in paths if q.is_file()]
    return out


def model_mismatch(recorded: dict[str, list[dict[str, Any]]], values: dict[str, Any]) -> str | None:
    """The one line saying which model file is not the checkpoint's, or None when all match."""
    now = model_fingerprints(values)
    for name, files in recorded.items():
        have = now.get(name, [])
        if len(have) != len(files):
            return (f"--resume: --{name} has {len(have)} file(s), the checkpoint was made with {len(files)} "
                    f"({', '.join(Path(f['path']).name for f in files)}); pass --{name} with the original files")
        for old, new in zip(files, have, strict=True):
            if old["size"] != new["size"] or old["header_sha256"] != new["header_sha256"]:
                what = (f"{new['size']} bytes, the checkpoint's had {old['size']}" if old["size"] != new["size"]
                        else "its header differs")
                return (f"--resume: --{name} {new['path']} is not the file the checkpoint was made with ({what}); "
                        f"pass --{name} with the original file ({old['path']})")
    return None


def image_mismatch(recorded: dict[str, str]) -> str | None:
    """The one line saying which input image is gone or changed since the checkpoint (None when all match)."""
    for path, digest in recorded.items():
        p = Path(path)
        if not p.is_file():
            return f"--resume: {path}, an input image of the interrupted run, is gone; put it back to resume"
        if sha256_file(p) != digest:
            return (f"--resume: {path} changed since the checkpoint was made (another sha256): the rest of the "
                    "video would not match; restore it, or start a new run without --resume")
    return None


def _checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoints a folder holds: batch files, and the job checkpoints no batch file there names."""
    batches = sorted(folder.glob("." + "*" + BATCH_SUFFIX))
    named = set()
    for b in batches:
        try:
            named |= {j.get("checkpoint") for j in json.loads(b.read_text(encoding="utf-8"))["jobs"].values()}
        except (OSError, ValueError, KeyError, AttributeError):
            continue
    jobs = [p for p in sorted(folder.glob("." + "*" + CHECKPOINT_SUFFIX)) if p.name not in named]
    return batches + jobs


def find_checkpoint(value: str) -> tuple[Path, str | None]:
    """The checkpoint `--resume` names (a file, or the newest in a save path) and a line saying which was
    picked when the folder holds several."""
    p = Path(value)
    if p.is_file():
        return p, None
    if not p.exists():
        raise ValueError(f"--resume: {value} not found; give a checkpoint (.NAME{CHECKPOINT_SUFFIX}) or the "
                         "--save_path of the interrupted run")
    found = _checkpoints_in(p)
    if not found:
        raise ValueError(f"--resume: {value} holds no checkpoint (.NAME{CHECKPOINT_SUFFIX} or "
                         f".NAME{BATCH_SUFFIX}); nothing to resume (checkpoints are removed when a run completes)")
    if len(found) == 1:
        return found[0], None
    newest = max(found, key=lambda q: q.stat().st_mtime)
    others = ", ".join(q.name for q in found if q != newest)
    return newest, (f"Resuming {newest}, the newest of {len(found)} checkpoints in {value} (also there: {others}); "
                    "pass one to --resume to pick another")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """{"settings", "given", "models", "kind"} of a job checkpoint or a batch file."""
    if path.name.endswith(BATCH_SUFFIX):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {"settings": data["settings"], "given": data["given"], "models": data["models"], "kind": "batch",
                    "from_file_sha256": data["from_file_sha256"]}
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"--resume: {path} is not a readable batch checkpoint ({e})") from None
    meta = header_metadata(path)
    if meta.get("framepack_resume") != FORMAT_VERSION:
        raise ValueError(f"--resume: {path} is not a framepack resume checkpoint (no framepack_resume "
                         f"{FORMAT_VERSION} in its metadata)")
    return {"settings": json.loads(meta["settings"]), "given": json.loads(meta["given"]),
            "models": json.loads(meta["models"]), "images": json.loads(meta.get("images", "{}")), "kind": "job"}


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def _coerced(options_cls, name: str, v: Any) -> Any:
    """A command-line value as the options model reads it (`'4'` -> 4), in JSON form; as given when invalid."""
    from pydantic import TypeAdapter, ValidationError

    field = options_cls.model_fields.get(name) if options_cls is not None else None
    if field is None:
        return _norm(v)
    try:
        ta = TypeAdapter(field.annotation)
        return ta.dump_python(ta.validate_python(v), mode="json")
    except ValidationError:
        return _norm(v)


def merge_resume(values: dict[str, Any], one_frame_default: bool = False, options_cls=None) -> dict[str, Any]:
    """The options of the interrupted run, with what the command line may change on resume (module docstring).

    Raises:
        ValueError: one line: no checkpoint, a conflicting flag, or a model file that is not the checkpoint's.
    """
    if one_frame_default:
        raise ValueError("--resume: one-frame runs have one section and write no checkpoint; resume videos with "
                         "`framepack generate --resume`")
    path, _ = find_checkpoint(str(values["resume"]))
    ck = read_checkpoint(path)
    settings = ck["settings"]
    conflicts = []
    for name, v in values.items():
        if name in HARMLESS or name in MODEL_FIELDS or name not in settings:
            continue
        now = _coerced(options_cls, name, v)
        if name in PATH_FIELDS and v and settings[name]:
            same = Path(str(v)).resolve() == Path(str(settings[name])).resolve()
        else:
            same = now == _norm(settings[name])
        if not same:
            conflicts.append(f"--{name} {_show(now)} (the checkpoint's: {_show(settings[name])})")
    if conflicts:
        raise ValueError(f"--resume: {'; '.join(conflicts)} would change the result of the interrupted run in "
                         f"{path}; drop {'it' if len(conflicts) == 1 else 'them'} to resume, or start a new run "
                         "without --resume")
    merged = {k: settings[k] for k in ck["given"] if k in settings}
    merged.update(values)
    mismatch = model_mismatch(ck["models"], merged)
    if mismatch is None:
        mismatch = image_mismatch(ck.get("images", {}))
    if mismatch is not None:
        raise ValueError(mismatch)
    return merged


def _show(v: Any) -> str:
    if isinstance(v, list | tuple):
        return " ".join(map(str, v))
    return repr(v) if isinstance(v, str) else str(v)
