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


# --------------------------------------------------------------------------------------------------
# Pre-quantised fp8 checkpoints (Kijai's `*_fp8_e4m3fn*.safetensors`, musubi / ComfyUI scaled files)
# --------------------------------------------------------------------------------------------------

# Marker / activation-scale keys of ComfyUI's scaled-fp8 layout: not needed by a dequantising matmul.
FP8_IGNORED_SUFFIXES = (".scale_input",)
FP8_IGNORED_KEYS = ("scaled_fp8",)
_FLOAT_SCALE_DTYPES = ("F32", "BF16", "F16")


def is_fp8_target(key: str) -> bool:
    """The reference's rule for the DiT weights `--fp8` / `--fp8_scaled` store in fp8 (bare diffusers names):
    `transformer_blocks` in the key (also matching `single_transformer_blocks`), `.weight`, no `norm`."""
    return "transformer_blocks" in key and key.endswith(".weight") and "norm" not in key


@dataclass(frozen=True)
class Fp8Scheme:
    """How a pre-quantised checkpoint stores its fp8 weights (from the header alone).

    Attributes:
        n_fp8: float8_e4m3fn tensors in the file.
        scales: `<module>.scale_weight` keys (dequantised weight = `q * scale`), by layout:
            "tensor" (one number), "channel" ([out, 1] or [out]), "block" ([out, in/B, 1]).
    """

    n_fp8: int
    scales: dict[str, str]

    @property
    def scaled(self) -> bool:
        return bool(self.scales)

    def describe(self) -> str:
        if not self.scales:
            return f"plain float8_e4m3fn ({self.n_fp8} fp8 tensors, no scales)"
        kinds = sorted(set(self.scales.values()))
        return (f"scaled float8_e4m3fn ({self.n_fp8} fp8 tensors, {len(self.scales)} {'/'.join(kinds)} "
                "scales)")


def scale_layout(weight_shape: tuple[int, ...], scale_shape: tuple[int, ...]) -> str | None:
    """"tensor", "channel" or "block" for a `scale_weight` of `scale_shape` on a weight of `weight_shape`,
    None when the pair is no layout this tool reads."""
    n = 1
    for s in scale_shape:
        n *= s
    if n == 1:
        return "tensor"
    if len(weight_shape) != 2:
        return None
    out, inp = weight_shape
    if tuple(scale_shape) in ((out,), (out, 1)):
        return "channel"
    if len(scale_shape) == 3 and scale_shape[0] == out and scale_shape[2] == 1 and scale_shape[1] > 0 \
            and inp % scale_shape[1] == 0:
        return "block"
    return None


def fp8_scheme(infos: dict[str, TensorInfo], prefix: str = "") -> Fp8Scheme | None:
    """The fp8 layout of a checkpoint, None when it holds no fp8 tensors.

    Raises:
        ModelFormatError: fp8 in a form this tool cannot read (float8_e5m2, MX / fp4 types, vLLM / ModelOpt
            `weight_scale` keys, a `scale_weight` on a non-fp8 tensor or of an unknown shape); the message
            says why, the caller adds the flag and the file.
    """
    keys = [k for k in infos if k.startswith(prefix)]
    odd = sorted({infos[k].dtype for k in keys if infos[k].dtype in ("F8_E5M2", "F8_E8M0", "F4")})
    if odd:
        what = {"F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0 (MX scales)", "F4": "fp4"}
        raise ModelFormatError(
            f"holds {', '.join(what[d] for d in odd)} tensors; only float8_e4m3fn fp8 files (plain or with "
            "scale_weight scales) can be read",
            hint="use the bf16 file (with --fp8_scaled to quantise it at load)")
    vllm = [k for k in keys if k.endswith((".weight_scale", ".input_scale", ".weight_scale_inv"))]
    if vllm:
        raise ModelFormatError(
            f"uses the vLLM / ModelOpt fp8 layout ({vllm[0]!r}), which this tool cannot read",
            hint="use the bf16 file (with --fp8_scaled to quantise it at load)")
    fp8 = [k for k in keys if infos[k].dtype == "F8_E4M3" and k[len(prefix):] not in FP8_IGNORED_KEYS]
    scales: dict[str, str] = {}
    for k in keys:
        if not k.endswith(".scale_weight"):
            continue
        w = k[: -len(".scale_weight")] + ".weight"
        if w not in infos or infos[w].dtype != "F8_E4M3":
            raise ModelFormatError(f"has a scale {k!r} for a tensor that is not float8_e4m3fn; the file is damaged "
                                   "or a scheme this tool cannot read", hint="use the bf16 file")
        if infos[k].dtype not in _FLOAT_SCALE_DTYPES:
            raise ModelFormatError(f"has a scale {k!r} stored as {infos[k].dtype}, a scheme this tool cannot read",
                                   hint="use the bf16 file")
        layout = scale_layout(infos[w].shape, infos[k].shape)
        if layout is None:
            raise ModelFormatError(
                f"has a scale {k!r} of shape {list(infos[k].shape)} for a weight of shape {list(infos[w].shape)}, "
                "a scheme this tool cannot read (per-tensor, per-output-channel and [out, in/B, 1] block scales "
                "are read)", hint="use the bf16 file")
        scales[k[len(prefix):]] = layout
    if not fp8:
        return None
    return Fp8Scheme(len(fp8), scales)
