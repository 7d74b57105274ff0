"""Writing safetensors files streamed and atomically (temporary file, then rename)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from framepack_cli.errors import FramepackError
from framepack_cli.models.dtypes import ST_NAMES

# --------------------------------------------------------------------------------------------------
# Writing safetensors (streamed, atomic)
# --------------------------------------------------------------------------------------------------



def check_output(output: Path, overwrite: bool, inputs: Iterable[Path], flag: str) -> None:
    if output.is_dir():
        raise FramepackError(f"{flag}: {output} is a directory (give a file name)")
    for p in inputs:
        if output.exists() and p.exists() and output.resolve() == p.resolve():
            raise FramepackError(f"{flag}: {output} is also an input; write to a new file")
    if output.exists() and not overwrite:
        hint = "pass --overwrite to replace it" if flag == "--output" else "choose a new file name"
        raise FramepackError(f"{flag}: file exists: {output}", hint=hint)
    if not output.parent.is_dir():
        raise FramepackError(f"{flag}: folder does not exist: {output.parent}")


def write_safetensors(
    output: str | Path,
    entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor (peak memory: one tensor), to a temp name then renamed.

    Args:
        output: destination; replaced atomically, so readers never see a half-written file.
        entries: (key, dtype, shape) of every tensor, in file order.
        produce: returns the tensor of a key (called once per key, in order); must match its entry.
        metadata: string metadata (`__metadata__`).
    """
    output = Path(output)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, dtype, shape in entries:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": ST_NAMES[dtype], "shape": [int(s) for s in shape],
                       "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for key, dtype, shape in entries:
                t = produce(key)
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise RuntimeError(f"tensor {key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
                f.write(memoryview(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_tensors(output: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                 ) -> None:
    """Save a small state dict (a LoRA) atomically; tensors sharing storage are fine."""
    items = sorted(tensors.items())
    write_safetensors(output, [(k, v.dtype, tuple(v.shape)) for k, v in items], lambda k: tensors[k], metadata)


