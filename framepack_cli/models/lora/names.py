"""Key naming: FramePack module paths, musubi `lora_unet_` names, HunyuanVideo names."""

from __future__ import annotations

import re
from collections.abc import Mapping

# --------------------------------------------------------------------------------------------------
# FramePack module names (diffusers naming, identical in every FramePack DiT checkpoint)
# --------------------------------------------------------------------------------------------------

DUAL_BLOCK = "transformer_blocks"
SINGLE_BLOCK = "single_transformer_blocks"
REFINER_BLOCK = "context_embedder.token_refiner.refiner_blocks"

# Every Linear (or conv) a LoRA can target, per block container. Norm weights are 1-D: never LoRA targets.
_BLOCK_MODULES: dict[str, tuple[str, ...]] = {
    DUAL_BLOCK: (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
        "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2", "norm1.linear", "norm1_context.linear",
    ),
    SINGLE_BLOCK: ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"),
    REFINER_BLOCK: ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2",
                    "norm_out.linear"),
}
_GLOBAL_MODULES = (
    "x_embedder.proj", "clean_x_embedder.proj", "clean_x_embedder.proj_2x", "clean_x_embedder.proj_4x",
    "image_projection.up", "image_projection.down",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
    "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "context_embedder.time_text_embed.text_embedder.linear_1",
    "context_embedder.time_text_embed.text_embedder.linear_2",
    "context_embedder.proj_in", "norm_out.linear", "proj_out",
)
_GLOBAL_BY_UNDERSCORE = {p.replace(".", "_"): p for p in _GLOBAL_MODULES}
_BLOCK_BY_UNDERSCORE = {
    block.replace(".", "_"): (block, {m.replace(".", "_"): m for m in modules})
    for block, modules in _BLOCK_MODULES.items()
}
# Anchored, so "single_transformer_blocks_0_..." never matches the dual-block alternative.
_FP_BLOCK_RE = re.compile(
    r"^(transformer_blocks|single_transformer_blocks|context_embedder_token_refiner_refiner_blocks)_(\d+)_(\w+)$"
)
FP_DOTTED_RE = re.compile(r"^(transformer_blocks|single_transformer_blocks|context_embedder\.token_refiner\."
                           r"refiner_blocks)\.(\d+)\.(.+)$")

# HunyuanVideo block module (its name with every "." turned into "_") -> FramePack module(s) and how the
# rows of a fused projection are split: "qkv" = 3 equal parts, "qkvm" = 3 x inner + the MLP rest.
HV_DOUBLE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "img_attn_qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), "qkv"),
    "img_attn_proj": (("attn.to_out.0",), None),
    "img_mod_linear": (("norm1.linear",), None),
    "img_mod_lin": (("norm1.linear",), None),
    "img_mlp_fc1": (("ff.net.0.proj",), None),
    "img_mlp_0": (("ff.net.0.proj",), None),
    "img_mlp_fc2": (("ff.net.2",), None),
    "img_mlp_2": (("ff.net.2",), None),
    "txt_attn_qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "qkv"),
    "txt_attn_proj": (("attn.to_add_out",), None),
    "txt_mod_linear": (("norm1_context.linear",), None),
    "txt_mod_lin": (("norm1_context.linear",), None),
    "txt_mlp_fc1": (("ff_context.net.0.proj",), None),
    "txt_mlp_0": (("ff_context.net.0.proj",), None),
    "txt_mlp_fc2": (("ff_context.net.2",), None),
    "txt_mlp_2": (("ff_context.net.2",), None),
}
HV_SINGLE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "qkvm"),
    "linear2": (("proj_out",), None),
    "modulation_linear": (("norm.linear",), None),
    "modulation_lin": (("norm.linear",), None),
}
HV_BLOCK_RE = re.compile(r"^(double_blocks|single_blocks)[._](\d+)[._](.+)$")
# HunyuanVideo modules outside the blocks (embedders, token refiner, final layer): they name the layout.
HV_OTHER_RE = re.compile(r"^(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)[._]")
# FramePack/HunyuanVideo MLP ratio; only used to split `linear1` when no DiT tells the inner size.
MLP_RATIO = 4

MUSUBI_PREFIX = "lora_unet_"
# Key prefixes of dotted layouts -> layout family. Longest first so "model.diffusion_model." wins.
DOTTED_PREFIXES = (
    ("model.diffusion_model.", "comfy"),
    ("diffusion_model.", "comfy"),
    ("base_model.model.", "peft"),
    ("transformer.", "diffusers"),
)

# Per-module tensor names (after the module name). Keys are tried longest first.
SUFFIXES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up",
    "alpha": "alpha", "diff": "diff",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b",
}
SUFFIXES_LONGEST_FIRST = sorted(SUFFIXES, key=len, reverse=True)
NETWORK_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "diff": "full delta"}
TARGETS = ("musubi", "diffusers", "comfy")


def musubi_name(path: str) -> str:
    """musubi module name of a FramePack module path (`transformer_blocks.0.attn.to_q` ->
    `lora_unet_transformer_blocks_0_attn_to_q`)."""
    return MUSUBI_PREFIX + path.replace(".", "_")


def framepack_path(name: str, dit_modules: Mapping[str, str] | None = None) -> str | None:
    """FramePack module path of an underscored name (musubi name without `lora_unet_`), by table lookup.

    A blanket `_` -> `.` replacement is wrong for FramePack (`to_out_0`, `ff_context_net_0_proj`,
    `proj_mlp`): that is exactly the reference converter's bug, so names are looked up instead.

    Args:
        name: e.g. `transformer_blocks_0_ff_context_net_0_proj`.
        dit_modules: optional underscored name -> path map of a concrete DiT, for modules not in the table.

    Returns:
        The dotted path, or None if the name is no FramePack module.
    """
    m = _FP_BLOCK_RE.match(name)
    if m:
        block, tails = _BLOCK_BY_UNDERSCORE[m.group(1)]
        tail = tails.get(m.group(3))
        if tail is not None:
            return f"{block}.{m.group(2)}.{tail}"
    elif name in _GLOBAL_BY_UNDERSCORE:
        return _GLOBAL_BY_UNDERSCORE[name]
    return dit_modules.get(name) if dit_modules else None


def is_framepack_path(path: str) -> bool:
    """Whether a dotted path is a LoRA-targetable FramePack module of the table."""
    m = FP_DOTTED_RE.match(path)
    if m:
        return m.group(3) in _BLOCK_MODULES[m.group(1)]
    return path in _GLOBAL_MODULES


