"""Text encoder 1: the LLaMA-3 language model of llava-llama-3-8b, loaded as a truncated `transformers.LlamaModel`.

Prompt encoding uses `hidden_states[-3]` only, so the last two layers are never loaded and the final norm is
an identity. The architecture comes from a config.json beside the weights or from tensor shapes with the
real model's constants; `--fp8_llm` stores the Linear weights as float8_e4m3fn, upcast per matmul.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_cli.errors import ModelFormatError
from framepack_cli.models.detect import expect_kind
from framepack_cli.models.hf_build import (
    assign_state_dict,
    build_empty_model,
    config_from_json,
    count_layers,
    quiet_transformers,
    refuse_prequantized,
    resolve_weight_files,
    tensor_shape,
)
from framepack_cli.models.loading import load_state_dict, read_config_json, read_header_infos

if TYPE_CHECKING:
    import torch
    from torch import nn

# Constants of the real llava-llama-3-8b language model, used when a checkpoint has no config.json.
LLAMA_HEAD_DIM = 128
LLAMA_ROPE_THETA = 500000.0
LLAMA_RMS_EPS = 1e-5
LLAMA_MAX_POSITIONS = 8192

_LAYER_RE = re.compile(r"^layers\.(\d+)\.")


def llama_config(infos: dict, raw: dict | None, path: object) -> Any:
    """The `LlamaConfig` of canonical-named weights: from config.json (`raw`) if it is a LLaMA one, else from shapes."""
    from transformers import LlamaConfig

    keys = list(infos)
    n_layers = count_layers(keys, _LAYER_RE, path)
    cfg = config_from_json(raw, ("llama",), "text_config")
    if cfg is not None:
        cfg.pop("architectures", None)
        with quiet_transformers():
            config = LlamaConfig.from_dict(cfg)
        if config.num_hidden_layers != n_layers:
            raise ModelFormatError(
                f"{path}: config.json says {config.num_hidden_layers} layers but the weights have {n_layers}"
            )
        return config
    vocab, hidden = tensor_shape(infos, "embed_tokens.weight", path)
    q_out = tensor_shape(infos, "layers.0.self_attn.q_proj.weight", path)[0]
    k_out = tensor_shape(infos, "layers.0.self_attn.k_proj.weight", path)[0]
    inter = tensor_shape(infos, "layers.0.mlp.gate_proj.weight", path)[0]
    if q_out % LLAMA_HEAD_DIM or k_out % LLAMA_HEAD_DIM:
        raise ModelFormatError(
            f"{path}: q/k projections ({q_out}, {k_out}) are not multiples of head_dim {LLAMA_HEAD_DIM}; "
            "cannot infer the architecture",
            hint="put the model's config.json beside the weights",
        )
    big_vocab = vocab > 128001
    with quiet_transformers():
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=n_layers,
            num_attention_heads=q_out // LLAMA_HEAD_DIM,
            num_key_value_heads=k_out // LLAMA_HEAD_DIM,
            head_dim=LLAMA_HEAD_DIM,
            hidden_act="silu",
            max_position_embeddings=LLAMA_MAX_POSITIONS,
            rms_norm_eps=LLAMA_RMS_EPS,
            rope_theta=LLAMA_ROPE_THETA,
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            # The real ids; unset for small vocabularies so transformers does not warn about them.
            bos_token_id=128000 if big_vocab else None,
            eos_token_id=128001 if big_vocab else None,
            pad_token_id=None,
        )


def _fp8_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    # Weights live in float8_e4m3fn (half the memory of fp16); upcast per call, compute in x's dtype.
    bias = self.bias.to(x.dtype) if self.bias is not None else None
    return F.linear(x, self.weight.to(x.dtype), bias)


def _enable_fp8_linears(model: nn.Module) -> int:
    """Give every Linear holding an fp8 weight an upcasting forward. Returns how many were patched."""
    import types

    import torch

    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float8_e4m3fn:
            m.forward = types.MethodType(_fp8_linear_forward, m)
            n += 1
    return n


def load_text_encoder1(
    path: str | Path,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    fp8: bool = False,
    flag: str = "--text_encoder1",
) -> nn.Module:
    """Load the LLaMA text encoder, truncated to the layers prompt encoding needs.

    Accepted layouts: the Comfy-Org single file (`LlamaForCausalLM` dict with `model.` prefix and
    `lm_head.weight`; prefix stripped, `lm_head`/`tokenizer` entries dropped), any shard of an HF
    `model-0000i-of-0000n.safetensors` set, an HF `text_encoder` directory, or a snapshot holding
    `text_encoder/`. A `config.json` beside the weights defines the architecture; otherwise it is inferred
    from tensor shapes with the real model's constants (head_dim 128, rope_theta 500000, RMS eps 1e-5).

    Only `hidden_states[-3]` is used, i.e. the raw output of decoder layer N-3. The returned `LlamaModel`
    therefore keeps layers 0..N-3 only (the last 2 layers are never loaded) and its final norm is replaced
    by an identity, so its `last_hidden_state` *is* the full model's `hidden_states[-3]`.
    `model.config.framepack_source_layers` records N.

    Args:
        path: file, first (or any) shard, directory or snapshot.
        device: where the weights go.
        dtype: compute dtype (float16 on GPU as in the reference, float32 for parity on CPU).
        fp8: `--fp8_llm`: store every Linear weight as float8_e4m3fn and upcast it per matmul; embedding and
            RMSNorm weights stay in `dtype` (transformers' RMSNorm already normalises in float32).
        flag: CLI flag named in errors.

    Returns:
        The truncated `transformers.LlamaModel`, in eval mode, without gradients.

    Raises:
        ModelFormatError: wrong kind of file, unknown layout, or weights not matching the architecture.
    """
    import torch
    from transformers import LlamaModel

    files = resolve_weight_files(path, "text_encoder")
    infos = read_header_infos(files)
    det = expect_kind(path, infos, "text_encoder1", flag)
    refuse_prequantized(path, infos)
    pre = det.prefix
    # Keys in canonical LlamaModel naming; the Comfy-Org extras (LM head, embedded tokenizer) are not ours.
    canon = {k[len(pre) :]: v for k, v in infos.items() if k.startswith(pre)}
    config = llama_config(canon, read_config_json(files), path)
    n_src = config.num_hidden_layers
    if n_src < 3:
        raise ModelFormatError(f"{path}: LLaMA has {n_src} layers; hidden_states[-3] needs at least 3")
    n_keep = n_src - 2
    config.num_hidden_layers = n_keep
    config.framepack_source_layers = n_src
    model = build_empty_model(LlamaModel, config)
    model.norm = torch.nn.Identity()

    def wanted(k: str) -> bool:
        m = _LAYER_RE.match(k)
        return (m is None or int(m.group(1)) < n_keep) and k != "norm.weight"

    raw = load_state_dict(files, device="cpu")
    sd = {}
    for k in list(raw):
        v = raw.pop(k)
        if not k.startswith(pre):
            continue  # lm_head.weight, tokenizer, ... of the Comfy-Org file
        k = k[len(pre) :]
        if wanted(k):
            sd[k] = v
    del raw

    def is_fp8(k: str) -> bool:
        return fp8 and k.startswith("layers.") and k.endswith("_proj.weight")

    assign_state_dict(model, sd, path=path, device=device, dtype=dtype, fp8_keys=is_fp8)
    if fp8:
        _enable_fp8_linears(model)
    return model
