"""The one table of dtype names: every spelling a flag, a config or a reference file uses -> a torch dtype."""

from __future__ import annotations

import torch

from framepack_cli.errors import FramepackError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


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
