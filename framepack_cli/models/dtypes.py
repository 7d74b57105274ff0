"""The dtype name tables: every spelling a flag, a config or a reference file uses -> a torch dtype, and the
safetensors header names (`F32`, `BF16`...) <-> torch dtypes."""

from __future__ import annotations

import torch

from framepack_cli.errors import FramepackError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}

# torch dtype <-> the dtype name in a safetensors header
ST_NAMES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
ST_TORCH: dict[str, torch.dtype] = {v: k for k, v in ST_NAMES.items()}


def torch_dtype(dtype: torch.dtype | str, flag: str | None = None) -> torch.dtype:
    """`"bf16"`, `"bfloat16"`, `torch.bfloat16`... -> `torch.bfloat16`.

    Raises:
        FramepackError: an unknown name (naming `flag` when given).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return TORCH_DTYPES[str(dtype).lower()]
    except KeyError:
        where = f"{flag}: " if flag else ""
        raise FramepackError(f"{where}unknown dtype {dtype!r}", hint="use float32, bfloat16 or float16") from None
