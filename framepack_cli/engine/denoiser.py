"""Adapt the DiT to the sampler contract `model_fn(x, sigma) -> x0` (the reference's flow-matching wrapper).

One `SectionCache` per section (`framepack_cli.models.step_cache`): the step-invariant work of the DiT forward
(history tokens, RoPE tables, SigLIP projection) runs once per section, and an optional step cache (TeaCache /
MagCache) decides once per sampler step whether the block stack runs, for both CFG calls; the positive and
negative calls keep separate residuals.

Per call: the DiT predicts the flow velocity v (~ noise - x0) at timestep sigma*1000 with the distilled
guidance embedded_cfg_scale*1000; real CFG (guidance_scale != 1) runs a second, negative call; optional
CFG rescale; then x0 = x - v*sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextCond:
    """Text conditioning of one prompt, ready for the DiT (device and dtype set)."""

    llama_vec: torch.Tensor  # [1, 512, D]
    llama_mask: torch.Tensor  # [1, 512] bool
    clip_pooler: torch.Tensor  # [1, Dc]


def make_model_fn(
    dit,
    *,
    positive: TextCond,
    negative: TextCond | None,
    image_embeddings: torch.Tensor,
    guidance_scale: float,
    guidance_rescale: float,
    embedded_cfg_scale: float,
    context: dict,
    dtype: torch.dtype,
    device: torch.device,
    step_cache=None,
):
    """Build `model_fn(x, sigma) -> x0` for one section (called once per sampler step).

    Args:
        dit: the loaded `FramePackTransformer`.
        positive / negative: text conditioning (negative only used when guidance_scale != 1).
        image_embeddings: SigLIP last_hidden_state of the section's image, `[1, N, Ds]`.
        context: the section's indices and clean latents (keyword arguments of the DiT forward).
        dtype / device: the DiT's compute dtype and device.
        step_cache: this section's `StepCache` (TeaCache / MagCache), or None.
    """
    from framepack_cli.models.step_cache import SectionCache

    section = SectionCache(step_cache)
    pos_cache, neg_cache = section.branch("pos"), section.branch("neg")
    guidance = torch.tensor([embedded_cfg_scale * 1000.0], dtype=torch.float32, device=device)
    ctx = {k: (v.to(device=device, dtype=dtype) if v is not None and v.is_floating_point() else
               (v.to(device) if v is not None else None)) for k, v in context.items()}
    img = image_embeddings.to(device=device, dtype=dtype)

    def call(x: torch.Tensor, sigma: float, cond: TextCond, cache) -> torch.Tensor:
        timestep = torch.tensor([sigma], dtype=torch.float32, device=device) * 1000.0
        return dit(
            hidden_states=x, timestep=timestep, encoder_hidden_states=cond.llama_vec,
            encoder_attention_mask=cond.llama_mask, pooled_projections=cond.clip_pooler, guidance=guidance,
            image_embeddings=img, cache=cache, **ctx,
        ).float()

    def model_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if step_cache is not None:
            step_cache.begin_step()  # one sampler step: its decision covers both CFG calls
        xd = x.to(device=device, dtype=dtype)
        v = call(xd, sigma, positive, pos_cache)
        if guidance_scale != 1.0:
            v_pos = v
            v_neg = call(xd, sigma, negative, neg_cache)
            v = v_neg + guidance_scale * (v_pos - v_neg)
            if guidance_rescale != 0.0:
                dims = list(range(1, v.ndim))
                std_pos = v_pos.std(dim=dims, keepdim=True)
                std_cfg = v.std(dim=dims, keepdim=True)
                v = guidance_rescale * (v * std_pos / std_cfg) + (1.0 - guidance_rescale) * v
        # The reference uses the dtype-rounded x here (x_bf16.float() - v*sigma).
        return (xd.float() - v * sigma).to(x.device)

    return model_fn


def to_device(c: TextCond, device, dtype) -> TextCond:
    """The conditioning on the DiT's device, vectors in its dtype (the mask stays bool)."""
    return TextCond(c.llama_vec.to(device, dtype), c.llama_mask.to(device), c.clip_pooler.to(device, dtype))
