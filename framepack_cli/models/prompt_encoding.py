"""Prompt encoding: a prompt -> the DiT's text conditioning, exactly as inference.md §3.1-3.2.

HunyuanVideo template, crop of the system prefix, LLaMA `hidden_states[-3]` zero-padded to 512 tokens with
a bool mask, CLIP-L pooler of the raw prompt; the empty-positive-prompt rule (`positive_prompt`) and the
count of tokens a prompt loses (`prompt_overflow`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from framepack_cli.models.hf_build import quiet_transformers

if TYPE_CHECKING:
    import torch
    from torch import nn

# HunyuanVideo's `dit-llm-encode-video` template (diffusers' DEFAULT_PROMPT_TEMPLATE). The numbered items
# are joined without a space after the period on purpose: the real tokenizer gives exactly 95 prefix tokens.
SYSTEM_PROMPT = (
    "Describe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:"
)
PROMPT_PREFIX = "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
PROMPT_SUFFIX = "<|eot_id|>"
DEFAULT_CROP_START = 95  # tokens of the default prefix incl. BOS; hard-coded by the reference
TEXT_LENGTH = 512  # the DiT's text context length (llama_vec is padded / cropped to this)
CLIP_LENGTH = 77


def crop_or_pad_with_mask(vec: torch.Tensor, length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad or crop a `[B, L, D]` sequence to `length` tokens and give the validity mask.

    Args:
        vec: `[B, L, D]` with every one of the L tokens valid.
        length: target length (512 for the DiT).

    Returns:
        `(vec [B, length, D], mask [B, length] bool)`: the first `min(L, length)` positions are True.
    """
    import torch

    b, n, d = vec.shape
    if n >= length:
        return vec[:, :length], torch.ones(b, length, dtype=torch.bool, device=vec.device)
    out = torch.zeros(b, length, d, dtype=vec.dtype, device=vec.device)
    out[:, :n] = vec
    mask = torch.zeros(b, length, dtype=torch.bool, device=vec.device)
    mask[:, :n] = True
    return out, mask


EMPTY_PROMPT = " "  # what an empty positive prompt is encoded as (the reference: `args.prompt if args.prompt else " "`)


def positive_prompt(prompt: str | None) -> str:
    """The text encoded for a positive (section) prompt: an empty or missing prompt becomes a single space.

    musubi-tuner encodes `" "` when `--prompt` is empty; this applies the same rule to every empty positive
    prompt (an empty section of `"0:;;;1:foo"`, a batch line with only inline options) so equal inputs give
    equal videos. Negative prompts are not passed through this: an empty negative prompt is encoded as "".
    """
    return prompt if prompt else EMPTY_PROMPT


def prompt_overflow(
    prompt: str,
    tok1: Any,
    tok2: Any,
    *,
    custom_system_prompt: str | None = None,
    max_length: int = 256,
) -> dict[str, tuple[int, int]]:
    """Tokens of `prompt` that encoding drops, per encoder: `{"LLaMA": (tokens, kept), "CLIP-L": ...}`.

    Only encoders that drop something are listed. LLaMA counts the prompt's tokens after the template
    crop, with the closing `<|eot_id|>` (at most `max_length` are kept, see `encode_llama`); CLIP-L counts
    the raw prompt's tokens with BOS and EOS (at most 77 are kept).
    """
    text, crop = llama_text_and_crop(prompt, tok1, custom_system_prompt)
    with quiet_transformers():  # "sequence length is longer than the maximum" is what we are measuring
        n_llama = len(tok1(text, truncation=False)["input_ids"]) - crop
        n_clip = len(tok2(prompt, truncation=False)["input_ids"])
    out = {}
    if n_llama > max_length:
        out["LLaMA"] = (n_llama, max_length)
    if n_clip > CLIP_LENGTH:
        out["CLIP-L"] = (n_clip, CLIP_LENGTH)
    return out


def llama_text_and_crop(prompt: str, tok1: Any, custom_system_prompt: str | None = None) -> tuple[str, int]:
    """The templated LLaMA input for `prompt` and the number of prefix tokens (incl. BOS) to crop."""
    if custom_system_prompt is None:
        return PROMPT_PREFIX.format(SYSTEM_PROMPT) + prompt + PROMPT_SUFFIX, DEFAULT_CROP_START
    prefix = PROMPT_PREFIX.format(custom_system_prompt)
    crop = len(tok1(prefix, truncation=True)["input_ids"])
    return prefix + prompt + PROMPT_SUFFIX, crop


def encode_llama(
    prompt: str,
    te1: nn.Module,
    tok1: Any,
    *,
    custom_system_prompt: str | None = None,
    max_length: int = 256,
) -> torch.Tensor:
    """LLaMA `hidden_states[-3]` of the templated prompt, cropped to the prompt tokens: `[1, L, D]`, L <= max_length.

    The templated text is tokenised to `max_length + crop_start` tokens (truncating long prompts), so up to
    `max_length` prompt tokens (including the closing `<|eot_id|>`) survive the crop.
    """
    import torch

    text, crop = llama_text_and_crop(prompt, tok1, custom_system_prompt)
    enc = tok1(
        text,
        padding="max_length",
        max_length=max_length + crop,
        truncation=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    dev = te1.embed_tokens.weight.device
    ids = enc["input_ids"].to(dev)
    mask = enc["attention_mask"].to(dev)
    with torch.no_grad():
        # `te1` is truncated after layer N-3 with an identity final norm (see load_text_encoder1), so
        # last_hidden_state is the full model's hidden_states[-3].
        hidden = te1(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    n_valid = int(mask[0].sum())
    return hidden[:, crop:n_valid]


def encode_clip(prompt: str, te2: nn.Module, tok2: Any) -> torch.Tensor:
    """CLIP-L `pooler_output` `[1, Dc]` of the raw prompt (no template), padded to 77 tokens."""
    import torch

    ids = tok2(prompt, padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt")["input_ids"]
    dev = next(te2.parameters()).device
    with torch.no_grad():
        # No attention mask, as in the reference: attention is causal and pooling takes the first EOS.
        return te2(input_ids=ids.to(dev)).pooler_output


def encode_prompt(
    prompt: str,
    te1: nn.Module,
    tok1: Any,
    te2: nn.Module,
    tok2: Any,
    *,
    custom_system_prompt: str | None = None,
    max_length: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode one prompt into the DiT's text conditioning (inference.md §3.1-3.2).

    The prompt is used as given: the generator passes positive prompts through `positive_prompt` first
    (an empty one becomes " "), negative prompts as they are.

    Args:
        prompt: the user's prompt.
        te1: from `load_text_encoder1`.
        tok1: LLaMA tokenizer from `load_tokenizers`.
        te2: from `load_text_encoder2`.
        tok2: CLIP tokenizer.
        custom_system_prompt: replaces the HunyuanVideo system prompt; the crop is then the token count of
            the custom prefix (incl. BOS) instead of 95.
        max_length: maximum number of prompt tokens kept (256 in the reference).

    Returns:
        `(llama_vec [1, 512, D], llama_mask [1, 512] bool, clip_pooler [1, Dc])` on the CPU, in the
        encoders' compute dtype.
    """
    vec = encode_llama(prompt, te1, tok1, custom_system_prompt=custom_system_prompt, max_length=max_length)
    vec, mask = crop_or_pad_with_mask(vec.cpu(), TEXT_LENGTH)
    pooler = encode_clip(prompt, te2, tok2).cpu()
    return vec, mask, pooler
