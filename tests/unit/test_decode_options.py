"""`--decode` in the options, the memory estimate and the out-of-memory advice (no torch model, numbers only)."""

from __future__ import annotations

import torch

from framepack_cli.engine import memory_plan as mp
from framepack_cli.engine.precision import resolve_precision
from framepack_cli.engine.resources import BULK_FIX, advice, request_phases
from framepack_cli.options.base import DEFAULT_DECODE, decode_conflict, decode_mode
from tests.unit.test_precision_resources import REAL, gen_opts

CUDA = torch.device("cuda")


def test_decode_mode_and_conflicts():
    class Opts:
        bulk_decode, decode = False, None

    o = Opts()
    assert decode_mode(o) == DEFAULT_DECODE
    o.decode = "stream"
    assert decode_mode(o) == "stream"
    o.bulk_decode, o.decode = True, None
    assert decode_mode(o) == "bulk"
    assert decode_conflict(None, True) is None and decode_conflict("bulk", True) is None
    assert decode_conflict("stream", False) is None
    assert decode_conflict("blend", True) == ("--bulk_decode is --decode bulk, but --decode blend was given too; "
                                              "keep one of them (--decode blend or --bulk_decode)")


def test_memory_plan_decode_chunk_per_mode():
    kw = {"sections": 5}
    bulk_frames = 4 * 45 + 1
    assert mp.Request(640, 640, 9, decode="bulk", **kw).decode_frames == bulk_frames
    assert mp.Request(640, 640, 9, bulk_decode=True, **kw).decode_frames == bulk_frames
    # stream decodes at most 2W + 1 latents at a time, as blend does
    assert mp.Request(640, 640, 9, decode="stream", **kw).decode_frames == 73
    assert mp.Request(640, 640, 9, decode="blend", **kw).decode_frames == 73
    # ... and keeps the mid-block keys / values of every latent frame: 2 * 46 * 80 * 80 * 512 elements
    stream = mp.Request(640, 640, 9, decode="stream", **kw)
    assert stream.stream_kv_elements == 2 * 46 * 80 * 80 * 512
    assert mp.Request(640, 640, 9, decode="blend", **kw).stream_kv_elements == 0
    assert mp.Request(640, 640, 9, decode="stream", one_frame=True).stream_kv_elements == 0
    blend = mp.Request(640, 640, 9, decode="blend", **kw)
    assert mp.vae_need(0, stream, 2, None, None) - mp.vae_need(0, blend, 2, None, None) == 2 * 46 * 80 * 80 * 512 * 2


def test_oom_advice_names_decode_stream_for_bulk(tmp_path):
    for given in ({"bulk_decode": True}, {"decode": "bulk"}):
        o = gen_opts(tmp_path, **given)
        assert advice("decode", CUDA, o).startswith(BULK_FIX + ", --vae_chunk_size 32")
        (dec,) = [p for p in request_phases(o, REAL, resolve_precision(CUDA), 5, cuda=True) if p.name == "VAE decode"]
        assert dec.fix.startswith(BULK_FIX) and "181 decoded frames" in dec.detail
    o = gen_opts(tmp_path, decode="stream")
    assert advice("decode", CUDA, o).startswith("--vae_chunk_size 32")
    (dec,) = [p for p in request_phases(o, REAL, resolve_precision(CUDA), 5, cuda=True) if p.name == "VAE decode"]
    assert "73 decoded frames" in dec.detail


def test_stream_chunk_from_free_memory():
    GiB = mp.GiB
    # no GPU, or a latent within one default chunk: the default 2W + 1
    assert mp.stream_chunk_latents(46, 9, 640, 640, 2, None) == 19
    assert mp.stream_chunk_latents(10, 9, 640, 640, 2, 80 * GiB) == 10
    # plenty free: the whole latent at once (the bulk decode); little free: never below the default
    assert mp.stream_chunk_latents(46, 9, 640, 640, 2, 140 * GiB) == 46
    assert mp.stream_chunk_latents(46, 9, 640, 640, 2, 4 * GiB) == 19
    mid = mp.stream_chunk_latents(46, 9, 640, 640, 2, 80 * GiB)
    assert 19 < mid < 46
    # the chunk chosen fits the estimate, one more latent would not
    req = mp.Request(640, 640, 9, sections=5, decode="stream")
    per_frame = 640 * 640 * mp.VAE_CHANNELS * 2 * mp.VAE_K_PLAIN + 3 * 640 * 640 * 6
    need = (4 * (mid - 1) + 1) * per_frame + req.stream_kv_elements * 2
    assert need <= mp.usable(80 * GiB) < need + 4 * per_frame
    # width chunking and tiles lower the per-frame need, so the chunk grows
    assert mp.stream_chunk_latents(46, 9, 640, 640, 2, 80 * GiB, chunk=32, tile=256) > mid
