"""What a LoRA file holds: modules (LoRA / LoHa / LoKr / full delta), the file, and a LoRA to apply."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from framepack_cli.models.lora.names import NETWORK_LABELS

# --------------------------------------------------------------------------------------------------
# Modules and files
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraModule:
    """One adapted module, already mapped to a FramePack module path.

    Attributes:
        path: FramePack module path, e.g. `transformer_blocks.0.attn.to_q`.
        kind: "lora", "loha", "lokr" or "diff" (full delta).
        tensors: the module's tensors by role ("down"/"up", "hada_w1_a"..., "lokr_w1"..., "diff").
        alpha: the stored alpha, or None (scale 1).
        source: the module's name in the file (a HunyuanVideo module split into parts shares it).
        source_keys: the file keys this module came from.
    """

    path: str
    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None
    source: str
    source_keys: tuple[str, ...] = ()

    @property
    def rank(self) -> int | None:
        """Rank as the reference reads it from the weights (None for full LoKr factors and full deltas)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            if "lokr_w2_b" in t:
                return int(t["lokr_w2_b"].shape[0])
            if "lokr_w1_b" in t:
                return int(t["lokr_w1_b"].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank; 1 without alpha (diffusers/PEFT) or rank (full LoKr, full delta), like LyCORIS."""
        rank = self.rank
        if self.alpha is None or not rank or self.alpha == 0:
            return 1.0
        return self.alpha / rank

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, product of the input dims) of the delta."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["up"].shape[0]), math.prod(t["down"].shape[1:])
        if self.kind == "loha":
            return int(t["hada_w1_a"].shape[0]), math.prod(t["hada_w1_b"].shape[1:])
        if self.kind == "lokr":
            (l1, m1), (k2, n2) = lokr_factor_shapes(t)
            return l1 * k2, m1 * n2
        d = t["diff"]
        return int(d.shape[0]), math.prod(d.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors.values())).dtype

    def product(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The delta without `scale` (e.g. `up @ down`), float32, shape [out, prod(in dims)]."""
        t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.tensors.items()}
        if self.kind == "lora":
            return t["up"].flatten(1) @ t["down"].flatten(1)
        if self.kind == "loha":
            return (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
        if self.kind == "lokr":
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
            return torch.kron(w1.flatten(1), w2.flatten(1))
        return t["diff"].flatten(1)


def lokr_factor_shapes(t: Mapping[str, torch.Tensor]) -> tuple[tuple[int, int], tuple[int, int]]:
    w1 = (t["lokr_w1"].shape[0], t["lokr_w1"].shape[1]) if "lokr_w1" in t else (
        t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
    w2 = (t["lokr_w2"].shape[0], math.prod(t["lokr_w2"].shape[1:])) if "lokr_w2" in t else (
        t["lokr_w2_a"].shape[0], math.prod(t["lokr_w2_b"].shape[1:]))
    return (int(w1[0]), int(w1[1])), (int(w2[0]), int(w2[1]))


@dataclass
class LoraFile:
    """A LoRA file read and mapped onto FramePack module paths.

    Attributes:
        path: the file.
        format: key layout, see the module docstring (e.g. `musubi-hunyuanvideo`).
        modules: FramePack module path -> module.
        unused: file keys that map to no FramePack module (or that this tool cannot use), with why.
        metadata: safetensors metadata (empty for pickles).
        n_keys: number of tensors in the file.
        n_source_modules: number of adapted modules in the file (before HunyuanVideo splitting).
        dtypes: tensor dtypes found.
    """

    path: Path
    format: str
    modules: dict[str, LoraModule]
    unused: dict[str, str]
    metadata: dict[str, str]
    n_keys: int
    n_source_modules: int
    dtypes: tuple[str, ...] = ()

    @property
    def networks(self) -> list[str]:
        """Network types present ("lora", "loha", "lokr", "diff"), in a stable order."""
        kinds = {m.kind for m in self.modules.values()}
        return [k for k in NETWORK_LABELS if k in kinds]

    @property
    def network_label(self) -> str:
        return "+".join(NETWORK_LABELS[k] for k in self.networks) or "LoRA"

    def ranks(self) -> list[int]:
        return sorted({r for m in self.modules.values() if (r := m.rank) is not None})

    def alphas(self) -> list[float]:
        return sorted({m.alpha for m in self.modules.values() if m.alpha is not None})


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora_weight` with its multiplier and its include/exclude regex (None = no filter)."""

    path: str
    multiplier: float = 1.0
    include: str | None = None
    exclude: str | None = None
