"""Merging LoRAs into a DiT file on disk (`framepack lora merge`, `generate --save_merged_model`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from framepack_cli.errors import ModelFormatError
from framepack_cli.models.dtypes import ST_TORCH, torch_dtype
from framepack_cli.models.lora.merge import plan_merge
from framepack_cli.models.lora.modules import LoraSpec
from framepack_cli.models.lora.save import check_output, write_safetensors

# --------------------------------------------------------------------------------------------------
# Merged DiT file (framepack lora merge, generate --save_merged_model)
# --------------------------------------------------------------------------------------------------

def merge_dit_file(
    dit: str | Path,
    specs: Sequence[LoraSpec],
    output: str | Path,
    *,
    dtype: str = "auto",
    overwrite: bool = False,
    verbose: bool = False,
    dit_flag: str = "--dit",
    output_flag: str = "--output",
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Merge LoRAs into a DiT checkpoint and save it as one safetensors file in the same key layout.

    Every tensor of the input is written (other components bundled in a ComfyUI file included), under the
    same keys; shards are joined into one file. Streaming keeps memory to one tensor at a time, and the file
    appears only when complete (temp name, then rename).

    Args:
        dit: DiT file, any shard, or directory (as `--dit`).
        specs: LoRAs to merge, in order.
        output: the merged .safetensors file.
        dtype: "auto" keeps each stored dtype; "float32" / "bfloat16" / "float16" casts floating tensors.
        overwrite: replace `output` if it exists (otherwise that is an error).
        verbose: list unused LoRA keys in the report.
        dit_flag: flag named in DiT errors.
        output_flag: flag named in output errors.
        progress: optional one-line message sink.

    Returns:
        The merge report lines.

    Raises:
        ModelFormatError / FramepackError: see `plan_merge`; wrong kind of --dit file; output exists.
    """
    from framepack_cli.models.detect import expect_kind
    from framepack_cli.models.loading import (
        load_pickle_state_dict,
        read_header_infos,
        read_safetensors_header,
        resolve_dit_files,
    )

    dit, output = Path(dit), Path(output)
    target = None if dtype == "auto" else torch_dtype(dtype)
    files = resolve_dit_files(dit)  # the resolution load_dit uses (file, shard, folder, snapshot)
    check_output(output, overwrite, [*files, *(Path(s.path) for s in specs)], output_flag)
    infos = read_header_infos(files)
    det = expect_kind(dit if dit.is_file() else files[0], infos, "dit", dit_flag)
    plan = plan_merge(specs, {k: v.shape for k, v in infos.items()}, prefix=det.prefix, verbose=verbose)
    for line in plan.report:
        if progress:
            progress(line)

    from safetensors.torch import safe_open

    # key -> where to read it: an open safetensors handle (lazy, one tensor at a time) or a loaded pickle.
    sources: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for f in files:
        if f.suffix == ".safetensors":
            metadata.update(read_safetensors_header(f)[1])
            h = safe_open(str(f), framework="pt", device="cpu")
            sources.update(dict.fromkeys(h.keys(), h))
        else:
            sd = load_pickle_state_dict(f)
            sources.update(dict.fromkeys(sd, sd))
    entries = []
    for key in sorted(sources):
        st = ST_TORCH.get(infos[key].dtype)
        if st is None:
            raise ModelFormatError(f"{dit_flag}: {dit}: tensor {key} has unsupported dtype {infos[key].dtype}")
        entries.append((key, target if (target is not None and st.is_floating_point) else st, infos[key].shape))
    out_dtypes = {k: d for k, d, _ in entries}

    def produce(key: str) -> torch.Tensor:
        src = sources[key]
        t = src[key] if isinstance(src, dict) else src.get_tensor(key)
        with torch.no_grad():
            return plan.apply(key, t, out_dtypes[key])

    metadata["framepack.merged_loras"] = json.dumps(plan.files)
    if progress:
        progress(f"Writing merged DiT to {output}")
    write_safetensors(output, entries, produce, metadata)
    return plan.report


