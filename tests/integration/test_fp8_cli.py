"""fp8 end to end on the tiny models: the seed's inference command line (`--fp8_scaled --attn_mode sdpa
--vae_chunk_size 32 --output_type both --lora_weight ...`), `--fp8_fast` off CUDA, a refused fp8 file, and
`framepack train --fp8_base [--fp8_scaled]`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack_cli.cli.app import main
from tests.conftest import GOLDEN, INPUTS, MODEL_ARGS, MODELS
from tests.integration.test_train_cli import meta, train_args, video_dataset

pytestmark = pytest.mark.slow

LORA = MODELS / "lora_tiny.safetensors"
SMALL = ["--video_size", "32", "48", "--infer_steps", "2", "--video_sections", "1", "--latent_window_size", "2",
         "--seed", "5"]


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def gen(tmp_path, capsys, *extra, model_args=MODEL_ARGS):
    return cli(["generate", *model_args, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
                "--save_path", tmp_path, *extra], capsys)


def _latent(path):
    return load_file(str(path))["latent"]


def test_seed_inference_command_line_with_fp8_scaled_and_a_lora(tmp_path, capsys):
    seed_line = ["--fp8_scaled", "--attn_mode", "sdpa", "--vae_chunk_size", "32", "--output_type", "both",
                 "--lora_weight", LORA]
    code, out, err = gen(tmp_path / "fp8", capsys, *seed_line, "--output_name", "run")
    assert code == 0, err
    assert out.splitlines() == [f"Wrote {tmp_path / 'fp8' / 'run_latent.safetensors'}",
                                f"Wrote {tmp_path / 'fp8' / 'run.mp4'}"]
    assert "--fp8_scaled: 34 block Linears (1,179,648 parameters) stored as float8_e4m3fn, block scales" in err
    assert "34 modules merged" in err
    assert (tmp_path / "fp8" / "run.mp4").stat().st_size > 0
    # Same run without fp8: close (the stated DiT error, through 2 steps), and the LoRA's effect is there.
    code, _, err = gen(tmp_path / "full", capsys, *[a for a in seed_line if a != "--fp8_scaled"], "--output_name",
                       "run")
    assert code == 0, err
    code, _, err = gen(tmp_path / "nolora", capsys, "--fp8_scaled", "--output_type", "latent", "--output_name", "run")
    assert code == 0, err
    fp8, full, nolora = (_latent(tmp_path / d / "run_latent.safetensors")[:, 1:] for d in ("fp8", "full", "nolora"))
    assert ((fp8 - full).norm() / full.norm()).item() < 0.05
    assert (fp8 - nolora).norm() > 3 * (fp8 - full).norm()


def test_fp8_fast_off_cuda_warns_once_and_runs(tmp_path, capsys):
    code, _, err = gen(tmp_path, capsys, "--fp8", "--fp8_fast", "--output_type", "latent")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "--fp8_fast" in line]
    assert warnings == ["Warning: --fp8_fast needs a CUDA GPU (this run is on cpu); using the dequantising fp8 "
                        "matmul instead"]


def test_fp8_fast_alone_is_refused(tmp_path, capsys):
    code, out, err = gen(tmp_path, capsys, "--fp8_fast")
    assert code == 2 and out == ""
    assert "--fp8_fast needs --fp8 or --fp8_scaled (it speeds up fp8 weights)" in err


def test_an_fp8_file_in_an_unreadable_scheme_is_refused_before_loading(tmp_path, capsys):
    sd = load_file(str(MODELS / "dit_single.safetensors"))
    sd["transformer_blocks.0.attn.to_q.weight"] = sd["transformer_blocks.0.attn.to_q.weight"].to(torch.float8_e5m2)
    bad = tmp_path / "dit_fp8_e5m2.safetensors"
    save_file(sd, str(bad))
    args = [str(bad) if a == str(MODELS / "dit_single.safetensors") else a for a in map(str, MODEL_ARGS)]
    code, out, err = gen(tmp_path / "out", capsys, "--fp8_scaled", model_args=args)
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: --dit: {bad} holds float8_e5m2 tensors; only float8_e4m3fn fp8 files (plain or with "
                      "scale_weight scales) can be read; use the bf16 file (with --fp8_scaled to quantise it at "
                      "load)"], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(not (GOLDEN / "cache").is_dir(), reason="golden caches missing")
@pytest.mark.parametrize("flags", [["--fp8_base", "--fp8_scaled"], ["--fp8_base"]])
def test_train_lora_on_an_fp8_base(tmp_path, capsys, flags):
    toml = video_dataset(tmp_path, only="clip_b*")
    out = tmp_path / "out"
    code, stdout, err = cli(train_args(toml, out, "--max_train_steps", "2", *flags), capsys)
    assert code == 0, err
    mode = "fp8_scaled" if "--fp8_scaled" in flags else "fp8"
    assert f"--{mode}: 34 block Linears (1,179,648 parameters) stored as float8_e4m3fn" in err
    assert "Trained 2 steps" in err
    saved = load_file(str(out / "lora.safetensors"))
    ups = [v for k, v in saved.items() if k.endswith("lora_up.weight")]
    assert len(ups) == 34 and all(v.dtype == torch.float32 for v in ups)
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert sum(float(v.abs().sum()) for v in ups) > 0  # lora_up starts at zero: the fp8 base let gradients through
    assert meta(out / "lora.safetensors")["ss_fp8_base"] == "True"


@pytest.mark.parametrize(("command", "extra"), [
    ("one-frame", ["--image_path", INPUTS / "start.png", "--control_image_path", INPUTS / "start.png"]),
    ("kisekae", ["--start", INPUTS / "start.png", "--reference", INPUTS / "ref_rgba.png"]),
])
def test_one_frame_and_kisekae_take_fp8(tmp_path, capsys, command, extra):
    code, out, err = cli([command, *MODEL_ARGS, "--video_size", "48", "64", "--infer_steps", "2", "--prompt", "x",
                          "--seed", "3", "--save_path", tmp_path, "--output_name", "edit", "--fp8", *extra], capsys)
    assert code == 0, err
    assert "--fp8: 34 block Linears (1,179,648 parameters) stored as float8_e4m3fn" in err
    assert out.splitlines() == [f"Wrote {tmp_path / 'edit_000.png'}"]
