"""Device policy, shared by every engine (each model's dtype: `framepack_cli.engine.precision`)."""

from __future__ import annotations

import torch

from framepack_cli.errors import FramepackError


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


def free_memory(device: torch.device) -> None:
    """Give cached GPU memory back after a model is dropped."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
