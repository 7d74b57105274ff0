"""`--decode stream` at the VAE level: time chunks without overlap, each causal conv carrying its last input
frames and the mid-block attention its keys / values, so the only difference from one whole-sequence decode is
the per-chunk GroupNorm statistics."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from framepack_cli.models.vae import load_vae, vae_decode, vae_decode_stream
from framepack_cli.plan.sections import decode_chunks, stream_chunks
from tests.conftest import GOLDEN, MODELS


@pytest.fixture(scope="module")
def vae():
    return load_vae(MODELS / "vae.safetensors")


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    """The golden 3-section latent the tiny DiT generated (28 latents at 48x64), as [1, C, T, h, w]."""
    return load_file(str(GOLDEN / "e2e" / "vanilla_sections.safetensors"))["latent"].unsqueeze(0)


def stream(vae, z, bounds):
    return torch.cat(list(vae_decode_stream(vae, z, bounds)), dim=2)


def test_stream_chunks_layout():
    assert stream_chunks(46, 9) == [(0, 19), (19, 37), (37, 46)]  # 5 sections: 2W+1, then 2W latents
    assert stream_chunks(19, 9) == [(0, 19)]
    assert stream_chunks(5, 9) == [(0, 5)]
    assert stream_chunks(10, 2, chunk=3) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 10)]
    for t, w in [(1, 9), (28, 9), (91, 9), (13, 3)]:
        bounds = stream_chunks(t, w)
        assert bounds[0][0] == 0 and bounds[-1][1] == t
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        # never a larger chunk than the blended decode's largest
        assert max(b - a for a, b in bounds) <= max(b - a for a, b in decode_chunks(t, w))
    with pytest.raises(ValueError, match="at least 2 latents"):
        stream_chunks(10, 9, chunk=1)


def test_single_chunk_equals_bulk_exactly(vae, latent):
    bulk = vae_decode(vae, latent)
    assert torch.equal(stream(vae, latent, [(0, latent.shape[2])]), bulk)
    # a chunk as long as the whole sequence: the same single chunk
    assert stream_chunks(latent.shape[2], 9, chunk=latent.shape[2]) == [(0, latent.shape[2])]


def test_frame_counts_per_chunk(vae, latent):
    sizes = [p.shape[2] for p in vae_decode_stream(vae, latent[:, :, :12], [(0, 5), (5, 6), (6, 12)])]
    assert sizes == [4 * 4 + 1, 4, 4 * 6]  # first chunk 4(b-1)+1, the others 4(b-a): 4(T-1)+1 in all


def _without_groupnorm(vae):
    """The same decoder with every GroupNorm replaced by the identity (statistics then cannot differ per chunk)."""
    for module in list(vae.model.decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, name, torch.nn.Identity())
    for attn in vae.model.decoder.mid_block.attentions:
        attn.group_norm = None
    return vae


def test_without_groupnorm_every_chunking_equals_bulk():
    # With per-frame normalisation the chunked decode must be the whole-sequence decode: this checks the carried
    # conv frames, the time upsamplers (first frame only at the sequence start) and the attention's keys/values.
    v = _without_groupnorm(load_vae(MODELS / "vae.safetensors"))
    z = torch.randn(1, 16, 11, 6, 8, generator=torch.Generator().manual_seed(0))
    bulk = vae_decode(v, z)
    for bounds in ([(0, 5), (5, 11)], [(0, 1), (1, 2), (2, 11)], [(0, 2), (2, 3), (3, 4), (4, 9), (9, 11)]):
        torch.testing.assert_close(stream(v, z, bounds), bulk, atol=1e-4, rtol=1e-4)  # float noise: values up to ~20


def test_without_groupnorm_with_width_chunks_and_tiles():
    v = _without_groupnorm(load_vae(MODELS / "vae.safetensors", chunk_size=16))
    z = torch.randn(1, 16, 7, 6, 12, generator=torch.Generator().manual_seed(1))
    bulk = vae_decode(v, z)
    torch.testing.assert_close(stream(v, z, [(0, 3), (3, 7)]), bulk, atol=1e-4, rtol=1e-4)
    assert sum(getattr(m, "chunked_calls", 0) for m in v.model.modules()) > 0
    # spatial tiles: one carried state per tile, so a tiled stream equals the tiled whole-sequence decode
    t = _without_groupnorm(load_vae(MODELS / "vae.safetensors", spatial_tile_sample_min_size=64))
    tiled = vae_decode(t, z)
    torch.testing.assert_close(stream(t, z, [(0, 3), (3, 4), (4, 7)]), tiled, atol=1e-4, rtol=1e-4)


def test_modules_restored_after_stream_and_after_an_abort(vae, latent):
    before = {name: type(m) for name, m in vae.model.named_modules()}
    stream(vae, latent[:, :, :6], [(0, 3), (3, 6)])
    gen = vae_decode_stream(vae, latent[:, :, :6], [(0, 3), (3, 6)])
    next(gen)
    gen.close()  # a writer failed after the first chunk
    assert {name: type(m) for name, m in vae.model.named_modules()} == before
    assert not any(hasattr(m, "_stream") for m in vae.model.modules())
    torch.testing.assert_close(vae_decode(vae, latent[:, :, :6]), vae_decode(vae, latent[:, :, :6]))


def test_bad_bounds_refused(vae, latent):
    for bounds in ([], [(0, 3)], [(0, 3), (4, 6)], [(1, 6)], [(0, 0), (0, 6)]):
        with pytest.raises(ValueError, match="do not cover"):
            next(vae_decode_stream(vae, latent[:, :, :6], bounds))


def test_decode_to_stream_writes_each_chunk_as_it_finishes(vae, latent):
    from framepack_cli.engine.writing import decode_to

    events: list = []

    class Sink:
        def start_items(self, total, label):
            events.append(("start", total, label))

        def advance(self, n=1):
            events.append(("advance", n))

        def end_items(self):
            events.append(("end",))

        def message(self, text):
            pass

    class Writer:
        def write(self, frames):
            events.append(("frames", frames.shape[0]))

    def load():
        events.append(("load",))
        return vae

    decode_to([Writer()], load, latent[0, :, :5], 1, mode="stream", sink=Sink())  # W = 1: chunks of 3, then 2
    assert events == [("start", 5, "decode"), ("load",), ("frames", 9), ("advance", 3), ("frames", 8),
                      ("advance", 2), ("end",)]
