"""The auto-memory planner (engine/memory_plan.py) over a table of GPUs x resolutions with the real model's sizes
(read from the real architecture: diffusers' module trees on the meta device), and its wiring into the options
(engine/memory_auto.py) with injected free-VRAM numbers (no GPU here)."""

from __future__ import annotations

import pytest
import torch

from framepack_cli.engine import memory_plan as mp
from framepack_cli.errors import ResourceError
from tests.fullwidth_dit import real_infos

GPUS = (8, 12, 16, 24, 48, 80)
SIZES = ((416, 960), (640, 640), (768, 768))


@pytest.fixture(scope="module")
def real():
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo()  # its defaults are the HunyuanVideo VAE FramePack uses
    return mp.dit_size(real_infos()), sum(p.numel() for p in vae.parameters()) * 2


def free(gb: float) -> int:
    return int((gb - 0.3) * mp.GiB)  # a card of `gb` GiB with a desktop on it


def plan(real, gb, h, w, **kw):
    size, vae = real
    kw.setdefault("total_ram", 64 * mp.GiB)
    return mp.plan_memory(size, mp.Request(h, w, 9, sections=5), free_vram=free(gb), vae=vae, **kw)


def test_real_model_sizes_are_the_reference_counts(real):
    size, vae = real
    assert (size.double, size.single, size.hidden) == (20, 40, 3072)
    assert size.double_block.params == 339_831_296 and size.single_block.params == 141_591_808
    assert size.params == 12_874_314_816
    # fp8 targets: 12 linears per dual block and 5 per single block, 440 in all, about 9.06 B parameters
    assert 20 * size.double_block.fp8 + 40 * size.single_block.fp8 == pytest.approx(9.06e9, rel=0.01)
    assert size.nbytes(2) / 1e9 == pytest.approx(25.75, abs=0.01)
    assert size.nbytes(2, "fp8_scaled") / 1e9 == pytest.approx(17.0, abs=0.1)


@pytest.mark.parametrize("h,w", SIZES)
def test_table_fits_and_is_monotonic_in_vram(real, h, w):
    size, _ = real
    previous = None
    for gb in GPUS:
        p = plan(real, gb, h, w)
        assert p.fits, f"{gb} GB {h}x{w}"
        # never a choice the estimate says does not fit
        assert p.dit_bytes <= mp.usable(free(gb)) and p.vae_bytes <= mp.usable(free(gb))
        need = mp.dit_need(size, mp.Request(h, w, 9, sections=5), 2, p.fp8, p.blocks_to_swap)[0]
        assert need == p.dit_bytes
        rank = (p.fp8 is not None, p.blocks_to_swap if p.fp8 else 0, p.blocks_to_swap)
        if previous is not None:
            # more VRAM: never fp8 where less VRAM ran without it, never more swapped blocks at the same precision
            assert (p.fp8 is not None) <= (previous[0] is not None)
            if p.fp8 == previous[0]:
                assert p.blocks_to_swap <= previous[1]
        previous = (p.fp8, p.blocks_to_swap)
        assert rank


def test_table_choices(real):
    """What each GPU gets at 640x640 (these are README's memory table)."""
    got = {gb: plan(real, gb, 640, 640) for gb in GPUS}
    assert [(p.fp8, p.blocks_to_swap > 0) for p in got.values()] == [
        ("fp8_scaled", True), ("fp8_scaled", True), ("fp8_scaled", True), (None, True), (None, False), (None, False)]
    assert got[8].blocks_to_swap > got[12].blocks_to_swap > got[16].blocks_to_swap
    assert got[80].settings() == "bfloat16 DiT" and got[80].vae_chunk_size is None
    assert got[8].vae_tile is not None  # small GPUs decode in tiles


def test_bigger_requests_need_at_least_as_much(real):
    for gb in (8, 12, 16, 24):
        swaps = [(plan(real, gb, h, w).fp8 is not None, plan(real, gb, h, w).blocks_to_swap)
                 for h, w in ((320, 320), (640, 640), (768, 768))]
        assert swaps == sorted(swaps)


def test_cannot_fit_even_with_everything_on(real):
    p = plan(real, 5, 768, 768)
    assert not p.fits
    assert p.fp8 == "fp8_scaled" and p.blocks_to_swap == mp.MAX_SWAP and p.vae_tile == 64
    err = p.error("cuda:0")
    assert isinstance(err, ResourceError) and err.exit_code == 3 and "\n" not in err.message
    assert err.message.startswith("not enough GPU memory at 768x768: even with --fp8_scaled --blocks_to_swap 38 "
                                  "--vae_chunk_size 32 --vae_spatial_tile_sample_min_size 64, sampling needs about")
    assert err.message.endswith("cuda:0 has 4.7 GiB free")
    assert p.smaller is not None and p.smaller[0] < 768 and p.smaller[0] % 16 == 0
    assert err.hint == (f"--video_size {p.smaller[0]} {p.smaller[1]} would fit, a smaller --latent_window_size, "
                        "free GPU memory (other processes) or a larger GPU")
    assert plan(real, 5, *p.smaller).fits
    # too small for the weights alone: no size helps
    p = plan(real, 3, 768, 768)
    assert not p.fits and p.smaller is None
    assert p.error().hint.startswith("a smaller --video_size, a smaller --latent_window_size")


def test_what_the_build_cannot_do_is_never_chosen(real):
    p = plan(real, 24, 640, 640, can_fp8=False, max_swap=0)
    assert not p.fits and p.fp8 is None and p.blocks_to_swap == 0
    p = plan(real, 16, 640, 640, can_fp8=False)
    assert p.fits and p.fp8 is None and p.blocks_to_swap > 20  # without fp8 the half-swapped rule is lifted
    p = plan(real, 48, 640, 640, can_fp8=False, max_swap=0)
    assert p.fits and p.settings() == "bfloat16 DiT"


def test_fixed_settings_are_kept(real):
    p = plan(real, 16, 640, 640, fixed=mp.Fixed(blocks_to_swap=30))
    assert p.blocks_to_swap == 30 and p.fp8 is None  # the user swaps that much: bf16 fits, no fp8 needed
    p = plan(real, 16, 640, 640, fixed=mp.Fixed(blocks_to_swap=2))
    assert p.blocks_to_swap == 2 and p.fp8 == "fp8_scaled"
    p = plan(real, 24, 640, 640, fixed=mp.Fixed(fp8="fp8_scaled"))
    assert p.fp8 == "fp8_scaled" and p.blocks_to_swap == 0
    p = plan(real, 80, 640, 640, fixed=mp.Fixed(vae=(16, None)))
    assert (p.vae_chunk_size, p.vae_tile) == (16, None)


def test_ram_limits_swapping(real):
    """Swapped blocks live in RAM: with 16 GiB of RAM a bf16 model cannot be swapped, fp8_scaled is chosen."""
    p = plan(real, 24, 640, 640, total_ram=16 * mp.GiB)
    assert not p.fits or p.fp8 == "fp8_scaled"
    p = plan(real, 24, 640, 640, total_ram=32 * mp.GiB)
    assert p.fits and p.fp8 is None


def test_swap_split_is_the_references():
    assert mp.swap_split(0, 20, 40) == (0, 0)
    assert mp.swap_split(10, 20, 40) == (5, 11)
    assert mp.swap_split(20, 20, 40) == (10, 21)
    assert mp.swap_split(38, 20, 40) == (19, 39)
    assert mp.swap_split(38, 1, 1) == (0, 0)  # a tiny model keeps one block of each list


def test_tokens_follow_the_section_layout():
    r = mp.Request(640, 640, 9)
    assert r.tokens == 40 * 40 * 9 + int(1600 * 2.75) + 1241
    assert mp.Request(640, 640, 9, one_frame=True, clean_images=2).tokens == int(1600 * 3.75) + 1241
    assert r.decode_frames == 4 * 9 + 1 and mp.Request(640, 640, 9, sections=5).decode_frames == 73
    assert mp.Request(640, 640, 9, sections=5, bulk_decode=True).decode_frames == 4 * 45 + 1
    assert mp.Request(640, 640, 9, one_frame=True).decode_frames == 1


# ---------------------------------------------------------------------------------------------------------------
# wiring: the options a run continues with


class Sink:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def _opts(**kw):
    from framepack_cli.options.generate import GenerateOptions
    from tests.conftest import MODEL_ARGS

    models = {MODEL_ARGS[i].lstrip("-"): str(MODEL_ARGS[i + 1]) for i in range(0, len(MODEL_ARGS), 2)}
    return GenerateOptions(**{"save_path": "/tmp/fp-mem-test", **models, **kw})


@pytest.fixture
def found():
    from framepack_cli.models.tensor_info import TensorInfo

    vae = {"decoder.conv_in.weight": TensorInfo("F32", (512, 16, 3, 3, 3)),
           "decoder.x.weight": TensorInfo("F32", (246_000_000,))}
    return {"dit": ("dit.safetensors", real_infos(), ""), "vae": ("vae.safetensors", vae, "")}


def _apply(opts, found, gb, device="cuda", monkeypatch=None):
    from framepack_cli.engine import memory_auto
    from framepack_cli.engine.precision import precision_for

    sink = Sink()
    dev = torch.device(device)
    precision = precision_for(opts, dev)
    out = memory_auto.apply_memory_plan(opts, found, precision, dev, sink, 5, free_vram=free(gb),
                                        total_ram=64 * mp.GiB)
    return out, sink.lines


MODELS = {"prompt": "a", "video_size": (640, 640)}


def test_auto_is_the_default_on_cuda_and_sets_the_options(found, monkeypatch):
    opts, lines = _apply(_opts(**MODELS), found, 12, monkeypatch=monkeypatch)
    assert opts.fp8_scaled and not opts.fp8 and opts.blocks_to_swap > 0 and opts.vae_chunk_size == 32
    assert len(lines) == 1 and lines[0].startswith(f"Memory: auto chose --fp8_scaled --blocks_to_swap "
                                                   f"{opts.blocks_to_swap} --vae_chunk_size 32")


def test_explicit_flags_win(found, monkeypatch):
    opts, lines = _apply(_opts(**MODELS, blocks_to_swap=30, vae_chunk_size=16, vae_tiling=True), found, 12,
                         monkeypatch=monkeypatch)
    assert opts.blocks_to_swap == 30 and opts.vae_chunk_size == 16 and opts.vae_spatial_tile_sample_min_size is None
    assert not opts.fp8_scaled  # with 30 blocks swapped the bf16 model fits
    assert lines[0].startswith("Memory: auto chose bfloat16 DiT --blocks_to_swap 30 --vae_chunk_size 16 ")
    assert lines[0].endswith("kept as given: --blocks_to_swap 30, --vae_chunk_size 16, --vae_tiling)")
    # a given setting the estimate says does not fit is kept, with one warning line
    opts, lines = _apply(_opts(**MODELS, vae_chunk_size=16), found, 12, monkeypatch=monkeypatch)
    assert opts.vae_chunk_size == 16 and len(lines) == 1
    assert lines[0].startswith("Warning: not enough GPU memory at 640x640: even with --fp8_scaled")
    assert lines[0].endswith("(running anyway with the flags as given)")


def test_memory_none_keeps_the_flags_and_swap_auto_still_plans(found, monkeypatch):
    opts, lines = _apply(_opts(**MODELS, memory="none"), found, 12, monkeypatch=monkeypatch)
    assert (opts.fp8_scaled, opts.blocks_to_swap, lines) == (False, 0, [])
    opts, lines = _apply(_opts(**MODELS, memory="none", blocks_to_swap="auto", fp8_scaled=True), found, 12,
                         monkeypatch=monkeypatch)
    assert opts.fp8_scaled and isinstance(opts.blocks_to_swap, int) and opts.blocks_to_swap > 0 and len(lines) == 1


def test_cannot_fit_is_exit_3_before_loading(found, monkeypatch):
    with pytest.raises(ResourceError) as e:
        _apply(_opts(**MODELS), found, 3, monkeypatch=monkeypatch)
    assert e.value.exit_code == 3 and e.value.message.startswith("not enough GPU memory at 640x640: even with")


def test_every_lever_is_built_so_small_gpus_get_fp8_and_swap(found):
    """fp8_scaled and block swap are built: on an 8 GB card the plan uses both (no stand-in for the probe)."""
    out, lines = _apply(_opts(**MODELS), found, 8)
    assert out.fp8_scaled and out.blocks_to_swap > 0
    assert lines[0].startswith("Memory: auto chose --fp8_scaled --blocks_to_swap")


def test_cpu_does_nothing_and_says_so_only_when_asked(found, monkeypatch):
    opts = _opts(**MODELS)
    assert _apply(opts, found, 80, device="cpu", monkeypatch=monkeypatch) == (opts, [])
    _, lines = _apply(_opts(**MODELS, memory="auto"), found, 80, device="cpu", monkeypatch=monkeypatch)
    assert lines == ["Memory: --memory auto does nothing on cpu (every model runs in RAM; nothing to plan)"]
    out, lines = _apply(_opts(**MODELS, blocks_to_swap="auto"), found, 80, device="cpu", monkeypatch=monkeypatch)
    assert out.blocks_to_swap == 0
    assert lines == ["Memory: --blocks_to_swap auto does nothing on cpu (every model runs in RAM; nothing to plan)"]


def test_budget_counts_fp8_and_swap_weights(found):
    """The up-front check (resources.request_phases) sees the planned fp8 / swap weights, not the bf16 size."""
    from framepack_cli.engine.precision import precision_for
    from framepack_cli.engine.resources import model_sizes, request_phases

    dev = torch.device("cuda")
    opts = _opts(**MODELS)
    precision = precision_for(opts, dev)
    sizes = model_sizes({"dit": found["dit"]}, precision)
    plain = request_phases(opts, sizes, precision, 5, cuda=True)[0]
    phases = request_phases(opts.model_copy(update={"fp8_scaled": True, "blocks_to_swap": 20}), sizes, precision,
                            5, cuda=True)
    assert [p.name for p in phases] == ["loading the DiT", "sampling"]  # swapped: the DiT loads into RAM first
    planned = phases[1]
    assert plain.name == planned.name == "sampling"
    assert planned.device_bytes < plain.device_bytes - 10 * mp.GiB
    assert "with --fp8_scaled --blocks_to_swap 20" in planned.detail
    assert "of swapped DiT blocks" in planned.host_detail


def test_ram_counts_pinned_host_copies(real):
    """--use_pinned_memory_for_block_swap: pinned buffers are rounded up to a power of two, so the same swap
    needs more RAM; with 40 GiB of RAM and --blocks_to_swap 38 given, bf16 fits pageable, pinned needs fp8."""
    fixed = mp.Fixed(blocks_to_swap=38)
    p = plan(real, 24, 640, 640, total_ram=40 * mp.GiB, fixed=fixed)
    assert p.fits and p.fp8 is None and p.blocks_to_swap == 38
    p = plan(real, 24, 640, 640, total_ram=40 * mp.GiB, fixed=fixed, pinned=True)
    assert p.fits and p.fp8 == "fp8_scaled" and p.blocks_to_swap == 38
    size, _ = real
    assert mp.dit_host_peak(size, 2, None, 38, pinned=True) + mp.RAM_RESERVE > 40 * mp.GiB
    assert mp.dit_host_peak(size, 2, "fp8_scaled", 38, pinned=True) + mp.RAM_RESERVE <= 40 * mp.GiB
