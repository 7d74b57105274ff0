"""What a weights file says about one tensor without loading it (shared by loading and detection)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype (safetensors spelling, e.g. `BF16`) and shape of one stored tensor."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n
