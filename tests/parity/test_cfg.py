"""Real CFG (`--guidance_scale` != 1, `--guidance_rescale`) on the golden DiT, checked against the reference formula.

The reference's flow-matching wrapper (musubi-tuner `frame_pack/wrapper.py`) computes, per sampler call:
    cfg = neg + g * (pos - neg)
    rescaled = cfg * std(pos) / std(cfg)        (std over every axis but the batch)
    pred = r * rescaled + (1 - r) * cfg         (r = guidance_rescale; r = 0 leaves cfg as it is)
    x0 = x - pred * sigma
The two velocities come from the golden DiT (whose positive output is itself checked against the golden).
"""

from __future__ import annotations

import pytest
import torch

from framepack_cli.engine.denoiser import TextCond, make_model_fn
from framepack_cli.models.transformer import load_dit
from tests.conftest import MODELS, golden

CONTEXT_KEYS = ("latent_indices", "clean_latents", "clean_latent_indices", "clean_latents_2x",
                "clean_latent_2x_indices", "clean_latents_4x", "clean_latent_4x_indices")


def _reference_x0(pos, neg, x, sigma, g, r):
    cfg = neg + g * (pos - neg)
    if r != 0:
        dims = list(range(1, pos.ndim))
        rescaled = cfg * (pos.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True))
        cfg = r * rescaled + (1.0 - r) * cfg
    return x.float() - cfg.float() * sigma


@pytest.mark.parametrize(("g", "r"), [(1.0, 0.0), (3.0, 0.0), (3.0, 0.7), (6.5, 1.0)])
@torch.no_grad()
def test_cfg_matches_the_reference_formula(g, r):
    t, meta = golden("unit/dit_vanilla")
    inp = {k[3:]: v for k, v in t.items() if k.startswith("in.")}
    dit = load_dit(MODELS / "dit_single.safetensors")
    positive = TextCond(inp["encoder_hidden_states"], inp["encoder_attention_mask"].bool(), inp["pooled_projections"])
    gen = torch.Generator().manual_seed(7)
    negative = TextCond(torch.randn(positive.llama_vec.shape, generator=gen), positive.llama_mask,
                        torch.randn(positive.clip_pooler.shape, generator=gen))
    context = {k: inp[k] for k in CONTEXT_KEYS}
    sigma = meta["timestep"] / 1000.0
    guidance = inp["guidance"].item() / 1000.0
    model_fn = make_model_fn(dit, positive=positive, negative=negative, image_embeddings=inp["image_embeddings"],
                             guidance_scale=g, guidance_rescale=r, embedded_cfg_scale=guidance, context=context,
                             dtype=torch.float32, device=torch.device("cpu"))
    x = inp["hidden_states"]

    def velocity(cond: TextCond) -> torch.Tensor:
        return dit(hidden_states=x, timestep=inp["timestep"], encoder_hidden_states=cond.llama_vec,
                   encoder_attention_mask=cond.llama_mask, pooled_projections=cond.clip_pooler,
                   guidance=inp["guidance"], image_embeddings=inp["image_embeddings"], **context).float()

    pos = velocity(positive)
    torch.testing.assert_close(pos, t["out.velocity"], atol=2e-5, rtol=1e-4)  # the positive branch is the golden's
    neg = velocity(negative)
    assert not torch.allclose(pos, neg, atol=1e-2)  # a negative that differs, so the formula is exercised
    expected = _reference_x0(pos, neg, x, sigma, g, r)
    torch.testing.assert_close(model_fn(x, sigma), expected, atol=1e-5, rtol=1e-5)
