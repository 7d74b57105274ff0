"""Precision, up-front refusals, out-of-memory lines and --interactive model keeping, through the CLI main on the
tiny golden models (CPU; allocation failures are injected with the real exception types and messages)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors import safe_open

from framepack_cli.cli.app import main
from tests.conftest import INPUTS, MODEL_ARGS, MODELS

pytestmark = pytest.mark.slow

M = MODELS
SMALL = ["--video_size", "32", "48", "--infer_steps", "2", "--latent_window_size", "2", "--device", "cpu"]
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)")


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def gen(tmp_path, capsys, *extra):
    return cli(["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
                "--save_path", tmp_path, "--seed", "1", *extra], capsys)


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Error")]


@pytest.fixture
def ram(monkeypatch):
    """This machine has 2 GiB of 24 GiB RAM free, no swap (deterministic lines)."""
    from framepack_cli.engine import resources

    monkeypatch.setattr(resources, "ram", lambda: (2 * 2**30, 24 * 2**30))
    monkeypatch.setattr(resources, "swap_free", lambda: 0)


# ---------------------------------------------------------------------------------------------------------------
# 1. precision


def test_loaders_get_the_per_model_dtypes(tmp_path, capsys, monkeypatch):
    """Explicit overrides on the CPU reach each loader, the loaded weights are in that dtype, metadata says so."""
    import framepack_cli.models.image_encoder as ie
    import framepack_cli.models.text_encoders as te
    import framepack_cli.models.transformer as tr
    import framepack_cli.models.vae as vae

    seen = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*a, **kw):
            model = real(*a, **kw)
            got = {p.dtype for p in model.parameters()} if hasattr(model, "parameters") else {model.dtype}
            seen[name] = (kw["dtype"], got)
            return model

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((vae, "load_vae"), (ie, "load_image_encoder"), (te, "load_text_encoder1"),
                         (te, "load_text_encoder2"), (tr, "load_dit")):
        spy(module, name)
    code, _, err = gen(tmp_path, capsys, "--vae_dtype", "bfloat16", "--text_encoder_dtype", "bfloat16",
                       "--image_encoder_dtype", "float16", "--output_type", "latent", "--output_name", "x",
                       "--video_sections", "1")
    assert code == 0, err
    b16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    assert seen == {"load_vae": (b16, {b16}), "load_image_encoder": (f16, {f16}),
                    "load_text_encoder1": (b16, {b16}), "load_text_encoder2": (b16, {b16}), "load_dit": (f32, {f32})}
    with safe_open(str(tmp_path / "x_latent.safetensors"), "pt") as f:
        dtypes = json.loads(f.metadata()["framepack"])["dtypes"]
    assert dtypes == {"dit": "float32", "vae": "bfloat16", "text_encoder": "bfloat16", "image_encoder": "float16"}


def test_cache_loaders_get_the_table_dtypes(tmp_path, capsys, monkeypatch):
    """`cache latents` loads the VAE and SigLIP in --vae_dtype / --image_encoder_dtype, `cache text` the encoders
    in --text_encoder_dtype (auto = float32 on the CPU)."""
    import framepack_cli.models.image_encoder as ie
    import framepack_cli.models.text_encoders as te
    import framepack_cli.models.vae as vae
    from tests.conftest import GOLDEN

    for link in ("datasets", "models"):
        (tmp_path / link).symlink_to(GOLDEN / link, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    seen = []

    def record(name, stop=False):
        def loader(*a, **kw):
            seen.append((name, kw["dtype"]))
            if stop:  # the dtype is what is tested: stop before encoding anything
                raise SystemExit(0)
            return object()
        return loader

    monkeypatch.setattr(vae, "load_vae", record("vae"))
    monkeypatch.setattr(ie, "load_image_encoder", record("siglip", stop=True))
    monkeypatch.setattr(te, "load_text_encoder1", record("llama", stop=True))
    latents = ["cache", "latents", "--dataset_config", "datasets/video_full.toml", "--vae", "models/vae.safetensors",
               "--image_encoder", "models/sigclip_tiny.safetensors", "--device", "cpu"]
    text = ["cache", "text", "--dataset_config", "datasets/image_1f.toml", "--text_encoder1",
            "models/text_encoder/model-00001-of-00002.safetensors", "--text_encoder2", "models/clip_l_tiny.safetensors",
            "--device", "cpu"]
    for args in (latents, [*latents, "--vae_dtype", "bfloat16", "--image_encoder_dtype", "float16"], text,
                 [*text, "--text_encoder_dtype", "bfloat16"]):
        code, _, err = cli(args, capsys)
        assert code == 0, err
    f32, b16, f16 = torch.float32, torch.bfloat16, torch.float16
    assert seen == [("vae", f32), ("siglip", f32), ("vae", b16), ("siglip", f16), ("llama", f32), ("llama", b16)]


def test_float16_dit_warns_once(tmp_path, capsys):
    code, _, err = gen(tmp_path, capsys, "--dtype", "float16", "--output_type", "latent", "--video_sections", "1")
    assert code == 0, err
    assert err.count("Warning: --dtype float16: the DiT was trained in bfloat16; float16 may overflow and give "
                     "different results (--dtype auto uses bfloat16 on CUDA)") == 1


# ---------------------------------------------------------------------------------------------------------------
# 2. and 5. refused up front


@pytest.mark.parametrize("extra,line", [
    (["--attn_mode", "flash"], "Error: --attn_mode flash: FlashAttention runs in float16 or bfloat16 only, but the "
     "DiT runs in float32 (--dtype auto on cpu); use --attn_mode sdpa, or --dtype bfloat16 on a GPU"),
    (["--attn_mode", "sageattn", "--dtype", "float32"], "Error: --attn_mode sageattn: SageAttention runs in float16 "
     "or bfloat16 only, but the DiT runs in float32 (--dtype float32); use --attn_mode sdpa, or --dtype bfloat16 "
     "on a GPU"),
    (["--video_seconds", "100000"], "Error: --video_seconds 100000: 375000 sections planned, more than 1000; refused "
     "as a likely mistake (pass --force to run it anyway)"),
    (["--latent_window_size", "100000"], "Error: --latent_window_size 100000: more than 64 latent frames per section "
     "(the released models use 9); refused as a likely mistake (pass --force to run it anyway)"),
    (["--infer_steps", str(10**12)], "Error: --infer_steps 1000000000000: more than 1000 steps per section (25 is "
     "the default); refused as a likely mistake (pass --force to run it anyway)"),
    (["--keep_models"], "Error: --keep_models applies to --interactive only (other runs load each model once "
     "anyway)"),
])
def test_refused_before_any_model_loads(tmp_path, capsys, extra, line):
    code, out, err = gen(tmp_path, capsys, *extra)
    assert code == 2 and err.strip().splitlines() == [line] and out == ""


def test_video_size_refused_in_a_batch_line(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat --w 16000 --h 16000\n")
    code, _, err = cli(["generate", *MODEL_ARGS, *SMALL, "--from_file", prompts, "--save_path", tmp_path], capsys)
    assert code == 2
    assert errors(err) == ["Error: p.txt line 1: --video_size 16000 16000: a side above 4096 px (FramePack is "
                           "trained at about 640x640); refused as a likely mistake (pass --force to run it anyway)",
                           "Error: --from_file: 1 of 1 job(s) failed: p.txt line 1"]


def test_force_still_refuses_what_ram_cannot_hold(tmp_path, capsys, ram):
    code, out, err = gen(tmp_path, capsys, "--video_seconds", "100000", "--force")
    assert code == 3 and out == ""
    assert err.strip().splitlines() == [
        "Error: not enough RAM for sampling (DiT dit_single.safetensors): needs about 2.7 GiB (weights 12 MiB + at "
        "least 45 KiB activations for 18 tokens per section at 32x48 + 2.1 GiB for the latents of 375000 sections "
        "+ 4 MiB of models kept in RAM), 2.0 GiB available; a smaller --video_size or --latent_window_size, fewer "
        "sections, or free RAM (close other programs)"]


# ---------------------------------------------------------------------------------------------------------------
# 3. out of memory while running: one line, exit 3


def test_oom_loading_the_dit(tmp_path, capsys, monkeypatch, ram):
    import framepack_cli.models.transformer as tr

    def fail(*a, **kw):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(tr, "load_dit", fail)
    code, _, err = gen(tmp_path, capsys)
    assert code == 3
    assert errors(err) == ["Error: out of memory loading the DiT dit_single.safetensors on cpu: tried to allocate "
                           "93132.3 GiB, 2.0 GiB RAM free of 24.0 GiB; free RAM (close other programs)"]


def test_oom_loading_the_text_encoders(tmp_path, capsys, monkeypatch, ram):
    import framepack_cli.models.text_encoders as te

    def fail(*a, **kw):
        raise MemoryError()

    monkeypatch.setattr(te, "load_text_encoder1", fail)
    code, _, err = gen(tmp_path, capsys)
    assert code == 3
    assert errors(err) == ["Error: out of memory loading the text encoders llava_llama3_tiny.safetensors, "
                           "clip_l_tiny.safetensors on cpu: 2.0 GiB RAM free of 24.0 GiB; --fp8_llm (LLaMA in "
                           "fp8), or free RAM (close other programs)"]


def test_oom_sampling_a_section(tmp_path, capsys, monkeypatch, ram):
    import framepack_cli.engine.generate as g

    real, calls = g.sample_unipc, []

    def second_fails(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError(CPU_OOM)
        return real(*a, **kw)

    monkeypatch.setattr(g, "sample_unipc", second_fails)
    code, _, err = gen(tmp_path, capsys, "--video_sections", "2")
    assert code == 3
    # vanilla samples the last section first: the second call is section 1 of 2
    assert errors(err) == ["Error: out of memory sampling section 1/2 at 32x48 on cpu: tried to allocate 93132.3 "
                           "GiB, 2.0 GiB RAM free of 24.0 GiB; a smaller --video_size or --latent_window_size, or "
                           "free RAM (close other programs)"]
    assert not list(tmp_path.glob("*.mp4"))


def test_oom_in_vae_decode(tmp_path, capsys, monkeypatch, ram):
    import framepack_cli.models.vae as vae

    def fail(*a, **kw):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(vae, "vae_decode", fail)
    code, _, err = gen(tmp_path, capsys, "--video_sections", "1", "--output_name", "v")
    assert code == 3
    assert errors(err) == ["Error: out of memory in VAE decode on cpu: tried to allocate 93132.3 GiB, 2.0 GiB RAM "
                           "free of 24.0 GiB; --vae_chunk_size 32 (or 16, 8), --vae_spatial_tile_sample_min_size 128 "
                           "(or 64), a smaller --video_size, or free RAM (close other programs)"]
    assert not list(tmp_path.glob("v*"))


# ---------------------------------------------------------------------------------------------------------------
# 6. --interactive keeps what the next prompt needs


def interactive(tmp_path, capsys, monkeypatch, lines, *extra):
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, _, err = cli(["generate", *MODEL_ARGS, *SMALL, "--interactive", "--save_path", tmp_path,
                        "--output_type", "latent", "--image_path", INPUTS / "start.png", *extra], capsys)
    assert code == 0, err
    loads = {what: sum(1 for line in err.splitlines() if line.startswith(f"Loading {what} "))
             for what in ("VAE", "image encoder", "text encoders", "DiT")}
    return err, loads


def test_interactive_reloads_only_the_text_encoders(tmp_path, capsys, monkeypatch):
    err, loads = interactive(tmp_path, capsys, monkeypatch, "a cat --d 1 --vs 1\na dog --d 2 --vs 1\n"
                             "a cat --d 3 --vs 1\n")
    assert "Interactive mode: the DiT, VAE and image encoder stay loaded between prompts; the text encoders are " \
           "reloaded for new prompts (--keep_models keeps them too, about 16 GB more RAM with the real weights)." \
           in err.splitlines()
    # 'a cat' again is remembered: no third text-encoder load
    assert loads == {"VAE": 1, "image encoder": 1, "text encoders": 2, "DiT": 1}
    assert len(list(tmp_path.glob("*_latent.safetensors"))) == 3


def test_interactive_keep_models_keeps_everything(tmp_path, capsys, monkeypatch):
    err, loads = interactive(tmp_path, capsys, monkeypatch, "a cat --d 1 --vs 1\na dog --d 2 --vs 1\n",
                             "--keep_models")
    assert "Interactive mode: every model stays loaded between prompts (--keep_models)." in err.splitlines()
    assert loads == {"VAE": 1, "image encoder": 1, "text encoders": 1, "DiT": 1}
