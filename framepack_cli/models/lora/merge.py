"""Planning and applying a merge: `W += m * (alpha / rank) * up @ down`, in float32, validated from shapes first."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.lora.modules import LoraModule, LoraSpec
from framepack_cli.models.lora.names import DUAL_BLOCK, SINGLE_BLOCK, musubi_name
from framepack_cli.models.lora.read import read_lora

# --------------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------------


@dataclass
class MergePlan:
    """What to add to which weight, validated from shapes alone; `apply` does the float32 arithmetic.

    Attributes:
        targets: state-dict key -> [(module, multiplier)], in `--lora_weight` order.
        report: one summary line per LoRA (+ indented `unused:` lines under verbose).
        files: per LoRA, a dict for metadata / JSON (file, format, multiplier, modules merged, keys unused).
    """

    targets: dict[str, list[tuple[LoraModule, float]]] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, key: str, weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`weight` plus every LoRA delta planned for `key`, computed in float32 and rounded once to `dtype`
        (default: the weight's own dtype)."""
        dtype = dtype or weight.dtype
        mods = self.targets.get(key)
        if not mods:
            return weight.to(dtype)
        w = weight.to(dtype=torch.float32, copy=True)
        for mod, mult in mods:
            prod = mod.product(w.device)
            w.view(w.shape[0], -1).add_(prod, alpha=mult * mod.scale)
        return w.to(dtype)

    def apply_all(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Merge into `state_dict` in place (each planned key replaced by its merged tensor)."""
        with torch.no_grad():
            for key in self.targets:
                state_dict[key] = self.apply(key, state_dict[key])


def _compile(pattern: str | None, flag: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise FramepackError(f"{flag}: invalid regular expression {pattern!r} ({e})") from None


def _matches(rx: re.Pattern[str], path: str) -> bool:
    # Patterns written for musubi (on `lora_unet_..._attn_to_q` keys) and for dotted paths both work.
    return bool(rx.search(path) or rx.search(musubi_name(path)))


def _fmt_values(values: Sequence[float | int]) -> str:
    if not values:
        return "-"
    shown = [f"{v:g}" for v in values]
    return shown[0] if len(shown) == 1 else f"{shown[0]}..{shown[-1]}"


def dit_inner_dim(shapes: Mapping[str, Sequence[int]], prefix: str = "") -> int | None:
    """Hidden size of a DiT from its state-dict shapes (to split fused HunyuanVideo projections)."""
    for key in (f"{prefix}{DUAL_BLOCK}.0.attn.to_q.weight", f"{prefix}{SINGLE_BLOCK}.0.attn.to_q.weight"):
        if key in shapes:
            return int(shapes[key][0])
    return None


def plan_merge(
    specs: Sequence[LoraSpec | tuple[str | Path, float]],
    shapes: Mapping[str, Sequence[int]],
    *,
    prefix: str = "",
    include: str | None = None,
    exclude: str | None = None,
    verbose: bool = False,
    flag: str = "--lora_weight",
) -> MergePlan:
    """Read every LoRA and decide what merges where, from the DiT's tensor shapes alone.

    Args:
        specs: LoRAs in order (`LoraSpec`, or `(path, multiplier)` pairs).
        shapes: DiT state-dict key -> shape (header infos or a loaded state dict).
        prefix: key prefix of the DiT state dict (e.g. `diffusion_model.`), "" for bare keys.
        include: regex applied to LoRAs whose spec has none (see `LoraSpec`).
        exclude: likewise.
        verbose: add the unused keys of each LoRA to the report.
        flag: CLI flag named in errors.

    Raises:
        ModelFormatError: unreadable / non-LoRA file, a LoRA matching no module of this DiT, or a module
            whose shape differs from the DiT's (a LoRA for another model size).
        FramepackError: invalid regex, or patterns that filter out every module of a LoRA.
    """
    plan = MergePlan()
    n = len(prefix)
    dit_modules = {k[n:-7] for k, s in shapes.items() if k.startswith(prefix) and k.endswith(".weight")
                   and len(s) >= 2}
    inner = dit_inner_dim(shapes, prefix)
    for item in specs:
        spec = item if isinstance(item, LoraSpec) else LoraSpec(str(item[0]), float(item[1]))
        inc = _compile(spec.include if spec.include is not None else include, "--include_patterns")
        exc = _compile(spec.exclude if spec.exclude is not None else exclude, "--exclude_patterns")
        lora = read_lora(spec.path, flag=flag, inner_dim=inner, dit_modules=dit_modules)
        unused = dict(lora.unused)
        used_sources: set[str] = set()
        merged = filtered = 0
        for path, mod in lora.modules.items():
            if path not in dit_modules:
                for k in mod.source_keys:
                    unused.setdefault(k, "module not in this DiT")
                continue
            if (inc is not None and not _matches(inc, path)) or (exc is not None and _matches(exc, path)):
                filtered += 1
                continue
            key = f"{prefix}{path}.weight"
            want = tuple(int(s) for s in shapes[key])
            out, fan_in = mod.shape
            if out != want[0] or fan_in != math.prod(want[1:]):
                raise ModelFormatError(
                    f"{flag}: {lora.path}: module {path} is {out}x{fan_in} in the LoRA but {want[0]}x"
                    f"{math.prod(want[1:])} in the DiT; is it a LoRA for another model?")
            plan.targets.setdefault(key, []).append((mod, spec.multiplier))
            used_sources.add(mod.source)
            merged += 1
        # A fused HunyuanVideo module counts as used if any of its parts merged.
        for mod in lora.modules.values():
            if mod.source in used_sources:
                for k in mod.source_keys:
                    unused.pop(k, None)
        if merged == 0:
            if filtered:
                raise FramepackError(
                    f"{flag}: {lora.path}: --include_patterns/--exclude_patterns filtered out all {filtered} "
                    "matching modules; nothing would be merged")
            raise ModelFormatError(
                f"{flag}: {lora.path} matched no module of this DiT (format {lora.format}, {len(unused)} keys "
                "unused); is it a LoRA for another model?")
        ranks, alphas = lora.ranks(), lora.alphas()
        alpha_txt = f"alpha {_fmt_values(alphas)}" if alphas else "no alpha (scale 1)"
        line = (f"LoRA {lora.path.name}: {lora.format} {lora.network_label} (rank {_fmt_values(ranks)}, "
                f"{alpha_txt}), multiplier {spec.multiplier:g}: {merged} modules merged")
        if filtered:
            line += f", {filtered} skipped by --include_patterns/--exclude_patterns"
        line += f", {len(unused)} keys unused"
        if unused and not verbose:
            line += " (--verbose lists them)"
        plan.report.append(line)
        if verbose:
            plan.report.extend(f"  unused: {k} ({why})" for k, why in sorted(unused.items()))
        plan.files.append({"file": lora.path.name, "format": lora.format, "network": lora.network_label,
                           "multiplier": spec.multiplier, "modules_merged": merged, "keys_unused": len(unused)})
    return plan


def merge_loras(
    state_dict: dict[str, torch.Tensor],
    loras: Sequence[LoraSpec | tuple[str | Path, float]],
    include: str | None = None,
    exclude: str | None = None,
    verbose: bool = False,
    *,
    prefix: str = "",
    flag: str = "--lora_weight",
) -> list[str]:
    """Merge LoRAs into a DiT state dict in place (float32 arithmetic, each weight keeps its dtype).

    Args:
        state_dict: DiT state dict (bare diffusers keys, or keys under `prefix`).
        loras: `LoraSpec`s or `(path, multiplier)` pairs, merged in order.
        include: regex for LoRAs without their own (module kept if it matches the dotted path or the
            musubi name), see `plan_merge`.
        exclude: likewise, module dropped if it matches.
        verbose: list unused keys in the report.
        prefix: key prefix of `state_dict`.
        flag: CLI flag named in errors.

    Returns:
        The report: one line per LoRA (format, modules merged, keys unused), plus verbose detail lines.
    """
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    plan = plan_merge(loras, shapes, prefix=prefix, include=include, exclude=exclude, verbose=verbose, flag=flag)
    plan.apply_all(state_dict)
    return plan.report


