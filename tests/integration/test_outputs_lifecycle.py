"""The life of a run's outputs, through the CLI on the tiny models: the output folder proven writable before any
model loads, a failed write as one line with the latent kept elsewhere, Ctrl-C as one line with nothing half
written, metadata that records what was made, and `Wrote <path>` results alone on stdout.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from framepack_cli.cli.app import main
from framepack_cli.io import outputs, writable
from framepack_cli.io.outputs import read_png_metadata, read_video_metadata
from tests.conftest import INPUTS, MODEL_ARGS, MODELS, REPO

pytestmark = pytest.mark.slow

M = MODELS
SMALL = ["--video_size", "48", "64", "--infer_steps", "2", "--latent_window_size", "2", "--video_sections", "1",
         "--seed", "3"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr()


def gen(save_path, capsys, *extra):
    return cli(["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
                "--save_path", save_path, *extra], capsys)


def deny_probe(monkeypatch):
    """The write probe fails as in a folder the user may not write to (we run as root: chmod blocks nothing)."""

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(writable, "open", denied, raising=False)


# --- 1. the output folder is checked before any model loads ----------------------------------------------------


def test_unwritable_save_path_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    deny_probe(monkeypatch)
    out = tmp_path / "new" / "out"
    code, res = gen(out, capsys)
    assert code == 3
    assert res.err.splitlines() == [
        f"Error: --save_path: cannot write {out}: Permission denied; choose a folder you can write to"]
    assert "Loading" not in res.err and res.out == ""
    assert not (tmp_path / "new").exists()  # the folders it created for the probe are gone again


def test_unwritable_merged_model_folder_fails_before_the_merge(tmp_path, monkeypatch, capsys):
    deny_probe(monkeypatch)
    merged = tmp_path / "models" / "merged.safetensors"
    code, res = cli(["generate", "--dit", M / "dit_single.safetensors", "--lora_weight", M / "lora_tiny.safetensors",
                     "--save_merged_model", merged, "--save_path", tmp_path], capsys)
    assert code == 3
    assert res.err.splitlines() == [f"Error: --save_merged_model: cannot write {merged.parent}: Permission denied; "
                                    "choose a folder you can write to"]
    assert not merged.parent.exists()


@pytest.mark.parametrize("command", ["convert", "merge"])
def test_lora_output_folder_is_created_and_probed(tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "a" / "b" / "out.safetensors"
    args = (["lora", "convert", M / "lora_tiny.safetensors", "--to", "diffusers"] if command == "convert" else
            ["lora", "merge", "--dit", M / "dit_single.safetensors", "--lora_weight", M / "lora_tiny.safetensors"])
    code, res = cli([*args, "--output", out], capsys)
    assert code == 0, res.err
    assert out.is_file() and res.out == f"Wrote {out}\n"
    deny_probe(monkeypatch)
    out2 = tmp_path / "c" / "out.safetensors"
    code, res = cli([*args, "--output", out2], capsys)
    assert code == 3
    assert res.err.splitlines() == [f"Error: --output: cannot write {out2.parent}: Permission denied; choose a folder "
                                    "you can write to"]
    assert not out2.parent.exists() and res.out == ""


# --- 2. a failed write: one line, exit 3, the latent kept in a fallback folder -----------------------------------


@pytest.fixture
def fallback_tmp(tmp_path, monkeypatch):
    d = tmp_path / "TMP"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _fail_mp4(monkeypatch, save):
    def write(self, frames):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.VideoWriter, "write", write)
    return "video", save / "clip.mp4"


def _fail_png(monkeypatch, save):
    def write(self, frames):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.PngSequenceWriter, "write", write)
    return "images", save / "clip"


def _fail_latent(monkeypatch, save):
    real = outputs.save_latent

    def save_latent(path, latent, metadata=None):
        if Path(path).parent == save:  # the disk of --save_path is full; the fallback folder is not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, latent, metadata)

    monkeypatch.setattr(outputs, "save_latent", save_latent)
    return "latent_images", save / "clip_latent.safetensors"


@pytest.mark.parametrize("fail", [_fail_mp4, _fail_png, _fail_latent], ids=["mp4", "png", "latent"])
def test_disk_full_keeps_the_latent_and_says_so(tmp_path, monkeypatch, capsys, fallback_tmp, fail):
    save = tmp_path / "out"
    output_type, failed = fail(monkeypatch, save)
    code, res = gen(save, capsys, "--output_type", output_type, "--output_name", "clip")
    kept = fallback_tmp / "clip_latent.safetensors"
    assert code == 3
    assert res.err.splitlines()[-1] == (
        f"Error: --save_path: cannot write {failed}: No space left on device; the latent was saved to {kept} "
        f"(decode it with `framepack generate --latent_path {kept} --vae {M / 'vae.safetensors'} --save_path "
        "<folder>`)")
    assert "Traceback" not in res.err and res.out == ""
    # no partial file; the resume checkpoint stays (`--resume` decodes it once there is space)
    assert sorted(p.name for p in save.iterdir()) == [".clip.resume.safetensors"]
    assert f"Checkpoint kept: {save / '.clip.resume.safetensors'}" in res.err
    assert kept.is_file() and list(fallback_tmp.glob("*.safetensors")) == [kept]
    monkeypatch.undo()
    again = tmp_path / "again"
    code, res = cli(["generate", "--latent_path", kept, "--vae", M / "vae.safetensors", "--save_path", again], capsys)
    assert code == 0, res.err
    (mp4,) = again.glob("*.mp4")
    assert res.out == f"Wrote {mp4}\n"
    assert json.loads(read_video_metadata(mp4)["framepack"])["seed"] == 3


def test_disk_full_while_decoding_a_saved_latent_names_it(tmp_path, monkeypatch, capsys, fallback_tmp):
    code, _ = gen(tmp_path, capsys, "--output_type", "latent", "--output_name", "clip")
    assert code == 0
    lat = tmp_path / "clip_latent.safetensors"
    save = tmp_path / "decoded"
    _fail_mp4(monkeypatch, save)
    code, res = cli(["generate", "--latent_path", lat, "--vae", M / "vae.safetensors", "--save_path", save], capsys)
    assert code == 3
    assert res.err.splitlines()[-1] == (f"Error: --save_path: cannot write {save / 'clip.mp4'}: No space left on "
                                        f"device; the latent is unchanged in {lat}")
    assert not save.exists() and list(fallback_tmp.glob("*.safetensors")) == []


# --- 3. Ctrl-C -------------------------------------------------------------------------------------------------


def _start(args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "framepack_cli", *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # a child of a shell job may inherit SIGINT ignored; Python installs its handler only over the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _interrupt_when(proc, stream: str, pattern: str, timeout: float = 240.0) -> tuple[str, str]:
    """SIGINT `proc` as soon as a line of its `stream` matches `pattern`; return (stdout, stderr)."""
    seen = {"out": [], "err": []}
    hit = threading.Event()

    def pump(name, f):
        for line in f:
            seen[name].append(line)
            if name == stream and re.search(pattern, line):
                hit.set()

    threads = [threading.Thread(target=pump, args=(n, f), daemon=True)
               for n, f in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    assert hit.wait(timeout), f"never saw {pattern!r}: {''.join(seen['err'])}"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    for t in threads:
        t.join(timeout=10)
    return "".join(seen["out"]), "".join(seen["err"])


def test_ctrl_c_while_sampling_says_so_and_leaves_nothing(tmp_path):
    save = tmp_path / "new" / "out"
    proc = _start(["generate", *MODEL_ARGS, "--video_size", "48", "64", "--infer_steps", "40",
                   "--latent_window_size", "2", "--video_sections", "2", "--seed", "1", "--image_path",
                   INPUTS / "start.png", "--prompt", "a cat", "--save_path", save, "--output_type", "both",
                   "--no_resume_file"])  # (without it the resume checkpoint stays: test_resume_cli.py)
    out, err = _interrupt_when(proc, "err", r"^section \d/2: 40 steps in")  # the first section is done
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "Interrupted after section 1 of 2; nothing written"
    assert "Traceback" not in err and "Aborted" not in err and out == ""
    assert not (tmp_path / "new").exists()


def test_ctrl_c_while_decoding_names_what_was_written(tmp_path):
    # The signal is sent once the latent is written, i.e. while decoding; on a fast (or idle) machine the decode
    # may finish first, so a longer video is tried before giving up.
    for sections in ("6", "24"):
        save = tmp_path / f"s{sections}"
        proc = _start(["generate", *MODEL_ARGS, "--video_size", "96", "128", "--infer_steps", "1",
                       "--latent_window_size", "2", "--video_sections", sections, "--seed", "1", "--image_path",
                       INPUTS / "start.png", "--prompt", "a cat", "--save_path", save, "--output_type", "both",
                       "--output_name", "clip"])
        out, err = _interrupt_when(proc, "out", r"^Wrote .*_latent\.safetensors$")
        if proc.returncode != 0:
            break
    latent = save / "clip_latent.safetensors"
    assert proc.returncode == 130, err
    # The signal lands during the decode, or just before its first chunk (the latent is written first).
    assert err.splitlines()[-1] in (f"Interrupted while decoding; wrote {latent}",
                                    f"Interrupted after sampling all {sections} section(s); wrote {latent}")
    assert out == f"Wrote {latent}\n" and "Traceback" not in err
    # no partial mp4; the resume checkpoint stays (the video was not written: --resume decodes it)
    assert sorted(p.name for p in save.iterdir()) == [".clip.resume.safetensors", "clip_latent.safetensors"]
    assert f"Checkpoint kept: {save / '.clip.resume.safetensors'}; continue with `framepack generate --resume" in err


# --- 5. metadata records what was made -------------------------------------------------------------------------


def test_video_metadata_has_the_real_length(tmp_path, capsys):
    code, _ = gen(tmp_path, capsys, "--video_sections", "2", "--latent_window_size", "3", "--fps", "24",
                  "--output_name", "clip", "--output_type", "both")
    assert code == 0
    meta = read_video_metadata(tmp_path / "clip.mp4")
    frames = 4 * 3 * 2 + 1
    assert meta["fps"] == "24" and meta["video_seconds"] == str(round(frames / 24, 3)) == "1.042"
    assert json.loads(meta["framepack"])["video_sections"] == 2
    from safetensors import safe_open

    with safe_open(str(tmp_path / "clip_latent.safetensors"), "pt") as f:
        assert f.metadata()["video_seconds"] == "1.042"


def test_one_frame_png_has_no_video_keys(tmp_path, capsys):
    code, res = cli(["one-frame", *MODEL_ARGS, "--video_size", "48", "64", "--infer_steps", "2", "--image_path",
                     INPUTS / "start.png", "--control_image_path", INPUTS / "start.png", "--prompt", "x",
                     "--save_path", tmp_path, "--output_name", "edit"], capsys)
    assert code == 0, res.err
    meta = read_png_metadata(tmp_path / "edit_000.png")
    assert meta["seeds"] and meta["height"] == "48"
    assert not {"fps", "video_seconds"} & set(meta)
    settings = json.loads(meta["framepack"])
    assert "video_sections" not in settings and settings["one_frame_inference"]


# --- 6. results on stdout, one line per file; everything else on stderr ----------------------------------------


def test_generate_prints_one_wrote_line_per_file_on_stdout(tmp_path, capsys):
    code, res = gen(tmp_path, capsys, "--output_type", "latent_images", "--output_name", "run")
    assert code == 0
    pngs = sorted((tmp_path / "run").glob("*.png"))
    assert len(pngs) == 9
    assert res.out.splitlines() == [f"Wrote {tmp_path / 'run_latent.safetensors'}", *(f"Wrote {p}" for p in pngs)]
    assert "Wrote" not in res.err and "Loading DiT" in res.err and "Seed 3," in res.err


def test_every_writing_command_puts_wrote_lines_on_stdout(tmp_path, capsys):
    lat = tmp_path / "run_latent.safetensors"
    assert gen(tmp_path, capsys, "--output_type", "latent", "--output_name", "run")[0] == 0

    dec = tmp_path / "dec"
    code, res = cli(["generate", "--latent_path", lat, "--vae", M / "vae.safetensors", "--save_path", dec], capsys)
    assert code == 0 and res.out == f"Wrote {dec / 'run.mp4'}\n" and "Loading VAE" in res.err

    code, res = cli(["one-frame", *MODEL_ARGS, "--video_size", "48", "64", "--infer_steps", "1", "--image_path",
                     INPUTS / "start.png", "--control_image_path", INPUTS / "start.png", "--prompt", "x",
                     "--save_path", tmp_path, "--output_name", "edit"], capsys)
    assert code == 0 and res.out == f"Wrote {tmp_path / 'edit_000.png'}\n" and "Seed" in res.err

    code, res = cli(["kisekae", *MODEL_ARGS, "--video_size", "48", "64", "--infer_steps", "1", "--prompt", "x",
                     "--start", INPUTS / "start.png", "--reference", INPUTS / "ref_rgba.png", "--save_path", tmp_path,
                     "--output_name", "dress"], capsys)
    assert code == 0, res.err
    assert res.out == f"Wrote {tmp_path / 'dress_000.png'}\n"

    merged = tmp_path / "merged.safetensors"
    code, res = cli(["generate", "--dit", M / "dit_single.safetensors", "--lora_weight", M / "lora_tiny.safetensors",
                     "--save_merged_model", merged, "--save_path", tmp_path], capsys)
    assert code == 0 and res.out == f"Wrote {merged}\n" and "34 modules merged" in res.err

    conv = tmp_path / "conv.safetensors"
    code, res = cli(["lora", "convert", M / "lora_tiny.safetensors", "--to", "comfy", "--output", conv], capsys)
    assert code == 0 and res.out == f"Wrote {conv}\n" and res.err.startswith("Converted lora_tiny.safetensors")

    merged2 = tmp_path / "merged2.safetensors"
    code, res = cli(["lora", "merge", "--dit", M / "dit_single.safetensors", "--lora_weight",
                     M / "lora_tiny.safetensors", "--output", merged2], capsys)
    assert code == 0 and res.out == f"Wrote {merged2}\n" and "34 modules merged" in res.err


def test_json_summaries_go_to_stdout(capsys):
    code, res = cli(["inspect", M / "lora_tiny.safetensors", "--json"], capsys)
    assert code == 0 and json.loads(res.out)["kind"] == "lora" and res.err == ""
    code, res = cli(["lora", "inspect", M / "lora_tiny.safetensors", "--json"], capsys)
    assert code == 0 and json.loads(res.out)["format"] == "musubi-framepack" and res.err == ""


def test_interrupt_line_without_a_tracked_run(monkeypatch, capsys):
    """A Ctrl-C in a command that tracks nothing is still one line and exit 130 (click's `Aborted!` is not shown)."""
    from framepack_cli.cli import reports

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(reports, "inspect", interrupted)
    code, res = cli(["inspect", M / "lora_tiny.safetensors"], capsys)
    assert (code, res.err, res.out) == (130, "Interrupted\n", "")
