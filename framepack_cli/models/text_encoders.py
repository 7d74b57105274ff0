"""The text-encoder API in one import: LLaMA-3 (text_encoder1), CLIP-L (text_encoder2), their tokenizers and
prompt encoding.

A facade only; each concept lives in its own module:

* `framepack_cli.models.llama`: `load_text_encoder1` (truncated LLaMA, `--fp8_llm`), `llama_config`.
* `framepack_cli.models.clip_text`: `load_text_encoder2` (CLIP-L text model), `clip_text_config`.
* `framepack_cli.models.tokenizers`: `find_tokenizer_dir`, `load_tokenizers` (offline, HF cache lookup).
* `framepack_cli.models.prompt_encoding`: the template and crop, `positive_prompt` / `EMPTY_PROMPT`,
  `prompt_overflow`, `encode_llama` / `encode_clip` / `encode_prompt`, `crop_or_pad_with_mask`.
* `framepack_cli.models.hf_build`: building transformers models on the meta device and assigning
  checkpoints (`build_empty_model`, `assign_state_dict`, `resolve_weight_files`, ...), shared with the
  image encoder.
"""

from __future__ import annotations

from framepack_cli.models.clip_text import CLIP_HEAD_DIM, CLIP_LN_EPS, clip_text_config, load_text_encoder2
from framepack_cli.models.hf_build import (
    assign_state_dict,
    build_empty_model,
    load_hf_encoder,
    resolve_weight_files,
)
from framepack_cli.models.llama import (
    LLAMA_HEAD_DIM,
    LLAMA_MAX_POSITIONS,
    LLAMA_RMS_EPS,
    LLAMA_ROPE_THETA,
    llama_config,
    load_text_encoder1,
)
from framepack_cli.models.prompt_encoding import (
    CLIP_LENGTH,
    DEFAULT_CROP_START,
    EMPTY_PROMPT,
    PROMPT_PREFIX,
    PROMPT_SUFFIX,
    SYSTEM_PROMPT,
    TEXT_LENGTH,
    crop_or_pad_with_mask,
    encode_clip,
    encode_llama,
    encode_prompt,
    llama_text_and_crop,
    positive_prompt,
    prompt_overflow,
)
from framepack_cli.models.tokenizers import HF_REPO, find_tokenizer_dir, load_tokenizers

__all__ = [
    "CLIP_HEAD_DIM",
    "CLIP_LENGTH",
    "CLIP_LN_EPS",
    "DEFAULT_CROP_START",
    "EMPTY_PROMPT",
    "HF_REPO",
    "LLAMA_HEAD_DIM",
    "LLAMA_MAX_POSITIONS",
    "LLAMA_RMS_EPS",
    "LLAMA_ROPE_THETA",
    "PROMPT_PREFIX",
    "PROMPT_SUFFIX",
    "SYSTEM_PROMPT",
    "TEXT_LENGTH",
    "assign_state_dict",
    "build_empty_model",
    "clip_text_config",
    "crop_or_pad_with_mask",
    "encode_clip",
    "encode_llama",
    "encode_prompt",
    "find_tokenizer_dir",
    "llama_config",
    "llama_text_and_crop",
    "load_hf_encoder",
    "load_text_encoder1",
    "load_text_encoder2",
    "load_tokenizers",
    "positive_prompt",
    "prompt_overflow",
    "resolve_weight_files",
]
