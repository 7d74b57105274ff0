"""Describing a LoRA file (`framepack lora inspect`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from framepack_cli.models.lora.names import FP_DOTTED_RE, NETWORK_LABELS, musubi_name
from framepack_cli.models.lora.read import read_lora

# --------------------------------------------------------------------------------------------------
# Inspecting
# --------------------------------------------------------------------------------------------------

_METADATA_SUMMARY = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                     "ss_base_model_version", "ss_output_name", "ss_training_comment", "modelspec.architecture",
                     "modelspec.title", "framepack.converted_from", "lora_adapter_metadata")


def _block_of(path: str) -> tuple[str, int | None, str]:
    m = FP_DOTTED_RE.match(path)
    if m:
        return m.group(1), int(m.group(2)), m.group(3)
    return "other", None, path


def _ranges(ints: Iterable[int]) -> str:
    vals = sorted(set(ints))
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)


def describe_lora(path: str | Path, *, verbose: bool = False) -> dict[str, Any]:
    """The `framepack lora inspect` object: layout, network type, rank, alpha, targets, metadata.

    Args:
        path: the LoRA file.
        verbose: full metadata (otherwise the training-relevant keys only). The module list is always there.
    """
    lora = read_lora(path, flag="FILE")
    targets: dict[str, dict[str, Any]] = {}
    for p in lora.modules:
        block, idx, tail = _block_of(p)
        entry = targets.setdefault(block, {"blocks": set(), "modules": set()})
        if idx is not None:
            entry["blocks"].add(idx)
        entry["modules"].add(tail)
    targets_json = {b: {"blocks": _ranges(e["blocks"]) if e["blocks"] else None,
                        "modules": sorted(e["modules"])} for b, e in targets.items()}
    meta = lora.metadata if verbose else {k: v for k, v in lora.metadata.items() if k in _METADATA_SUMMARY}
    scales = sorted({round(m.scale, 8) for m in lora.modules.values()})
    return {
        "path": str(lora.path),
        "format": lora.format,
        "network": lora.network_label,
        "tensors": lora.n_keys,
        "dtypes": list(lora.dtypes),
        "file_modules": lora.n_source_modules,
        "framepack_modules": len(lora.modules),
        "ranks": lora.ranks(),
        "alphas": lora.alphas(),
        "scales": scales,
        "targets": targets_json,
        "unused_keys": dict(sorted(lora.unused.items())),
        "metadata": dict(sorted(meta.items())),
        "metadata_keys": len(lora.metadata),
        "modules": [
            {"module": p, "name": musubi_name(p), "source": m.source, "network": NETWORK_LABELS[m.kind],
             "rank": m.rank, "alpha": m.alpha, "scale": m.scale, "shape": list(m.shape)}
            for p, m in sorted(lora.modules.items())
        ],
    }
