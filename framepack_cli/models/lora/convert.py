"""Converting LoRA files between the musubi, diffusers and ComfyUI key layouts."""

from __future__ import annotations

from pathlib import Path

import torch

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.lora.modules import LoraFile
from framepack_cli.models.lora.names import TARGETS, musubi_name
from framepack_cli.models.lora.read import read_lora
from framepack_cli.models.lora.save import check_output, save_tensors

# --------------------------------------------------------------------------------------------------
# Converting
# --------------------------------------------------------------------------------------------------

# The tensor each layout folds the scale into (the first factor that multiplies the output).
_FOLD_INTO = {"lora": ("up",), "loha": ("hada_w1_a",), "lokr": ("lokr_w1", "lokr_w1_a")}
# Role -> key suffix when writing.
_MUSUBI_SUFFIX = {"down": "lora_down.weight", "up": "lora_up.weight"}
_PEFT_SUFFIX = {"down": "lora_A.weight", "up": "lora_B.weight"}


def _fold(t: torch.Tensor, scale: float) -> torch.Tensor:
    """`t * scale` computed in float32, kept in t's dtype when that is exact, else stored as float32."""
    if scale == 1.0:
        return t
    out = t.float() * scale
    back = out.to(t.dtype)
    return back if torch.equal(back.float(), out) else out


def convert_lora(lora: LoraFile, to: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of `lora` in another key layout, FramePack module names throughout.

    * musubi: `lora_unet_<module>` + `.lora_down.weight` / `.lora_up.weight` / `.alpha` (float32 0-d; alpha
      = rank when the source had none, i.e. scale 1). LoHa/LoKr keep their tensor names and alpha.
    * diffusers: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (what diffusers' FramePack
      transformer loads). PEFT has no per-module alpha, so alpha/rank is folded into `lora_B` (LoHa:
      `hada_w1_a`, LoKr: `lokr_w1`), in float32 where the source dtype cannot hold the product exactly.
    * comfy: the same under `diffusion_model.`.

    HunyuanVideo-named input comes out split into FramePack modules. Converting back and forth gives the same
    merged weights (bit-exact when alpha/rank is a power of two, else to float32 rounding).

    Raises:
        FramepackError: unknown target or a LoRA with nothing to convert.
    """
    if to not in TARGETS:
        raise FramepackError(f"--to: unknown layout {to!r}", hint=f"use one of: {', '.join(TARGETS)}")
    if not lora.modules:
        raise ModelFormatError(f"{lora.path}: no module maps to the FramePack DiT (format {lora.format}, "
                               f"{len(lora.unused)} keys unused); nothing to convert")
    out: dict[str, torch.Tensor] = {}
    for path in sorted(lora.modules):
        mod = lora.modules[path]
        if to == "musubi":
            name = musubi_name(path)
            for role, t in mod.tensors.items():
                out[f"{name}.{_MUSUBI_SUFFIX.get(role, role)}"] = t
            alpha = mod.alpha if mod.alpha is not None else mod.rank
            if alpha is not None and mod.kind != "diff":
                out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
        else:
            name = ("transformer." if to == "diffusers" else "diffusion_model.") + path
            scale = mod.scale
            fold = next((r for r in _FOLD_INTO.get(mod.kind, ()) if r in mod.tensors), None)
            for role, t in mod.tensors.items():
                out[f"{name}.{_PEFT_SUFFIX.get(role, role)}"] = _fold(t, scale) if role == fold else t
    # Split HunyuanVideo modules share their down factor; give every key its own storage so the result can
    # also be saved with safetensors' own save_file (which refuses shared tensors).
    seen: set[int] = set()
    for k, t in out.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            out[k] = t.clone()
        seen.add(ptr)
    # The sshs_* hashes cover the source file's tensors; they would be wrong for the converted ones.
    metadata = {k: v for k, v in lora.metadata.items()
                if k != "lora_adapter_metadata" and not k.startswith("sshs_")}
    metadata["framepack.converted_from"] = lora.format
    return out, metadata


def convert_lora_file(src: str | Path, to: str, output: str | Path, *, overwrite: bool = False) -> LoraFile:
    """Read `src`, convert it to layout `to` and save it to `output` (atomically, never over an existing
    file unless `overwrite`). Returns the source as read."""
    src, output = Path(src), Path(output)
    check_output(output, overwrite, [src], "--output")
    lora = read_lora(src, flag="FILE")
    tensors, metadata = convert_lora(lora, to)
    save_tensors(output, tensors, metadata)
    return lora


