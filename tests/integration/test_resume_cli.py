"""`--resume` after a crash: per-section checkpoints, SIGKILL mid-run, bit-identical latents, batch resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framepack_cli.cli.app import main
from framepack_cli.options.resume import header_metadata
from tests.conftest import INPUTS, MODEL_ARGS, MODELS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# 4 sections of 3 latent frames, enough steps that a section takes a moment (the kill lands between sections)
RUN = ["--video_size", "32", "48", "--infer_steps", "6", "--video_sections", "4", "--latent_window_size", "3",
       "--image_path", INPUTS / "start.png", "--prompt", "a cat", "--output_type", "latent"]


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def gen(save, *extra):
    return ["generate", *MODEL_ARGS, *RUN, "--save_path", save, *extra]


def latent(path: Path) -> torch.Tensor:
    return load_file(str(path))["latent"]


def start(args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "framepack_cli", *[str(a) for a in args]], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after(proc: subprocess.Popen, ckpt: Path, sections: int) -> int:
    """SIGKILL `proc` once `ckpt` records `sections` done; returns the sections the file says are done."""
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        if ckpt.exists():
            try:
                done = int(header_metadata(ckpt)["next_section"])
            except (ValueError, KeyError, OSError):
                done = 0
            if done >= sections:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(header_metadata(ckpt)["next_section"])


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("f1", [False, True])
def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys, f1):
    extra = ["--seed", "11", "--output_name", "clip", *(["--f1"] if f1 else [])]
    code, _, err = cli(gen(tmp_path / "full", *extra), capsys)
    assert code == 0, err
    assert not list((tmp_path / "full").glob(".*"))  # the checkpoint is gone once the video is written
    cut = tmp_path / "cut"
    cut.mkdir()
    proc = start(gen(cut, *extra), tmp_path)
    ckpt = cut / ".clip.resume.safetensors"
    done = kill_after(proc, ckpt, 2)
    assert 2 <= done < 4 and not (cut / "clip_latent.safetensors").exists()
    state = load_file(str(ckpt))
    assert state["rng_state"].dtype == torch.uint8 and state["position"].tolist()[0] == done
    code, out, err = cli(["generate", "--resume", cut], capsys)  # settings and models from the checkpoint
    assert code == 0, err
    assert f"Resuming {ckpt}: {done} of 4 section(s) done, continuing with section {done + 1}" in err
    assert out.strip() == f"Wrote {cut / 'clip_latent.safetensors'}"
    assert torch.equal(latent(tmp_path / "full" / "clip_latent.safetensors"), latent(cut / "clip_latent.safetensors"))
    assert not ckpt.exists()


def test_random_seed_is_kept_and_same_command_line_may_be_repeated(tmp_path, capsys):
    """No --seed: the checkpoint keeps the drawn one; repeating the run's own flags with --resume is allowed."""
    proc = start(gen(tmp_path, "--output_name", "r"), tmp_path)
    ckpt = tmp_path / ".r.resume.safetensors"
    kill_after(proc, ckpt, 1)
    seed = json.loads(header_metadata(ckpt)["settings"])["seed"]
    code, _, err = cli([*gen(tmp_path, "--output_name", "r"), "--resume", ckpt, "--device", "cpu"], capsys)
    assert code == 0, err
    code, _, err = cli(gen(tmp_path / "again", "--output_name", "r", "--seed", seed), capsys)
    assert code == 0, err
    assert torch.equal(latent(tmp_path / "r_latent.safetensors"), latent(tmp_path / "again" / "r_latent.safetensors"))


def write_checkpoint(tmp_path, capsys, *extra) -> Path:
    """A checkpoint as a crash leaves it: the run's first section done (written by the real loop)."""
    from framepack_cli.engine import resume

    real = resume.SectionCheckpoint.save

    def save_then_crash(self, nxt, n, *a):
        real(self, nxt, n, *a)
        raise KeyboardInterrupt

    resume.SectionCheckpoint.save = save_then_crash
    try:
        code, _, err = cli(gen(tmp_path, "--seed", "3", "--output_name", "k", *extra), capsys)
    finally:
        resume.SectionCheckpoint.save = real
    assert code == 130, err
    ckpt = tmp_path / ".k.resume.safetensors"
    assert ckpt.exists()
    assert err.splitlines()[-2:] == [
        f"Checkpoint kept: {ckpt}; continue with `framepack generate --resume {ckpt}` (or --resume {tmp_path} for "
        "the newest there)", "Interrupted after section 1 of 4; nothing written"]
    return ckpt


def test_conflicting_flag_is_one_line_exit_2(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path, capsys)
    code, _, err = cli(["generate", "--resume", ckpt, "--infer_steps", "9"], capsys)
    assert code == 2
    assert (f"--resume: --infer_steps 9 (the checkpoint's: 6) would change the result of the interrupted run in "
            f"{ckpt}; drop it to resume, or start a new run without --resume") in err
    assert ckpt.exists()


def test_changed_model_file_is_refused(tmp_path, capsys):
    import shutil

    ckpt = write_checkpoint(tmp_path, capsys)
    other = tmp_path / "vae.safetensors"
    shutil.copy(MODELS / "vae.safetensors", other)
    code, _, err = cli(["generate", "--resume", ckpt, "--vae", other], capsys)  # same file elsewhere: fine
    assert code == 0, err
    ckpt = write_checkpoint(tmp_path, capsys)
    with open(other, "ab") as f:
        f.write(b"\0" * 16)
    code, _, err = cli(["generate", "--resume", ckpt, "--vae", other], capsys)
    assert code == 2
    orig = (MODELS / "vae.safetensors").resolve()
    size = orig.stat().st_size
    assert (f"--resume: --vae {other} is not the file the checkpoint was made with ({size + 16} bytes, the "
            f"checkpoint's had {size}); pass --vae with the original file ({orig})") in err


def test_no_resume_file_writes_none(tmp_path, capsys):
    from framepack_cli.engine import resume

    seen = []
    real = resume.SectionCheckpoint.save
    resume.SectionCheckpoint.save = lambda self, *a: seen.append(1) or real(self, *a)
    try:
        code, _, err = cli(gen(tmp_path, "--seed", "1", "--no_resume_file", "--video_sections", "2"), capsys)
    finally:
        resume.SectionCheckpoint.save = real
    assert code == 0, err
    assert seen == [] and not list(tmp_path.glob(".*"))


def test_several_checkpoints_pick_the_newest_and_say_so(tmp_path, capsys):
    a = write_checkpoint(tmp_path, capsys)
    b = a.with_name(".old.resume.safetensors")
    a.rename(b)
    os.utime(b, (time.time() - 100, time.time() - 100))
    a = write_checkpoint(tmp_path, capsys)
    code, _, err = cli(["generate", "--resume", tmp_path], capsys)
    assert code == 0, err
    assert (f"Resuming {a}, the newest of 2 checkpoints in {tmp_path} (also there: .old.resume.safetensors); "
            "pass one to --resume to pick another") in err
    assert b.exists() and not a.exists()


def test_nothing_to_resume(tmp_path, capsys):
    code, _, err = cli(["generate", "--resume", tmp_path], capsys)
    assert code == 2
    assert f"--resume: {tmp_path} holds no checkpoint" in err


def test_batch_resume_skips_written_jobs_and_continues_the_interrupted_one(tmp_path, capsys):
    prompts = tmp_path / "jobs.txt"
    prompts.write_text("a cat --d 1\na dog --d 2\na bird --d 3\n", encoding="utf-8")
    batch = ["generate", *MODEL_ARGS, *RUN, "--from_file", prompts]
    code, _, err = cli([*batch, "--save_path", tmp_path / "full"], capsys)
    assert code == 0, err
    assert not list((tmp_path / "full").glob(".*"))
    cut = tmp_path / "cut"
    cut.mkdir()
    proc = start([*batch, "--save_path", cut], tmp_path)
    record = cut / ".jobs.txt.batch.resume.json"
    deadline = time.time() + 300
    # the second job's checkpoint with 2 sections done (the first job is sampled, not yet written: phase 4)
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        jobs = json.loads(record.read_text()).get("jobs", {}) if record.exists() else {}
        second = cut / jobs["jobs.txt line 2"]["checkpoint"] if "jobs.txt line 2" in jobs else None
        try:
            if second is not None and second.exists() and int(header_metadata(second)["next_section"]) >= 2:
                break
        except (ValueError, KeyError, OSError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, out, err = cli(["generate", "--resume", cut], capsys)
    assert code == 0, err
    assert "Resuming" in err and "4 of 4 section(s) done, all sampled, decoding" in err  # line 1
    assert "Batch: 3 of 3 job(s) done" in err
    full = sorted((tmp_path / "full").glob("*_latent.safetensors"))
    mine = sorted(cut.glob("*_latent.safetensors"))
    assert len(full) == len(mine) == 3 and not list(cut.glob(".*"))
    by_seed = {header_metadata(p)["seeds"]: latent(p) for p in mine}
    for p in full:
        assert torch.equal(latent(p), by_seed[header_metadata(p)["seeds"]]), p.name


def test_changed_input_image_is_refused(tmp_path, capsys):
    import shutil

    img = tmp_path / "start.png"
    shutil.copy(INPUTS / "start.png", img)
    args = [a if a != INPUTS / "start.png" else img for a in gen(tmp_path, "--seed", "3", "--output_name", "k")]
    from framepack_cli.engine import resume

    real = resume.SectionCheckpoint.save

    def save_then_crash(self, *a):
        real(self, *a)
        raise KeyboardInterrupt

    resume.SectionCheckpoint.save = save_then_crash
    try:
        code, _, err = cli(args, capsys)
    finally:
        resume.SectionCheckpoint.save = real
    assert code == 130, err
    shutil.copy(INPUTS / "end.png", img)  # another picture under the same name
    code, _, err = cli(["generate", "--resume", tmp_path], capsys)
    assert code == 2
    assert err.strip() == (f"Error: --resume: {img.resolve()} changed since the checkpoint was made (another sha256): "
                           "the rest of the video would not match; restore it, or start a new run without --resume")
