"""The per-model precision table, the sanity bounds, the memory estimate and out-of-memory messages (no GPU:
free-memory numbers are injected)."""

from __future__ import annotations

import pytest
import torch

from framepack_cli.engine.precision import AUTO, FIELDS, precision_for, resolve_precision
from framepack_cli.engine.resources import (
    GiB,
    MiB,
    Sizes,
    check_bounds,
    check_fit,
    is_oom,
    model_sizes,
    oom_error,
    parse_oom,
    request_phases,
)
from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.options.cache import CacheLatentsOptions, CacheTextOptions
from framepack_cli.options.generate import GenerateOptions
from tests.conftest import MODELS

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def gen_opts(tmp_path, **kw):
    return GenerateOptions(prompt="p", save_path=str(tmp_path), dit=str(MODELS / "dit_single.safetensors"),
                           vae=str(MODELS / "vae.safetensors"), image_encoder=str(MODELS / "sigclip_tiny.safetensors"),
                           text_encoder1=str(MODELS / "llava_llama3_tiny.safetensors"),
                           text_encoder2=str(MODELS / "clip_l_tiny.safetensors"), **kw)


def test_table_cuda_column_is_the_reference_and_cpu_is_float32():
    p = resolve_precision(CUDA)
    assert (p.dit, p.vae, p.text_encoder, p.image_encoder) == (BF16, F16, F16, F16)
    p = resolve_precision(CPU)
    assert (p.dit, p.vae, p.text_encoder, p.image_encoder) == (F32, F32, F32, F32)
    assert p.names() == {"dit": "float32", "vae": "float32", "text_encoder": "float32", "image_encoder": "float32"}


def test_each_model_is_overridden_alone(tmp_path):
    p = precision_for(gen_opts(tmp_path, vae_dtype="bfloat16", text_encoder_dtype="float16"), CPU)
    assert (p.dit, p.vae, p.text_encoder, p.image_encoder) == (F32, BF16, F16, F32)
    p = precision_for(gen_opts(tmp_path, dtype="float32", image_encoder_dtype="float32"), CUDA)
    assert (p.dit, p.vae, p.text_encoder, p.image_encoder) == (F32, F16, F16, F32)


def test_cache_commands_use_the_same_table(tmp_path):
    toml = tmp_path / "d.toml"
    toml.write_text("")
    lat = CacheLatentsOptions(dataset_config=str(toml), vae=str(MODELS / "vae.safetensors"),
                              image_encoder=str(MODELS / "sigclip_tiny.safetensors"))
    assert (precision_for(lat, CUDA).vae, precision_for(lat, CUDA).image_encoder) == (F16, F16)
    assert precision_for(lat.model_copy(update={"vae_dtype": "bfloat16"}), CUDA).vae == BF16
    txt = CacheTextOptions(dataset_config=str(toml), text_encoder1=str(MODELS / "llava_llama3_tiny.safetensors"),
                           text_encoder2=str(MODELS / "clip_l_tiny.safetensors"))
    assert precision_for(txt, CUDA).text_encoder == F16 and precision_for(txt, CPU).text_encoder == F32


def test_option_help_states_the_table():
    for model, field in FIELDS.items():
        desc = GenerateOptions.model_fields[field].description
        assert f"auto = {AUTO[model][0]} on CUDA" in desc and f"{AUTO[model][1]} on CPU" in desc, (field, desc)


# ---------------------------------------------------------------------------------------------------------------
# out-of-memory messages

CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which "
            "1.25 GiB is free. Including non-PyTorch memory, this process has 22.39 GiB memory in use.")
CUDA_OOM_OLD = ("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 15.78 GiB total capacity; 14.20 GiB "
                "already allocated; 301.19 MiB free; 14.50 GiB reserved in total by PyTorch)")
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_parse_oom_messages():
    assert parse_oom(CUDA_OOM) == (2 * GiB, int(1.25 * GiB), int(23.65 * GiB))
    assert parse_oom(CUDA_OOM_OLD) == (512 * MiB, int(301.19 * MiB), int(15.78 * GiB))
    assert parse_oom(CPU_OOM) == (100000000000000, None, None)
    assert parse_oom("something else") == (None, None, None)


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError(CUDA_OOM)) and is_oom(torch.cuda.OutOfMemoryError(CUDA_OOM))
    assert is_oom(MemoryError()) and is_oom(RuntimeError(CPU_OOM)) and is_oom(RuntimeError(CUDA_OOM_OLD))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError(CPU_OOM))


def test_cuda_oom_line_uses_the_message_numbers():
    err = oom_error(torch.OutOfMemoryError(CUDA_OOM), "sampling section 2/4 at 640x640", CUDA, "a smaller --video_size")
    assert isinstance(err, ResourceError) and err.exit_code == 3
    assert str(err) == ("out of memory sampling section 2/4 at 640x640 on cuda: tried to allocate 2.0 GiB, 1.2 GiB "
                        "GPU free of 23.6 GiB (a smaller --video_size)")


# ---------------------------------------------------------------------------------------------------------------
# sanity bounds

@pytest.mark.parametrize("kw,sections,line", [
    ({"video_seconds": 100000}, 83333, "--video_seconds 100000: 83333 sections planned, more than 1000; refused as "
                                       "a likely mistake (pass --force to run it anyway)"),
    ({"video_sections": 1001}, 1001, "--video_sections 1001: 1001 sections planned, more than 1000; refused as a "
                                     "likely mistake (pass --force to run it anyway)"),
    ({"latent_window_size": 100000}, 1, "--latent_window_size 100000: more than 64 latent frames per section (the "
                                        "released models use 9); refused as a likely mistake (pass --force to run "
                                        "it anyway)"),
    ({"video_size": (16000, 16000)}, 5, "--video_size 16000 16000: a side above 4096 px (FramePack is trained at "
                                        "about 640x640); refused as a likely mistake (pass --force to run it anyway)"),
    ({"infer_steps": 10**12}, 5, "--infer_steps 1000000000000: more than 1000 steps per section (25 is the "
                                 "default); refused as a likely mistake (pass --force to run it anyway)"),
])
def test_bounds_refuse_runaway_requests(tmp_path, kw, sections, line):
    o = gen_opts(tmp_path, **kw)
    with pytest.raises(FramepackError) as e:
        check_bounds(o, sections)
    assert e.value.exit_code == 2 and e.value.message == line
    check_bounds(o, sections, force=True)  # --force lets it through the bounds


def test_force_lets_a_bounded_but_large_request_through(tmp_path):
    o = gen_opts(tmp_path, video_sections=2000, video_size=(1024, 1024), force=True)
    check_bounds(o, 2000, force=True)
    sizes = Sizes({"dit": 26 * GiB, "vae": GiB // 2}, 3072, {"dit": "dit.safetensors", "vae": "vae.safetensors"})
    phases = request_phases(o, sizes, resolve_precision(CUDA), 2000, cuda=True)
    check_fit(phases, sizes, CUDA, device_free=139 * GiB, ram_free=128 * GiB, force=True)


def test_real_runs_are_within_bounds(tmp_path):
    check_bounds(gen_opts(tmp_path, video_seconds=120, video_size=(1088, 1920), infer_steps=100), 109)


# ---------------------------------------------------------------------------------------------------------------
# memory: the largest phase must fit, not the sum

REAL = Sizes({"dit": 25_748_629_632, "vae": 493 * MiB, "text_encoder1": 15_011 * MiB, "text_encoder2": 235 * MiB,
              "image_encoder": 857 * MiB}, 3072,
             {"dit": "FramePackI2V_HY_bf16.safetensors", "vae": "pytorch_model.pt",
              "text_encoder1": "llava_llama3_fp16.safetensors", "text_encoder2": "clip_l.safetensors",
              "image_encoder": "sigclip_vision_patch14_384.safetensors"})


def test_vram_refusal_names_the_largest_phase(tmp_path):
    o = gen_opts(tmp_path, video_size=(640, 640))
    phases = request_phases(o, REAL, resolve_precision(CUDA), 5, cuda=True)
    with pytest.raises(ResourceError) as e:
        check_fit(phases, REAL, CUDA, device_free=22 * GiB, ram_free=None, force=True)  # --force never skips it
    assert e.value.exit_code == 3
    assert str(e.value) == (
        "not enough GPU memory for sampling (DiT FramePackI2V_HY_bf16.safetensors): needs about 24.9 GiB (weights "
        "24.0 GiB + at least 469 MiB activations for 16000 tokens per section at 640x640, + 512 MiB margin), cuda "
        "has 22.0 GiB free (a smaller --video_size or --latent_window_size, fewer sections, or free GPU memory "
        "(other processes) or use a larger GPU; --fp8_scaled would lower it; --blocks_to_swap 20 (up to 38) lowers "
        "it)")
    fp8 = Sizes({**REAL.weights, "dit": 17 * GiB}, REAL.hidden, REAL.files, fp8=True)
    phases = request_phases(o, fp8, resolve_precision(CUDA), 5, cuda=True)
    with pytest.raises(ResourceError) as e:  # already fp8: not suggested again
        check_fit(phases, fp8, CUDA, device_free=16 * GiB, ram_free=None)
    assert str(e.value).endswith("use a larger GPU; --blocks_to_swap 20 (up to 38) lowers it)")


def test_phases_load_one_at_a_time_so_the_sum_need_not_fit(tmp_path):
    o = gen_opts(tmp_path, video_size=(640, 640))
    phases = request_phases(o, REAL, resolve_precision(CUDA), 5, cuda=True)
    biggest = max(p.device_bytes for p in phases)
    assert sum(p.device_bytes for p in phases) > biggest + 15 * GiB
    check_fit(phases, REAL, CUDA, device_free=biggest + 512 * MiB, ram_free=None)
    with pytest.raises(ResourceError):
        check_fit(phases, REAL, CUDA, device_free=biggest + 511 * MiB, ram_free=None)


def test_fp8_llm_lowers_the_text_encoder_phase():
    from framepack_cli.engine.preflight import check_models

    class Paths:
        dit = str(MODELS / "dit_single.safetensors")
        text_encoder1 = str(MODELS / "llava_llama3_tiny.safetensors")

    found = check_models(Paths)
    p = resolve_precision(CUDA)
    plain, fp8 = model_sizes(found, p), model_sizes(found, p, fp8_llm=True)
    _, infos, prefix = found["text_encoder1"]
    n = sum(i.numel for k, i in infos.items() if k.startswith(prefix))  # lm_head is not loaded
    assert prefix == "model." and plain.weights["text_encoder1"] == 2 * n  # all floating: fp16 = 2 bytes
    assert fp8.weights["text_encoder1"] < plain.weights["text_encoder1"]
    dit = found["dit"][1]
    proj = sum(i.numel for k, i in dit.items() if k.startswith("proj_out."))
    assert plain.weights["dit"] == 2 * sum(i.numel for i in dit.values()) + 2 * proj  # proj_out stays float32
    assert plain.hidden == dit["x_embedder.proj.weight"].shape[0]


def test_ram_check_on_cpu_and_force_uses_swap(tmp_path):
    o = gen_opts(tmp_path, video_size=(640, 640))
    phases = request_phases(o, REAL, resolve_precision(CPU), 5, cuda=False)
    with pytest.raises(ResourceError) as e:
        check_fit(phases, REAL, CPU, device_free=None, ram_free=20 * GiB, swap=16 * GiB)
    assert str(e.value) == (
        "not enough RAM for sampling (DiT FramePackI2V_HY_bf16.safetensors): needs about 25.9 GiB (weights 24.0 GiB "
        "+ at least 938 MiB activations for 16000 tokens per section at 640x640 + 51 MiB for the latents of 5 "
        "sections + 493 MiB of models kept in RAM), 20.0 GiB available (a smaller --video_size or "
        "--latent_window_size, fewer sections, or free RAM (close other programs), or pass --force to use swap)")
    check_fit(phases, REAL, CPU, device_free=None, ram_free=20 * GiB, swap=16 * GiB, force=True)
    with pytest.raises(ResourceError):  # RAM + swap is all the machine has: refused even with --force
        check_fit(phases, REAL, CPU, device_free=None, ram_free=20 * GiB, swap=0, force=True)


def test_ram_check_counts_the_host_copies_of_swapped_blocks(tmp_path):
    """With --blocks_to_swap on a GPU the whole DiT passes through RAM and the swapped blocks' host copies stay
    there; pinned buffers are rounded up to a power of two (real bf16 DiT: 24.0 GiB of weights, at
    --blocks_to_swap 38 22.3 GiB swapped, 38.5 GiB pinned)."""
    from framepack_cli.engine import memory_plan as mp
    from tests.fullwidth_dit import real_infos

    size = mp.dit_size(real_infos())
    sizes = Sizes(REAL.weights, REAL.hidden, REAL.files, dit=size)
    p = resolve_precision(CUDA)
    assert mp.pinned_size(679_477_248) == 2**30 and mp.pinned_size(2**29) == 2**29 and mp.pinned_size(0) == 0
    plain = mp.host_copies(size, 2, None, 38)
    pinned = mp.host_copies(size, 2, None, 38, pinned=True)
    assert plain == 19 * size.double_block.linear * 2 + 39 * size.single_block.linear * 2
    assert pinned == 19 * 2**30 + 39 * 2**29 and pinned > 1.7 * plain
    assert mp.dit_host_peak(size, 2, None, 38) == (size.nbytes(2) - plain + plain
                                                   + size.single_block.linear * 2)
    assert mp.dit_host_peak(size, 2, None, 0) == 0

    def phases(**kw):
        return request_phases(gen_opts(tmp_path, video_size=(640, 640), blocks_to_swap=38, **kw), sizes, p, 5,
                              cuda=True)

    names = [ph.name for ph in phases()]
    assert names == ["VAE encode", "image encoder", "text encoders", "loading the DiT", "sampling", "VAE decode"]
    load = {ph.name: ph for ph in phases()}["loading the DiT"]
    assert load.host_bytes == mp.dit_host_peak(size, 2, None, 38)
    sampling = {ph.name: ph for ph in phases(use_pinned_memory_for_block_swap=True)}["sampling"]
    assert sampling.host_bytes > pinned and "of swapped DiT blocks (pinned)" in sampling.host_detail
    ram_free = load.host_bytes + REAL.weights["vae"] + 512 * MiB + GiB  # enough without pinned memory
    check_fit(phases(), sizes, CUDA, device_free=80 * GiB, ram_free=ram_free)
    with pytest.raises(ResourceError) as e:
        check_fit(phases(use_pinned_memory_for_block_swap=True), sizes, CUDA, device_free=80 * GiB,
                  ram_free=ram_free)
    assert e.value.exit_code == 3
    assert str(e.value).startswith("not enough RAM for loading the DiT (DiT FramePackI2V_HY_bf16.safetensors): "
                                   "needs about 41.4 GiB (")
    assert "for the DiT loaded in RAM, its swapped blocks copied into pinned host buffers" in str(e.value)
    assert str(e.value).endswith("(drop --use_pinned_memory_for_block_swap (pinned buffers are rounded up to a "
                                 "power of two), --fp8_scaled, or free RAM (close other programs))")
    # On the CPU block swap is off: nothing counted twice.
    cpu = request_phases(gen_opts(tmp_path, video_size=(640, 640), blocks_to_swap=38), sizes, resolve_precision(CPU),
                         5, cuda=False)
    assert "loading the DiT" not in [ph.name for ph in cpu]
