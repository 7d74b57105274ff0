"""Image encoder: SigLIP so400m-patch14-384 (`transformers.SiglipVisionModel`, from FLUX.1-Redux).

The DiT is conditioned on SigLIP's `last_hidden_state` (after `post_layernorm`) of the start / section
image, preprocessed exactly like the reference's `SiglipImageProcessor` call (inference.md §3.4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.hf_build import (
    config_from_json,
    count_layers,
    load_hf_encoder,
    quiet_transformers,
    tensor_shape,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

# Constants of the real so400m model, used when there is no config.json. head_dim 72 (1152 / 16 heads) is a
# property of that model, not of SigLIP in general: other sizes need their config.json beside the weights.
SIGLIP_HEAD_DIM = 72
SIGLIP_IMAGE_SIZE = 384
SIGLIP_LN_EPS = 1e-6

_SIGLIP_LAYER_RE = re.compile(r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.")
_HEAD_RE = re.compile(r"^(?:vision_model\.)?head\.")
_EXTRAS = ("vision_model.embeddings.position_ids", "embeddings.position_ids")


def siglip_config(infos: dict, raw: dict | None, path: object) -> Any:
    """The `SiglipVisionConfig` of the weights (config.json `raw` if it is a SigLIP one, else shapes), head off."""
    from transformers import SiglipVisionConfig

    n_layers = count_layers(infos, _SIGLIP_LAYER_RE, path)
    cfg = config_from_json(raw, ("siglip_vision_model",), "vision_config")
    if cfg is not None:
        cfg.pop("architectures", None)
        with quiet_transformers():
            config = SiglipVisionConfig.from_dict(cfg)
        if config.num_hidden_layers != n_layers:
            raise ModelFormatError(
                f"{path}: config.json says {config.num_hidden_layers} layers but the weights have {n_layers}"
            )
    else:
        p = "vision_model." if any(k.startswith("vision_model.") for k in infos) else ""
        hidden, channels, patch, _ = tensor_shape(infos, p + "embeddings.patch_embedding.weight", path)
        positions = tensor_shape(infos, p + "embeddings.position_embedding.weight", path)[0]
        inter = tensor_shape(infos, p + "encoder.layers.0.mlp.fc1.weight", path)[0]
        if hidden % SIGLIP_HEAD_DIM:
            raise ModelFormatError(
                f"{path}: hidden size {hidden} is not a multiple of so400m's head_dim {SIGLIP_HEAD_DIM}; "
                "cannot infer the number of heads",
                hint="put the model's config.json beside the weights",
            )
        side = round(positions**0.5)
        if side * side != positions:
            raise ModelFormatError(f"{path}: {positions} position embeddings do not form a square patch grid")
        # 384 px with patch 14 gives 27x27 patches (the conv drops the last 6 px); the preprocessing resizes to
        # image_size, so keep the real 384 whenever it yields this grid, else the exact multiple.
        image_size = SIGLIP_IMAGE_SIZE if SIGLIP_IMAGE_SIZE // patch == side else side * patch
        with quiet_transformers():
            config = SiglipVisionConfig(
                hidden_size=hidden,
                intermediate_size=inter,
                num_hidden_layers=n_layers,
                num_attention_heads=hidden // SIGLIP_HEAD_DIM,
                num_channels=channels,
                image_size=image_size,
                patch_size=patch,
                hidden_act="gelu_pytorch_tanh",
                layer_norm_eps=SIGLIP_LN_EPS,
            )
    # The attention-pooling head is not used (the DiT takes last_hidden_state) and would run on every call.
    config.vision_use_head = False
    return config


def load_image_encoder(
    path: str | Path,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    flag: str = "--image_encoder",
) -> nn.Module:
    """Load the SigLIP vision encoder.

    Accepted layouts: the Comfy-Org `sigclip_vision_patch14_384.safetensors`, an HF `image_encoder`
    directory, or a snapshot holding `image_encoder/`; keys with or without `vision_model.`. A config.json
    beside the weights defines the architecture; otherwise it is inferred from shapes with the real model's
    head_dim 72 (correct for so400m only). The pooling head is dropped (never used).

    Args:
        path: file, directory or snapshot.
        device: where the weights go.
        dtype: compute dtype.
        flag: CLI flag named in errors.

    Returns:
        `SiglipVisionModel` without its pooling head, eval mode, no gradients.

    Raises:
        ModelFormatError: wrong kind of file or weights not matching the architecture.
    """
    from transformers import SiglipVisionModel

    return load_hf_encoder(path, subfolder="image_encoder", kind="image_encoder", flag=flag,
                           model_cls=SiglipVisionModel, config_fn=siglip_config, extras=_EXTRAS,
                           prefix="vision_model.", device=device, dtype=dtype,
                           skip=lambda k: bool(_HEAD_RE.match(k)))


def siglip_resize(image: np.ndarray, size: int = SIGLIP_IMAGE_SIZE) -> np.ndarray:
    """Squash-resize a uint8 `[H, W, 3]` image to `size x size` with PIL BICUBIC (uint8 result), as
    `SiglipImageProcessor` (resample=3) does before rescaling."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise FramepackError(f"SigLIP input must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BICUBIC))


def siglip_pixels(image: np.ndarray, size: int = SIGLIP_IMAGE_SIZE) -> torch.Tensor:
    """uint8 `[H, W, 3]` image -> float32 `[1, 3, size, size]` pixel values: resize, /255, (x-0.5)/0.5."""
    import torch

    x = torch.from_numpy(siglip_resize(image, size)).float() / 255.0
    x = (x - 0.5) / 0.5
    return x.permute(2, 0, 1)[None].contiguous()


def encode_image(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """SigLIP `last_hidden_state` of an image, after the reference preprocessing.

    Args:
        model: from `load_image_encoder`.
        image: the bucket-resized, centre-cropped uint8 `[H, W, 3]` image (the one that is VAE-encoded).

    Returns:
        `[1, N, D]` (729 x 1152 for so400m) on the CPU, in the model's dtype.
    """
    import torch

    p = next(model.parameters())
    pixels = siglip_pixels(image, model.config.image_size).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state.cpu()
