"""The step caches and the per-section memo on the golden DiT: exact where they must be, one decision per step."""

from __future__ import annotations

import pytest
import torch

from framepack_cli.engine.denoiser import TextCond, make_model_fn
from framepack_cli.models.step_cache import SectionCache, StepCache, StepCacheSettings
from framepack_cli.models.transformer import load_dit
from framepack_cli.sampling.unipc import sample_unipc
from tests.conftest import MODELS, golden

CONTEXT_KEYS = ("latent_indices", "clean_latents", "clean_latent_indices", "clean_latents_2x",
                "clean_latent_2x_indices", "clean_latents_4x", "clean_latent_4x_indices")


@pytest.fixture(scope="module")
def case():
    t, meta = golden("unit/dit_vanilla")
    inp = {k[3:]: v for k, v in t.items() if k.startswith("in.")}
    positive = TextCond(inp["encoder_hidden_states"], inp["encoder_attention_mask"].bool(), inp["pooled_projections"])
    gen = torch.Generator().manual_seed(7)
    negative = TextCond(torch.randn(positive.llama_vec.shape, generator=gen), positive.llama_mask,
                        torch.randn(positive.clip_pooler.shape, generator=gen))
    return inp, positive, negative


@pytest.fixture(scope="module")
def dit():
    return load_dit(MODELS / "dit_single.safetensors")


def model_fn(dit, inp, positive, negative, g=1.0, step_cache=None):
    return make_model_fn(dit, positive=positive, negative=negative, image_embeddings=inp["image_embeddings"],
                         guidance_scale=g, guidance_rescale=0.0, embedded_cfg_scale=inp["guidance"].item() / 1000.0,
                         context={k: inp[k] for k in CONTEXT_KEYS}, dtype=torch.float32,
                         device=torch.device("cpu"), step_cache=step_cache)


@torch.no_grad()
def test_section_memo_is_exact_and_keyed_by_the_rope_scale(case):
    """History tokens, RoPE and the SigLIP projection computed once per section give the uncached velocity bit for
    bit, on both sides of a RoPE-scaling threshold (where the spatial RoPE changes)."""
    inp, positive, _ = case
    dit = load_dit(MODELS / "dit_single.safetensors", rope_scaling_timestep_threshold=500.0)
    context = {k: inp[k] for k in CONTEXT_KEYS}
    section = SectionCache()
    fc = section.branch("pos")
    calls = {"history": 0, "proj": 0}
    real_history, real_proj = dit._embed_history, dit.image_projection.forward

    def history(*a):
        calls["history"] += 1
        return real_history(*a)

    def proj(*a):
        calls["proj"] += 1
        return real_proj(*a)

    dit._embed_history, dit.image_projection.forward = history, proj
    for sigma in (0.9, 0.3, 0.8, 0.2):
        kw = dict(hidden_states=inp["hidden_states"] * sigma, timestep=torch.tensor([sigma * 1000.0]),
                  encoder_hidden_states=positive.llama_vec, encoder_attention_mask=positive.llama_mask,
                  pooled_projections=positive.clip_pooler, guidance=inp["guidance"],
                  image_embeddings=inp["image_embeddings"], **context)
        assert torch.equal(dit(**kw, cache=fc), dit(**kw))
    assert calls == {"history": 2 + 4, "proj": 1 + 4}  # cached: one per RoPE scale / one; uncached: every call


def test_training_forward_ignores_the_cache_and_keeps_gradients(case):
    inp, positive, _ = case
    dit = load_dit(MODELS / "dit_single.safetensors")
    dit.requires_grad_(True)
    section = SectionCache(StepCache(StepCacheSettings("tea", tea_thresh=100.0), 3))
    x = inp["hidden_states"].clone().requires_grad_(True)
    out = dit(hidden_states=x, timestep=inp["timestep"], encoder_hidden_states=positive.llama_vec,
              encoder_attention_mask=positive.llama_mask, pooled_projections=positive.clip_pooler,
              guidance=inp["guidance"], image_embeddings=inp["image_embeddings"],
              cache=section.branch("pos"), **{k: inp[k] for k in CONTEXT_KEYS})
    out.square().mean().backward()
    assert section.memo == {} and section.step_cache.step == -1
    assert x.grad is not None and dit.clean_x_embedder.proj_4x.weight.grad is not None
    assert dit.image_projection.up.weight.grad is not None


SIGMAS = [1.0, 0.7, 0.4, 0.15, 0.0]


@pytest.fixture(scope="module")
def uncached(case, dit):
    inp, positive, negative = case
    with torch.no_grad():
        return sample_unipc(model_fn(dit, inp, positive, negative, g=3.0), inp["hidden_states"], SIGMAS)


@pytest.mark.parametrize("settings", [StepCacheSettings("tea", tea_thresh=0.0),
                                      StepCacheSettings("mag", mag_threshold=0.0, mag_retention=0.0)])
@torch.no_grad()
def test_threshold_zero_is_bit_identical_with_cfg(case, dit, uncached, settings):
    inp, positive, negative = case
    cache = StepCache(settings, 4)
    got = sample_unipc(model_fn(dit, inp, positive, negative, g=3.0, step_cache=cache), inp["hidden_states"],
                       SIGMAS)
    assert cache.computed == [0, 1, 2, 3]
    assert torch.equal(got, uncached)


@torch.no_grad()
def test_with_cfg_one_decision_per_sampler_step_covers_both_calls(case, dit, monkeypatch):
    """TeaCache probes the first block once per sampler step (the positive call) and both calls follow it."""
    inp, positive, negative = case
    probes, runs = [], []
    real_probe, real_blocks = dit._first_modulation, dit._run_blocks
    monkeypatch.setattr(dit, "_first_modulation", lambda *a: probes.append(1) or real_probe(*a))
    monkeypatch.setattr(dit, "_run_blocks", lambda *a: runs.append(1) or real_blocks(*a))
    steps = 6
    cache = StepCache(StepCacheSettings("tea", tea_thresh=1e9), steps)  # skips all but the first and last
    sigmas = [1.0 - i / steps for i in range(steps)] + [0.0]
    out = sample_unipc(model_fn(dit, inp, positive, negative, g=3.0, step_cache=cache), inp["hidden_states"],
                       sigmas)
    assert cache.step == steps - 1 and len(probes) == steps  # sampler steps, not model calls (12)
    assert cache.computed == [0, steps - 1] and cache.skipped == steps - 2
    assert len(runs) == 2 * len(cache.computed)  # both calls compute on exactly the computed steps
    assert set(cache.residual) == {"pos", "neg"} and not torch.equal(cache.residual["pos"], cache.residual["neg"])
    assert torch.isfinite(out).all()
