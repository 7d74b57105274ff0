"""Options -> plain LoRA specs, at the engine boundary (models/ never sees an options object)."""

from __future__ import annotations

from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.models.lora.modules import LoraSpec


def lora_specs_from_options(opts: Any) -> list[LoraSpec]:
    """Pair each `--lora_weight` with its multiplier and patterns (generate, one-frame, kisekae, lora merge).

    One `--lora_multiplier` applies to every file, otherwise one each with missing ones 1.0; one
    `--include_patterns` / `--exclude_patterns` value applies to every file, otherwise one each.

    Raises:
        FramepackError: more multipliers or patterns than files (already refused by option validation).
    """
    paths = [str(p) for p in (getattr(opts, "lora_weight", None) or [])]
    n = len(paths)
    mults = [float(m) for m in (getattr(opts, "lora_multiplier", None) or [])]
    if len(mults) == 1:
        mults = mults * n
    if len(mults) > n:
        raise FramepackError(f"--lora_multiplier: {len(mults)} values for {n} --lora_weight files")
    mults += [1.0] * (n - len(mults))

    def per_file(flag: str) -> list[str | None]:
        pats = list(getattr(opts, flag, None) or [])
        if not pats:
            return [None] * n
        if len(pats) == 1:
            return pats * n
        if len(pats) != n:
            raise FramepackError(f"--{flag}: {len(pats)} patterns for {n} --lora_weight files; give one for all "
                                 "or one each")
        return pats

    inc, exc = per_file("include_patterns"), per_file("exclude_patterns")
    return [LoraSpec(p, m, i, e) for p, m, i, e in zip(paths, mults, inc, exc, strict=True)]


