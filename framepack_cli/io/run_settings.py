"""Reading the run metadata out of any output framepack writes: an MP4 (container `comment`), a PNG (tEXt
`framepack`), a folder of PNG frames (its first frame) or a latent `.safetensors` (its header, read without
loading the tensor). The same `dict[str, str]` is stored in all of them (`engine.writing.run_metadata`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from framepack_cli.errors import FramepackError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
OUTPUT_KINDS = "an .mp4, a .png, a folder of PNG frames or a _latent.safetensors file"


def output_kind(path: Path) -> str | None:
    """`video`, `images` (a PNG or a folder of them), `latent`, or None for anything else."""
    p = Path(path)
    if p.is_dir():
        return "images" if any(p.glob("*.png")) else None
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == ".png":
        return "images"
    if suffix == ".safetensors":
        return "latent"
    return None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, from its JSON header alone.

    Raises:
        FramepackError: not a safetensors file.
    """
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 2**20:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise FramepackError(f"{path}: not a readable safetensors file ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (meta or {}).items()}


def read_run_metadata(path: str | Path) -> tuple[str, dict[str, str]]:
    """(output kind, the metadata) of an output; the metadata is empty when the file carries none.

    Raises:
        FramepackError: a missing path, or one that is not an output kind framepack writes.
    """
    from framepack_cli.io.outputs import read_png_metadata, read_video_metadata

    p = Path(path)
    if not p.exists():
        raise FramepackError(f"{p}: file not found")
    kind = output_kind(p)
    if kind is None:
        raise FramepackError(f"{p}: not an output of framepack (expected {OUTPUT_KINDS})")
    if kind == "video":
        return kind, read_video_metadata(p)
    if kind == "images":
        png = min(p.glob("*.png")) if p.is_dir() else p
        return kind, read_png_metadata(png)
    return kind, safetensors_metadata(p)


def run_settings(meta: dict[str, str]) -> dict | None:
    """The `framepack` settings JSON of the metadata, or None when there is none (or it does not parse)."""
    try:
        settings = json.loads(meta.get("framepack", ""))
    except json.JSONDecodeError:
        return None
    return settings if isinstance(settings, dict) else None
