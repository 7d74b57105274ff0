"""`framepack generate --settings_from OUTPUT` and `framepack inspect OUTPUT`: a run re-created from any of its
outputs (MP4, PNG, latent) gives the same latent bit for bit; the command line wins over the stored options; a
missing or changed image and an output without our settings are one line, exit 2."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from framepack_cli.options.rerun import command_line, stored_options
from framepack_cli.options.validation import validate
from tests.conftest import INPUTS, MODEL_ARGS, MODELS
from tests.integration.test_generate_cli import SMALL, cli

pytestmark = pytest.mark.slow


def _latent(path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("latent"), f.metadata()


def _one(folder, pattern="*_latent.safetensors"):
    (path,) = sorted(folder.glob(pattern))
    return path


@pytest.fixture
def start(tmp_path):
    """A start image of our own, so that the test may change it."""
    p = tmp_path / "inputs" / "start.png"
    p.parent.mkdir()
    shutil.copy(INPUTS / "start.png", p)
    return p


def _generate(tmp_path, start, capsys, *extra):
    """A 2-section vanilla run with non-default window, steps, guidance, section prompts and an end image."""
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--image_path", start, "--end_image_path", INPUTS / "end.png",
                     "--prompt", "a cat|a dog", "--embedded_cfg_scale", "8", "--infer_steps", "1",
                     "--video_sections", "2", "--latent_window_size", "2", "--seed", "31", "--fps", "24",
                     "--output_name", "run", "--save_path", tmp_path / "first", *extra], capsys)
    assert code == 0, out.err
    return tmp_path / "first"


def test_rerun_from_video_png_and_latent_is_exact(tmp_path, start, capsys):
    first = _generate(tmp_path, start, capsys, "--output_type", "both")
    want, _ = _latent(first / "run_latent.safetensors")
    # the PNG frames of the same latent (decoded with --latent_path: the same metadata)
    code, out = cli(["generate", "--latent_path", first / "run_latent.safetensors", "--vae", MODELS / "vae.safetensors",
                     "--output_type", "images", "--save_path", tmp_path / "pngs"], capsys)
    assert code == 0, out.err
    png_dir = tmp_path / "pngs" / "run"
    for i, source in enumerate([first / "run.mp4", sorted(png_dir.glob("*.png"))[3], first / "run_latent.safetensors"]):
        again = tmp_path / f"again{i}"
        code, out = cli(["generate", "--settings_from", source, "--output_type", "latent", "--save_path", again],
                        capsys)
        assert code == 0, (source, out.err)
        got, meta = _latent(_one(again))
        assert torch.equal(got, want), source
        assert meta["seeds"] == "31" and meta["embedded_cfg_scale"] == "8.0" and meta["fps"] == "24"
        assert _one(again).name == "run_latent.safetensors"  # --output_name came from the file
    # `framepack inspect` prints the command line that re-creates the run: running it gives the same latent
    code, out = cli(["inspect", first / "run.mp4"], capsys)
    assert code == 0, out.err
    assert any(r.split() == ["seed", "31"] for r in out.out.splitlines())
    line = out.out.split("command:\n", 1)[1].strip()
    assert line.startswith("framepack generate ") and "--seed 31" in line and "--prompt 'a cat|a dog'" in line
    assert "--latent_window_size 2" in line and "--infer_steps 1" in line and "--fps 24" in line
    words = shlex.split(line)[2:]
    code, out = cli(["generate", *words, "--output_type", "latent", "--save_path", tmp_path / "by_line"], capsys)
    assert code == 0, out.err
    assert torch.equal(_latent(_one(tmp_path / "by_line"))[0], want)
    code, out = cli(["inspect", first / "run.mp4", "--json"], capsys)
    info = json.loads(out.out)
    assert info["kind"] == "output" and info["output"] == "video" and info["seed"] == 31
    assert info["command_line"] == line and info["settings"]["prompt"] == "a cat|a dog"
    assert info["settings"]["video_size"] == [32, 48] and str(start.resolve()) in info["images"]
    code, out = cli(["inspect", png_dir, "--json"], capsys)  # the folder of PNG frames: its first frame's settings
    assert code == 0 and json.loads(out.out)["command_line"] == line


def test_command_line_wins_then_file_then_defaults(tmp_path, start, capsys):
    first = _generate(tmp_path, start, capsys, "--output_type", "latent")
    code, out = cli(["generate", "--settings_from", first / "run_latent.safetensors", "--seed", "32",
                     "--embedded_cfg_scale", "6", "--output_name", "other", "--save_path", tmp_path / "b"], capsys)
    assert code == 0, out.err
    _, meta = _latent(tmp_path / "b" / "other_latent.safetensors")
    settings = json.loads(meta["framepack"])
    assert meta["seeds"] == "32" and meta["embedded_cfg_scale"] == "6.0"  # the command line
    assert meta["latent_window_size"] == "2" and meta["infer_steps"] == "1"  # the file
    assert meta["prompt"] == "a cat|a dog" and meta["fps"] == "24"
    assert meta["guidance_scale"] == "1.0" and settings["options"].get("crf") is None  # the defaults
    assert settings["options"]["end_image_path"] == str(INPUTS / "end.png")


def _fake_output(tmp_path, options, hashes, name="x_latent.safetensors", command="generate"):
    path = tmp_path / name
    settings = {"framepack_version": "0.1.0", "seed": 5, "command": command, "options": options,
                "image_sha256": hashes}
    save_file({"latent": torch.zeros(16, 1, 4, 6)}, str(path), metadata={"seeds": "5",
                                                                         "framepack": json.dumps(settings)})
    return path


def test_changed_or_missing_image_is_one_line(tmp_path, start, capsys):
    options = {"prompt": "a cat", "image_path": str(start), "save_path": str(tmp_path / "o")}
    from framepack_cli.engine.writing import sha256_file

    out_file = _fake_output(tmp_path, options, {str(start.resolve()): sha256_file(str(start))})
    start.write_bytes((INPUTS / "end.png").read_bytes())
    code, out = cli(["generate", "--settings_from", out_file], capsys)
    assert code == 2
    assert out.err.strip().splitlines() == [
        f"Error: --settings_from: {start} (--image_path) has changed since {out_file} was made (sha256 differs); "
        f"restore it, or pass --image_path {start} to use it as it is now"]
    start.unlink()
    code, out = cli(["generate", "--settings_from", out_file], capsys)
    assert code == 2
    assert out.err.strip().splitlines() == [
        f"Error: --settings_from: {out_file} was made with --image_path {start}, which is not found; put it back "
        "or pass --image_path with the image to use"]


def test_output_without_settings_is_one_line(tmp_path, capsys):
    bare = tmp_path / "bare_latent.safetensors"
    save_file({"latent": torch.zeros(16, 1, 4, 6)}, str(bare))  # what --no_metadata writes
    code, out = cli(["generate", "--settings_from", bare], capsys)
    assert code == 2
    assert out.err.strip().splitlines() == [
        f"Error: --settings_from: {bare} carries no framepack settings (written with --no_metadata, or not by "
        "framepack); give the options on the command line instead"]
    code, out = cli(["inspect", bare], capsys)
    assert code == 2 and out.err.strip() == (f"Error: {bare}: a latent file, not model weights, and it carries no "
                                              "framepack settings (written with --no_metadata, or not by framepack)")
    code, out = cli(["generate", "--settings_from", tmp_path / "nope.mp4"], capsys)
    assert code == 2 and out.err.strip() == f"Error: --settings_from: {tmp_path / 'nope.mp4'}: file not found"


def test_stored_options_and_command_line(tmp_path):
    from framepack_cli.options.generate import GenerateOptions, OneFrameOptions

    models = {k: str(MODELS / "vae.safetensors") for k in ("dit", "vae", "text_encoder1", "text_encoder2",
                                                            "image_encoder")}
    o = validate(GenerateOptions, {**models, "prompt": "it's", "save_path": str(tmp_path), "seed": "3",
                                   "video_size": ["32", "48"], "f1": True, "lora_weight": [str(INPUTS / "end.png")],
                                   "lora_multiplier": ["0.5"], "blocks_to_swap": "4", "preview": "auto",
                                   "preview_mode": "vae", "no_resume_file": True})
    stored = stored_options(o)
    assert "seed" not in stored and "blocks_to_swap" not in stored and "infer_steps" not in stored
    assert not {"preview", "preview_mode", "no_resume_file", "resume"} & set(stored)  # how it ran, not what it made
    assert stored["video_size"] == [32, 48] and stored["f1"] is True and stored["lora_multiplier"] == [0.5]
    line = command_line("generate", {**stored, "seed": 3})
    assert "--prompt 'it'\"'\"'s'" in line and "--f1" in line and "--video_size 32 48" in line
    assert "--lora_multiplier 0.5" in line and "--seed 3" in line and "--infer_steps" not in line
    one = validate(OneFrameOptions, {**models, "prompt": "x", "save_path": str(tmp_path)})
    assert stored_options(one)["one_frame_inference"] == "default"  # re-created as one-frame by `generate` too
    assert "--one_frame_inference" not in command_line("one-frame", stored_options(one))


def test_kisekae_output_needs_kisekae(tmp_path, capsys):
    options = {"prompt": "x", "start": str(INPUTS / "start.png"), "reference": str(INPUTS / "ref_rgba.png"),
               "save_path": str(tmp_path / "o")}
    out_file = _fake_output(tmp_path, options, {}, command="kisekae")
    code, out = cli(["generate", "--settings_from", out_file], capsys)
    assert code == 2
    assert out.err.strip() == (f"Error: --settings_from: {out_file} was made by `framepack kisekae` (options "
                               f"--reference, --start); run `framepack kisekae --settings_from {out_file}`")
