"""`--split_attn`: every batch attends sample by sample, with the same result as the batched attention."""

from __future__ import annotations

import pytest
import torch

from framepack_cli.models.transformer import load_dit
from tests.conftest import MODELS, golden


@pytest.fixture(scope="module")
def dit():
    return load_dit(MODELS / "dit_single.safetensors")


def _inputs(tensors: dict) -> dict:
    return {k[3:]: v for k, v in tensors.items() if k.startswith("in.")}


def _count_kernel_batches(model) -> list[int]:
    """Record the batch size of every dense attention call of the blocks."""
    seen: list[int] = []
    fn = model._attn_processor.attention_fn

    def counting(q, k, v):
        seen.append(q.shape[0])
        return fn(q, k, v)

    model._attn_processor.attention_fn = counting
    return seen


@torch.no_grad()
def test_split_attn_equals_batched_attention_for_equal_lengths(dit):
    tensors, _ = golden("unit/dit_vanilla")
    one = _inputs(tensors)
    kwargs = {k: torch.cat([v, v]) for k, v in one.items()}
    kwargs["hidden_states"] = torch.cat([one["hidden_states"], one["hidden_states"].flip(-1)])  # two samples
    fn = dit._attn_processor.attention_fn
    try:
        seen = _count_kernel_batches(dit)
        batched = dit(**kwargs)
        assert set(seen) == {2}  # equal text lengths: one batched call per block by default
        seen.clear()
        dit.split_attn = True
        split = dit(**kwargs)
        n_blocks = len(dit.transformer_blocks) + len(dit.single_transformer_blocks)
        assert seen == [1] * (2 * n_blocks)  # with --split_attn: one call per sample and block
    finally:
        dit.split_attn = False
        dit._attn_processor.attention_fn = fn
    torch.testing.assert_close(split, batched, atol=2e-5, rtol=1e-4)
    # and each sample equals its own batch-1 call
    torch.testing.assert_close(split[1:], dit(**{k: v[1:] for k, v in kwargs.items()}), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_split_attn_with_different_text_lengths_matches_the_reference_golden(dit):
    tensors, meta = golden("unit/dit_batch2")
    assert meta["split_attn"] is True  # the reference ran this batch with split_attn
    try:
        dit.split_attn = True
        out = dit(**_inputs(tensors))
    finally:
        dit.split_attn = False
    torch.testing.assert_close(out, tensors["out.velocity"], atol=2e-5, rtol=1e-4)


def test_load_dit_sets_split_attn():
    assert load_dit(MODELS / "dit_single.safetensors", split_attn=True).split_attn is True
