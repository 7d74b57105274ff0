"""The token refiner runs on the batch's valid text tokens only, not on the 512-token zero padding.

Padded tokens are masked out of the refiner's attention and pooled mean and their outputs are dropped, so
the result is the reference's (the dit_vanilla / dit_batch2 parity tests pin it); the refiner's cost falls
from 512 tokens to the prompt's.
"""

from __future__ import annotations

import torch

from framepack_cli.models.transformer import _crop_padded_text, load_dit
from tests.conftest import MODELS, golden


def _refiner_lengths(dit) -> list[int]:
    seen: list[int] = []
    dit.context_embedder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    return seen


def test_refiner_sees_only_valid_tokens_batch1():
    t, _ = golden("unit/dit_vanilla")
    kw = {k[3:]: v for k, v in t.items() if k.startswith("in.")}
    dit = load_dit(MODELS / "dit_single.safetensors", dtype="float32")
    seen = _refiner_lengths(dit)
    with torch.no_grad():
        out = dit(**kw)
    assert kw["encoder_attention_mask"].shape[1] == 512
    assert seen == [int(kw["encoder_attention_mask"].sum())]
    torch.testing.assert_close(out, t["out.velocity"], atol=2e-5, rtol=1e-4)


def test_refiner_crops_to_the_longest_prompt_of_a_batch():
    t, _ = golden("unit/dit_batch2")
    kw = {k[3:]: v for k, v in t.items() if k.startswith("in.")}
    dit = load_dit(MODELS / "dit_single.safetensors", dtype="float32")
    seen = _refiner_lengths(dit)
    with torch.no_grad():
        out = dit(**kw)
    lens = kw["encoder_attention_mask"].sum(dim=1)
    assert int(lens.min()) < int(lens.max()) < 512
    assert seen == [int(lens.max())]
    torch.testing.assert_close(out, t["out.velocity"], atol=2e-5, rtol=1e-4)


def test_mask_that_is_not_right_padded_is_left_whole():
    text = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, False, True, False, False, False]])
    got, got_mask = _crop_padded_text(text, mask)
    assert got is text and got_mask is mask
    full = torch.ones(1, 6, dtype=torch.bool)
    assert _crop_padded_text(text, full)[0] is text
    empty = torch.zeros(1, 6, dtype=torch.bool)
    assert _crop_padded_text(text, empty)[0].shape[1] == 1
