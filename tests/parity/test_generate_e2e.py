"""Whole generations through the CLI against the reference's outputs (golden e2e/*).

Each case runs the exact reference command line as `framepack generate ...` (cwd = the golden folder,
float32 on CPU as the goldens were made) and compares the saved latent (atol 2e-3, rtol 1e-3) and the PNG
frames (|diff| <= 2 for >= 99.9 % of the values), per the golden README's tolerances.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from framepack_cli.cli.app import main
from tests.conftest import GOLDEN, golden

CASES = ["vanilla", "vanilla_end_image", "vanilla_sections", "f1"]

# The same run with every model in another on-disk format (all load to bit-identical weights).
OTHER_FORMATS = {
    "models/dit_single.safetensors": "models/dit_sharded/diffusion_pytorch_model-00002-of-00002.safetensors",
    "models/vae.safetensors": "models/vae_official.pt",
    "models/text_encoder/model-00001-of-00002.safetensors": "models/llava_llama3_tiny.safetensors",
    "models/clip_l_tiny.safetensors": "models/text_encoder_2",
    "models/sigclip_tiny.safetensors": "models/image_encoder",
}


def run_reference_cli(cli: str, outdir, monkeypatch, swap: dict[str, str] | None = None) -> None:
    monkeypatch.chdir(GOLDEN)
    argv = shlex.split(cli.replace("OUTDIR", str(outdir)))[1:]
    if swap:
        argv = [swap.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["generate", *argv, "--output_name", "case"])
    assert e.value.code == 0


def check_outputs(case: str, outdir) -> None:
    t, meta = golden(f"e2e/{case}")
    from safetensors import safe_open

    path = outdir / "case_latent.safetensors"
    with safe_open(str(path), "pt") as f:
        latent = f.get_tensor("latent")
        saved_meta = f.metadata()
    assert list(latent.shape) == meta["latent_shape"]
    torch.testing.assert_close(latent, t["latent"], atol=2e-3, rtol=1e-3)
    for key in ("seeds", "height", "width", "infer_steps", "latent_window_size", "embedded_cfg_scale", "fps"):
        assert saved_meta[key] == meta["saved_latent_metadata"][key], key
    pngs = sorted((outdir / "case").glob("case_*.png"))
    assert len(pngs) == meta["frames_shape"][0]
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    ref = t["frames_uint8"].numpy()
    assert frames.shape == ref.shape
    diff = np.abs(frames.astype(np.int16) - ref.astype(np.int16))
    assert (diff <= 2).mean() >= 0.999, f"{case}: max diff {diff.max()}, {(diff > 2).mean():.4%} values off by > 2"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_generate_matches_reference(case, tmp_path, monkeypatch):
    cli = json.loads((GOLDEN / "e2e" / f"{case}.json").read_text())["cli"]
    run_reference_cli(cli, tmp_path, monkeypatch)
    check_outputs(case, tmp_path)


@pytest.mark.slow
def test_generate_other_formats_same_result(tmp_path, monkeypatch):
    cli = json.loads((GOLDEN / "e2e" / "vanilla.json").read_text())["cli"]
    run_reference_cli(cli, tmp_path, monkeypatch, swap=OTHER_FORMATS)
    check_outputs("vanilla", tmp_path)


ONE_FRAME_CASES = ["oneframe_default", "oneframe_kisekaeichi", "oneframe_1fmc"]


def check_one_frame(case: str, outdir) -> None:
    t, meta = golden(f"e2e/{case}")
    from safetensors.torch import load_file

    latent = load_file(str(outdir / "case_latent.safetensors"))["latent"]
    assert list(latent.shape) == meta["latent_shape"]
    torch.testing.assert_close(latent, t["latent"], atol=2e-3, rtol=1e-3)
    png = outdir / "case_000.png"
    frame = np.asarray(Image.open(png).convert("RGB"))[None]
    diff = np.abs(frame.astype(np.int16) - t["frames_uint8"].numpy().astype(np.int16))
    assert (diff <= 2).mean() >= 0.999, f"{case}: max diff {diff.max()}"


@pytest.mark.slow
@pytest.mark.parametrize("case", ONE_FRAME_CASES)
def test_one_frame_matches_reference(case, tmp_path, monkeypatch):
    """`framepack generate --one_frame_inference ...` as the reference command line."""
    cli = json.loads((GOLDEN / "e2e" / f"{case}.json").read_text())["cli"]
    run_reference_cli(cli, tmp_path, monkeypatch)
    check_one_frame(case, tmp_path)


@pytest.mark.slow
def test_kisekae_command_matches_reference(tmp_path, monkeypatch):
    """The friendly `framepack kisekae` flags reproduce the reference's Kisekaeichi command."""
    monkeypatch.chdir(GOLDEN)
    m = "models/"
    with pytest.raises(SystemExit) as e:
        main(["kisekae", "--dit", m + "dit_single.safetensors", "--vae", m + "vae.safetensors",
              "--text_encoder1", m + "llava_llama3_tiny.safetensors", "--text_encoder2", m + "clip_l_tiny.safetensors",
              "--image_encoder", m + "sigclip_tiny.safetensors", "--start", "inputs/start.png", "--reference",
              "inputs/ref_rgba.png", "--start-mask", "inputs/start_mask.png", "--prompt", "The girl wears a red dress.",
              "--video-size", "48", "64", "--infer-steps", "5", "--seed", "42", "--output-type", "latent_images",
              "--save-path", str(tmp_path), "--output-name", "case"])
    assert e.value.code == 0
    check_one_frame("oneframe_kisekaeichi", tmp_path)
