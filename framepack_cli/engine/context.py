"""Device and dtype policy, shared by every engine."""

from __future__ import annotations

import torch

from framepack_cli.errors import FramepackError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """`--device`, default cuda when available else cpu; a CUDA device that is not there is a user error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FramepackError(f"--device: unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FramepackError(f"--device: {name} requested but no CUDA GPU is available", hint="use --device cpu")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`--dtype auto` = bfloat16 on CUDA, float32 elsewhere (bf16 matmuls are slow or missing on CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def free_memory(device: torch.device) -> None:
    """Give cached GPU memory back after a model is dropped."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
