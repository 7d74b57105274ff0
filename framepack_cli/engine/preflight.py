"""Checks that run before any model loads (milliseconds, file headers only).

Loading the real text encoder takes minutes and 16 GB; a DiT passed as `--vae` must not be found out
after that. So before the first model loads: every model file is what its flag expects, the models fit
together (the DiT's text / pooled / image widths equal the encoders' hidden sizes), the attention kernel
takes the DiT's dtype and imports, and every input image decodes. The headers read here also give the
memory check (`framepack_cli.engine.resources`) the size of every model.
"""

from __future__ import annotations

from pathlib import Path

from framepack_cli.errors import FramepackError
from framepack_cli.models.detect import expect_kind
from framepack_cli.models.loading import TensorInfo, read_header_infos

FLAGS = (("dit", "dit"), ("vae", "vae"), ("text_encoder1", "text_encoder1"), ("text_encoder2", "text_encoder2"),
         ("image_encoder", "image_encoder"))


def _files(kind: str, path: str) -> list[Path]:
    """The files each loader would read (same resolution rules)."""
    if kind == "dit":
        from framepack_cli.models.loading import resolve_dit_files

        return resolve_dit_files(path)
    if kind == "vae":
        from framepack_cli.models.vae import vae_weight_files

        return vae_weight_files(Path(path))
    from framepack_cli.models.text_encoders import resolve_weight_files

    sub = {"text_encoder1": "text_encoder", "text_encoder2": "text_encoder_2", "image_encoder": "image_encoder"}[kind]
    return resolve_weight_files(path, sub)


def _width(infos: dict[str, TensorInfo], prefix: str, names: tuple[str, ...], axis: int) -> int | None:
    for n in names:
        info = infos.get(prefix + n)
        if info is not None:
            return info.shape[axis]
    return None


def _check_fp8_file(opts, path, infos: dict[str, TensorInfo], prefix: str) -> None:
    """A pre-quantised fp8 DiT is read or refused from its header (the same lines `load_dit` would say)."""
    from framepack_cli.errors import ModelFormatError
    from framepack_cli.models.detect import fp8_scheme

    try:
        scheme = fp8_scheme(infos, prefix)
    except ModelFormatError as e:
        raise ModelFormatError(f"--dit: {path} {e.message}", hint=e.hint) from None
    if scheme is not None and getattr(opts, "lora_weight", None):
        raise ModelFormatError(
            f"--dit: {path} is already in fp8 ({scheme.describe()}): merging a LoRA into fp8 weights loses "
            "most of its effect", hint="use the bf16 DiT file with --fp8_scaled")


def check_models(opts, kinds: tuple[str, ...] | None = None) -> dict[str, tuple[str, dict[str, TensorInfo], str]]:
    """Each given model file is of the right kind, and the DiT matches the encoders' widths.

    Returns:
        `{kind: (path, header infos, key prefix)}` of every model checked.

    Raises:
        FramepackError / ModelFormatError: one line naming the flag, the file and the problem.
    """
    found: dict[str, tuple[str, dict[str, TensorInfo], str]] = {}
    for field, kind in FLAGS:
        path = getattr(opts, field, None)
        if path is None or (kinds is not None and kind not in kinds):
            continue
        infos = read_header_infos(_files(kind, path))
        det = expect_kind(path, infos, kind, f"--{field}")
        if kind == "dit":
            _check_fp8_file(opts, path, infos, det.prefix)
        found[kind] = (path, infos, det.prefix)
    if "dit" not in found:
        return found
    from framepack_cli.models.transformer import infer_dit_config

    dit_path, dit_infos, _ = found["dit"]
    cfg = infer_dit_config(dit_infos)
    n_swap = getattr(opts, "blocks_to_swap", 0)
    if isinstance(n_swap, int) and n_swap:  # "auto" is planned later, within the model's counts
        from framepack_cli.models.block_swap import check_blocks_to_swap

        check_blocks_to_swap(n_swap, cfg["num_layers"], cfg["num_single_layers"])
    expected = {
        "text_encoder1": ("text_embed_dim", ("embed_tokens.weight",), 1),
        "text_encoder2": ("pooled_projection_dim", ("embeddings.token_embedding.weight",), 1),
        "image_encoder": ("image_proj_dim", ("post_layernorm.weight", "embeddings.patch_embedding.weight"), 0),
    }
    for kind, (key, names, axis) in expected.items():
        if kind not in found or cfg.get(key) is None:
            continue
        path, infos, prefix = found[kind]
        width = _width(infos, prefix, names, axis)
        if width is not None and width != cfg[key]:
            flag = {"text_encoder1": "--text_encoder1", "text_encoder2": "--text_encoder2",
                    "image_encoder": "--image_encoder"}[kind]
            raise FramepackError(
                f"{flag}: {path} has hidden size {width}, but the DiT {dit_path} expects {cfg[key]} ({key}); "
                "these models do not belong together"
            )
    return found


def check_images(paths: list[str | None]) -> None:
    """Every input image decodes (a truncated PNG fails here, not after the VAE has loaded)."""
    from framepack_cli.io.images import load_image

    for p in dict.fromkeys(p for p in paths if p):
        load_image(p)


# Kernels that take only half-precision inputs (flash-attn and SageAttention refuse float32 tensors).
HALF_ONLY_ATTENTION = {"flash": "FlashAttention", "flash3": "FlashAttention 3", "sageattn": "SageAttention",
                       "sage": "SageAttention"}


def check_attention_dtype(attn_mode: str, dtype, source: str) -> None:
    """A half-precision-only kernel with a float32 DiT is refused here, not at the first attention call.

    Args:
        dtype: the DiT's dtype; source: how it was chosen (`--dtype auto on cpu`), for the message.
    """
    name = HALF_ONLY_ATTENTION.get(attn_mode)
    if name is not None and str(dtype) == "torch.float32":
        raise FramepackError(f"--attn_mode {attn_mode}: {name} runs in float16 or bfloat16 only, but the DiT runs "
                             f"in float32 ({source}); use --attn_mode sdpa, or --dtype bfloat16 on a GPU")


def check_attention(attn_mode: str, dtype=None, device=None) -> tuple[str, str | None]:
    """The kernel the run uses (`auto` resolved for `dtype` on `device`) and the line saying so (auto only).

    Raises:
        FramepackError: `--attn_mode: ...`, the kernel's package is missing or cannot run here.
    """
    import torch

    from framepack_cli.models.attention import choose_attention

    try:
        return choose_attention(attn_mode, dtype or torch.float32, torch.device(device or "cpu"))
    except FramepackError as e:
        raise FramepackError(flag_message(e.message, attn_mode, f"--attn_mode {attn_mode}"), hint=e.hint) from None


def flag_message(message: str, attn_mode: str, flag: str) -> str:
    """`attention mode 'x' needs ...` as `--attn_mode x needs ...` (the flag the user typed)."""
    own = f"attention mode {attn_mode!r}"
    return message.replace(own, flag, 1) if message.startswith(own) else f"{flag}: {message}"


def job_images(opts) -> list[str | None]:
    """Every image file a generate / one-frame / kisekae job reads."""
    from framepack_cli.options.sections import parse_section_values

    out: list[str | None] = []
    if opts.image_path:
        out += list(parse_section_values(opts.image_path).values())
    out += [opts.end_image_path, *(opts.control_image_path or []), *(opts.control_image_mask_path or [])]
    out += [getattr(opts, "start_mask", None), getattr(opts, "reference_mask", None)]
    return out


def preflight(opts, device, precision) -> dict[str, tuple[str, dict[str, TensorInfo], str]]:
    """All checks for a generation run (the batch lines' images are checked when each line is read).

    Returns:
        `check_models`' headers, for the memory check.
    """
    from framepack_cli.engine.precision import dtype_source

    found = check_models(opts)
    check_attention_dtype(opts.attn_mode, precision.dit, dtype_source(opts, "dit", device))
    check_attention(opts.attn_mode, precision.dit, device)
    check_images(job_images(opts))
    return found
