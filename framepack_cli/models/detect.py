"""What is this file? Model kind and on-disk format from tensor names alone (no weights loaded).

Users mix up DiT, VAE, text encoders, SigLIP and LoRA files all the time; every loader calls
`expect_kind` first so a wrong file gets one line naming the file, what it looks like and what the flag
expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from framepack_cli.errors import ModelFormatError
from framepack_cli.models.tensor_info import TensorInfo

KIND_LABELS = {
    "dit": "a FramePack DiT",
    "vae": "a HunyuanVideo VAE",
    "text_encoder1": "a LLaMA text encoder (text_encoder1)",
    "text_encoder2": "a CLIP-L text encoder (text_encoder2)",
    "image_encoder": "a SigLIP image encoder",
    "lora": "a LoRA",
    "hunyuan_dit": "a HunyuanVideo (non-FramePack) DiT",
    "unknown": "no model this tool knows",
}


@dataclass(frozen=True)
class Detected:
    """Result of `detect_kind`.

    Attributes:
        kind: one of `KIND_LABELS`.
        format: on-disk layout name (e.g. `diffusers`, `comfy-org`, `official`, `hf`).
        prefix: key prefix that must be stripped to get the canonical names ("" if none).
    """

    kind: str
    format: str
    prefix: str = ""

    @property
    def label(self) -> str:
        return KIND_LABELS[self.kind]


def _has(keys: set[str], name: str, prefixes: tuple[str, ...]) -> str | None:
    for p in prefixes:
        if p + name in keys:
            return p
    return None


def detect_kind(infos: dict[str, TensorInfo]) -> Detected:
    """Classify a state dict by its key names."""
    keys = set(infos)
    if any(
        (".lora_down." in k or ".lora_up." in k or ".lora_A." in k or ".lora_B." in k or ".hada_w1_a" in k
         or ".lokr_w1" in k)
        for k in keys
    ):
        return Detected("lora", "lora")
    p = _has(keys, "x_embedder.proj.weight", ("", "model.diffusion_model.", "diffusion_model.", "transformer."))
    if p is not None:
        if _has(keys, "clean_x_embedder.proj.weight", (p,)) is not None:
            fmt = "diffusers" if p == "" else ("comfy" if "diffusion_model" in p else "diffusers-pipeline")
            return Detected("dit", fmt, p)
        return Detected("unknown", "diffusers-dit", p)
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys) or (
        "img_in.proj.weight" in keys
    ):
        return Detected("hunyuan_dit", "hunyuan-original")
    p = _has(keys, "encoder.conv_in.conv.weight", ("", "vae."))
    if p is None:
        p = _has(keys, "decoder.conv_in.conv.weight", ("", "vae."))
    if p is not None:
        return Detected("vae", "official" if p == "vae." else "diffusers", p)
    p = _has(keys, "embed_tokens.weight", ("", "model."))
    if p is not None and _has(keys, "layers.0.self_attn.q_proj.weight", (p,)) is not None:
        return Detected("text_encoder1", "comfy-org" if p == "model." else "hf", p)
    p = _has(keys, "embeddings.token_embedding.weight", ("text_model.", ""))
    if p is not None:
        return Detected("text_encoder2", "hf", p)
    p = _has(keys, "embeddings.patch_embedding.weight", ("vision_model.", ""))
    if p is not None:
        return Detected("image_encoder", "hf", p)
    return Detected("unknown", "unknown")


def expect_kind(path: object, infos: dict[str, TensorInfo], kind: str, flag: str) -> Detected:
    """Detect the file's kind and raise one clear line if it is not `kind`.

    Raises:
        ModelFormatError: e.g. "--dit: models/vae.safetensors looks like a HunyuanVideo VAE (diffusers
            format), expected a FramePack DiT".
    """
    det = detect_kind(infos)
    if det.kind == kind:
        return det
    if not infos:
        raise ModelFormatError(f"{flag}: {path} holds no tensors, expected {KIND_LABELS[kind]}")
    what = det.label if det.kind != "unknown" else f"no model this tool knows (first key {sorted(infos)[0]!r})"
    fmt = f" ({det.format} format)" if det.kind not in ("unknown", "lora") else ""
    hint = None
    if det.kind in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder"):
        flag_of = {
            "dit": "--dit", "vae": "--vae", "text_encoder1": "--text_encoder1", "text_encoder2": "--text_encoder2",
            "image_encoder": "--image_encoder",
        }[det.kind]
        hint = f"pass it as {flag_of}"
    elif det.kind == "lora":
        hint = "pass it as --lora_weight"
    raise ModelFormatError(f"{flag}: {path} looks like {what}{fmt}, expected {KIND_LABELS[kind]}", hint=hint)
