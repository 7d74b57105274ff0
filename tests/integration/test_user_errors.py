"""User mistakes are caught before any model loads, in one line with exit code 2; settings that will have
no effect are said out loud; outputs land where asked, readable by others."""

from __future__ import annotations

import os
import stat

import pytest
from safetensors.torch import load_file, save_file

from framepack_cli.cli.app import main
from tests.conftest import INPUTS, MODEL_ARGS, MODELS

M = MODELS
SMALL = ["--video_size", "32", "32", "--infer_steps", "1", "--latent_window_size", "2", "--video_sections", "1",
         "--image_path", str(INPUTS / "start.png"), "--prompt", "x"]


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def only_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_save_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--save_path", f], capsys)
    assert (code, only_line(out)) == (2, f"Error: --save_path: {f} is a file, expected a folder")
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--save_path", f / "sub"], capsys)
    assert (code, only_line(out)) == (2, f"Error: --save_path: cannot create {f / 'sub'}: {f} is a file")


def test_output_name_must_be_a_plain_name(tmp_path, capsys):
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--save_path", tmp_path, "--output_name", "../x"], capsys)
    assert code == 2
    assert only_line(out) == ("Error: --output_name: '../x' must be a plain file name (no folders); use --save_path "
                              "for the folder")


def test_latent_path_with_output_type_latent(tmp_path, capsys):
    lat = tmp_path / "a_latent.safetensors"
    lat.write_bytes(b"x")
    code, out = cli(["generate", "--latent_path", lat, "--vae", M / "vae.safetensors", "--save_path", tmp_path,
                     "--output_type", "latent"], capsys)
    assert code == 2
    assert only_line(out) == ("Error: --output_type latent with --latent_path: nothing to do (the latents are "
                              "already saved); use video, images or both")


def test_models_that_do_not_belong_together(tmp_path, capsys):
    """A DiT whose text width differs from the LLaMA's is refused from the headers, before anything loads."""
    sd = load_file(str(M / "dit_single.safetensors"))
    sd["context_embedder.proj_in.weight"] = sd["context_embedder.proj_in.weight"][:, :64].contiguous()
    key = "context_embedder.time_text_embed.text_embedder.linear_1.weight"
    sd[key] = sd[key][:, :64].contiguous()
    other = tmp_path / "dit_other.safetensors"
    save_file(sd, str(other))
    args = [a if a != str(M / "dit_single.safetensors") else str(other) for a in MODEL_ARGS]
    code, out = cli(["generate", *args, *SMALL, "--save_path", tmp_path / "o"], capsys)
    assert code == 2
    assert only_line(out) == (
        f"Error: --text_encoder1: {M / 'llava_llama3_tiny.safetensors'} has hidden size 128, but the DiT {other} "
        "expects 64 (text_embed_dim); these models do not belong together")


def test_images_checked_before_models_load(tmp_path, capsys):
    bad = tmp_path / "cut.png"
    bad.write_bytes((INPUTS / "start.png").read_bytes()[:300])
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--image_path", bad, "--save_path", tmp_path / "o"], capsys)
    assert code == 2
    line = only_line(out)
    assert line.startswith(f"Error: {bad}: cannot read image") and "Loading" not in out


def test_non_checkpoint_files_named_plainly(tmp_path, capsys):
    code, out = cli(["inspect", INPUTS / "start.png"], capsys)
    assert (code, only_line(out)) == (2, f"Error: {INPUTS / 'start.png'}: a PNG image, not model weights, and it "
                                         "carries no framepack settings (written with --no_metadata, or not by "
                                         "framepack)")
    junk = tmp_path / "x.pt"
    junk.write_bytes(b"junk bytes")
    code, out = cli(["inspect", junk], capsys)
    assert only_line(out) == (f"Error: {junk}: an unknown file (neither safetensors nor a torch checkpoint), not "
                              "model weights")
    import torch

    mod = tmp_path / "m.pt"
    torch.save({"a": torch.nn.Linear(2, 2)}, mod)
    code, out = cli(["inspect", mod], capsys)
    assert code == 2 and "weights_only=False" not in out and "\x1b" not in out
    assert only_line(out) == (f"Error: {mod}: cannot read as a torch checkpoint (only plain tensor state dicts are "
                              "loaded, with weights_only=True); convert it to .safetensors")


def test_folder_with_several_checkpoints_is_resolved_by_kind(tmp_path, capsys):
    """`--dit models/` takes the DiT among the folder's checkpoints (never the first file by name)."""
    args = ["--dit", M, "--vae", M, "--text_encoder1", M, "--text_encoder2", M, "--image_encoder", M]
    code, out = cli(["generate", *args, *SMALL, "--save_path", tmp_path, "--output_type", "latent", "--seed", "3"],
                    capsys)
    assert code == 0, out
    assert len(list(tmp_path.glob("*_3_latent.safetensors"))) == 1


def test_bom_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes("\ufeff# my prompts\nhello --d 1\n".encode())
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--from_file", prompts, "--save_path", tmp_path / "o",
                     "--output_type", "latent"], capsys)
    assert code == 0, out
    assert [p.name.split("_")[-2] for p in (tmp_path / "o").glob("*_latent.safetensors")] == ["1"]


def test_kisekae_start_reference_conflict(tmp_path, capsys):
    code, out = cli(["kisekae", *MODEL_ARGS, "--prompt", "x", "--save_path", tmp_path, "--start",
                     INPUTS / "start.png", "--reference", INPUTS / "ref_rgba.png", "--control_image_path",
                     INPUTS / "ctrl2.png", INPUTS / "start.png"], capsys)
    assert (code, only_line(out)) == (2, "Error: --start/--reference cannot be combined with --control_image_path; "
                                         "use one or the other")


def test_ignored_settings_are_said(tmp_path, capsys):
    code, out = cli(["one-frame", *MODEL_ARGS, "--video_size", "32", "32", "--infer_steps", "1", "--image_path",
                     INPUTS / "start.png", "--control_image_path", INPUTS / "start.png", "--prompt", "x", "--f1",
                     "--bulk_decode", "--decode", "bulk", "--save_path", tmp_path], capsys)
    assert code == 0, out
    assert "Warning: --f1, --bulk_decode, --decode are ignored in one-frame mode" in out
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--negative_prompt", "ugly", "--save_path", tmp_path,
                     "--output_type", "latent"], capsys)
    assert "Warning: --negative_prompt has no effect with --guidance_scale 1 (real CFG off)" in out


def test_outputs_summary_and_permissions(tmp_path, capsys):
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--save_path", tmp_path, "--output_type", "latent_images",
                     "--output_name", "run"], capsys)
    assert code == 0
    assert f"Wrote {tmp_path / 'run_latent.safetensors'}\nWrote {tmp_path / 'run' / 'run_000.png'}\n" in out
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "run_latent.safetensors").stat().st_mode) == 0o666 & ~umask


def test_latent_path_flags_win_over_metadata(tmp_path, capsys):
    code, _ = cli(["generate", *MODEL_ARGS, *SMALL, "--fps", "24", "--save_path", tmp_path, "--output_type",
                   "latent", "--output_name", "a"], capsys)
    assert code == 0
    import av

    lat = tmp_path / "a_latent.safetensors"
    code, _ = cli(["generate", "--vae", M / "vae.safetensors", "--latent_path", lat, "--save_path", tmp_path], capsys)
    assert code == 0
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].average_rate == 24  # from the metadata
    code, _ = cli(["generate", "--vae", M / "vae.safetensors", "--latent_path", lat, "--save_path", tmp_path,
                   "--fps", "12"], capsys)
    assert code == 0
    with av.open(str(tmp_path / "a_1.mp4")) as c:
        assert c.streams.video[0].average_rate == 12  # the flag wins
