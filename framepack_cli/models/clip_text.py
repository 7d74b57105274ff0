"""Text encoder 2: CLIP-L's text model (`transformers.CLIPTextModel`), whose pooler output conditions the DiT.

Keys come with or without `text_model.`; the architecture comes from a config.json beside the weights or
from tensor shapes with the real model's constants (head_dim 64, quick_gelu).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_cli.errors import ModelFormatError
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

# Constants of the real CLIP-L text model.
CLIP_HEAD_DIM = 64
CLIP_LN_EPS = 1e-5


_CLIP_LAYER_RE = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.")
# Entries of full-CLIP or old-transformers files that CLIPTextModel does not own (unused here).
_CLIP_EXTRAS = (
    "text_projection.weight",
    "logit_scale",
    "text_model.embeddings.position_ids",
    "embeddings.position_ids",
)


def clip_text_config(infos: dict, raw: dict | None, path: object) -> Any:
    """The `CLIPTextConfig` of the weights: from config.json (`raw`) if it is a CLIP text one, else from shapes."""
    from transformers import CLIPTextConfig

    n_layers = count_layers(infos, _CLIP_LAYER_RE, path)
    cfg = config_from_json(raw, ("clip_text_model",), "text_config")
    if cfg is not None:
        cfg.pop("architectures", None)
        with quiet_transformers():
            config = CLIPTextConfig.from_dict(cfg)
    else:
        p = "text_model." if any(k.startswith("text_model.") for k in infos) else ""
        vocab, hidden = tensor_shape(infos, p + "embeddings.token_embedding.weight", path)
        positions = tensor_shape(infos, p + "embeddings.position_embedding.weight", path)[0]
        inter = tensor_shape(infos, p + "encoder.layers.0.mlp.fc1.weight", path)[0]
        if hidden % CLIP_HEAD_DIM:
            raise ModelFormatError(
                f"{path}: hidden size {hidden} is not a multiple of head_dim {CLIP_HEAD_DIM}",
                hint="put the model's config.json beside the weights",
            )
        with quiet_transformers():
            config = CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=inter,
                projection_dim=hidden,
                num_hidden_layers=n_layers,
                num_attention_heads=hidden // CLIP_HEAD_DIM,
                max_position_embeddings=positions,
                hidden_act="quick_gelu",
                layer_norm_eps=CLIP_LN_EPS,
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
            )
    # The reference's configs carry the legacy eos id 2, for which transformers pools the hidden state at
    # argmax(input_ids) (the first <|endoftext|>, the highest id). Forcing it keeps that rule whatever
    # config.json says; with the CLIP tokenizer both rules pick the same token anyway.
    config.eos_token_id = 2
    if config.num_hidden_layers != n_layers:
        raise ModelFormatError(
            f"{path}: config.json says {config.num_hidden_layers} layers but the weights have {n_layers}"
        )
    return config


def load_text_encoder2(
    path: str | Path,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    flag: str = "--text_encoder2",
) -> nn.Module:
    """Load the CLIP-L text encoder (`transformers.CLIPTextModel`).

    Accepted layouts: the Comfy-Org `clip_l.safetensors`, an HF `text_encoder_2` directory, or a snapshot
    holding `text_encoder_2/`. Keys are accepted with or without the `text_model.` prefix (whatever the
    installed transformers expects is produced); `text_projection`/`logit_scale`/`position_ids` entries are
    ignored. Without a config.json the architecture is inferred from shapes (head_dim 64, quick_gelu).

    Args:
        path: file, directory or snapshot.
        device: where the weights go.
        dtype: compute dtype.
        flag: CLI flag named in errors.

    Returns:
        `CLIPTextModel` in eval mode, without gradients.

    Raises:
        ModelFormatError: wrong kind of file or weights not matching the architecture.
    """
    from transformers import CLIPTextModel

    return load_hf_encoder(path, subfolder="text_encoder_2", kind="text_encoder2", flag=flag,
                           model_cls=CLIPTextModel, config_fn=clip_text_config, extras=_CLIP_EXTRAS,
                           prefix="text_model.", device=device, dtype=dtype)
