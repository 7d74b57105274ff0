"""`framepack inspect OUTPUT`: the settings stored in an output we wrote (MP4, PNG, PNG folder, latent) and the
`framepack generate ...` line that re-creates it (`--settings_from OUTPUT` runs that same line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.io.run_settings import output_kind, read_run_metadata, run_settings


def is_output(path: str | Path) -> bool:
    """A video, a PNG (or a folder of them) or a latent `.safetensors` (one tensor `latent`, or our settings)."""
    p = Path(path)
    kind = output_kind(p) if p.exists() else None
    if kind != "latent":
        return kind is not None
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100 * 2**20 else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    tensors = {k for k in header if k != "__metadata__"}
    return tensors == {"latent"} or "framepack" in (header.get("__metadata__") or {})


def describe_output(path: str) -> dict[str, Any]:
    """The `--json` object of an output: its kind, the stored settings and the equivalent command line.

    Raises:
        FramepackError: an output that carries no settings at all (`--no_metadata`, another tool).
    """
    from framepack_cli.options.rerun import command_line, run_values

    kind, meta = read_run_metadata(path)
    if not meta:
        what = {"video": "a video", "images": "a PNG image" if Path(path).is_file() else "a folder of PNG images",
                "latent": "a latent file"}[kind]
        raise FramepackError(f"{path}: {what}, not model weights, and it carries no framepack settings (written "
                             "with --no_metadata, or not by framepack)")
    settings = run_settings(meta)
    info: dict[str, Any] = {"path": str(path), "kind": "output", "output": kind,
                            "metadata": {k: v for k, v in meta.items() if k != "framepack"}}
    if settings is None:  # the reference's keys only (a musubi-tuner latent)
        info.update(framepack_version=None, command=None, seed=int(meta.get("seeds", 0) or 0), settings={},
                    command_line=None)
        return info
    command = settings.get("command", "generate")
    values = run_values(settings) if "options" in settings else {}
    info.update(framepack_version=settings.get("framepack_version"), command=command, seed=settings.get("seed"),
                settings=values, images=settings.get("image_sha256") or settings.get("images") or {},
                dtypes=settings.get("dtypes"),
                command_line=command_line(command, values) if "options" in settings else None)
    return info
