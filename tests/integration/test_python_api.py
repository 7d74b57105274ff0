"""The Python API (`framepack_cli.api.Pipeline`, also `import framepack`): the same latents as the command line,
models loaded once, events, cancel and resume, and the command line's error messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from framepack_cli.api import Cancelled, Pipeline
from framepack_cli.errors import FramepackError
from tests.conftest import INPUTS, MODEL_ARGS, MODELS
from tests.integration.test_generate_cli import cli

START = INPUTS / "start.png"
SMALL = {"video_size": (32, 48), "infer_steps": 2, "latent_window_size": 2}
CLI_SMALL = ["--video_size", "32", "48", "--infer_steps", "2", "--latent_window_size", "2"]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_files(MODELS / "dit_single.safetensors", MODELS / "vae.safetensors",
                               MODELS / "llava_llama3_tiny.safetensors", MODELS / "clip_l_tiny.safetensors",
                               MODELS / "sigclip_tiny.safetensors", device="cpu")


def cli_latent(tmp_path, capsys, command, *args):
    code, out = cli([command, *MODEL_ARGS, *CLI_SMALL, *args, "--save_path", tmp_path / "cli",
                     "--output_type", "latent", "--output_name", "cli"], capsys)
    assert code == 0, out.err
    return load_file(str(tmp_path / "cli" / "cli_latent.safetensors"))["latent"]


def test_generate_equals_the_command_line(pipe, tmp_path, capsys):
    events = []
    res = pipe.generate(START, "a cat", sections=2, seed=7, callback=events.append, **SMALL)
    want = cli_latent(tmp_path, capsys, "generate", "--image_path", START, "--prompt", "a cat", "--video_sections",
                      "2", "--seed", "7")
    assert res.seed == 7 and res.files == []
    assert torch.equal(res.latent, want)
    kinds = [e.kind for e in events]
    assert kinds.count("section_start") == 2 and kinds.count("section_end") == 2 and kinds.count("step") == 4
    ends = [e for e in events if e.kind == "section_end"]
    assert [e.section for e in ends] == [0, 1] and all(e.sections == 2 for e in ends)
    assert ends[-1].latent.shape == res.latent.shape and ends[-1].eta_s == 0
    # the same prompt again: nothing loads again (the text encoding is remembered, the models stay)
    again = []
    res2 = pipe.generate(START, "a cat", sections=2, seed=7, callback=again.append, **SMALL)
    assert torch.equal(res2.latent, want)
    assert not [e.text for e in again if e.kind == "message" and e.text.startswith("Loading")]


def test_files_and_frames(pipe, tmp_path):
    events = []
    res = pipe.generate(START, {0: "a cat", -1: "a dog"}, sections=2, seed=3, save_path=tmp_path / "out",
                        output_type="latent_images", output_name="clip", callback=events.append, **SMALL)
    assert res.files[0] == tmp_path / "out" / "clip_latent.safetensors"
    pngs = sorted((tmp_path / "out" / "clip").glob("*.png"))
    assert sorted(res.files[1:]) == pngs and len(pngs) == 1 + 4 * (res.latent.shape[1] - 1)
    assert [p for e in events if e.kind == "written" for p in e.files] == res.files
    assert torch.equal(load_file(str(tmp_path / "out" / "clip_latent.safetensors"))["latent"], res.latent)
    frames = res.frames()
    assert frames.dtype == np.uint8 and frames.shape == (len(pngs), 32, 48, 3)
    assert np.array_equal(frames[0], np.asarray(Image.open(pngs[0]).convert("RGB")))
    assert np.array_equal(frames[-1], np.asarray(Image.open(pngs[-1]).convert("RGB")))
    assert not list((tmp_path / "out").glob(".*resume*"))  # the checkpoint goes once the files are written


def test_nothing_written_without_save_path(pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe.generate(START, "a cat", sections=1, seed=1, **SMALL)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", preview="auto", **SMALL)
    assert e.value.message == "preview: needs a save_path (the job writes no files without one)"


def test_one_frame_and_kisekae_equal_the_command_line(pipe, tmp_path, capsys):
    res = pipe.one_frame(START, "a cat", seed=5, **SMALL)
    want = cli_latent(tmp_path / "a", capsys, "one-frame", "--image_path", START, "--control_image_path", START,
                      "--prompt", "a cat", "--seed", "5")
    assert torch.equal(res.latent, want)
    res = pipe.kisekae(START, INPUTS / "ref_rgba.png", "a coat", seed=5, **SMALL)
    want = cli_latent(tmp_path / "b", capsys, "kisekae", "--start", START, "--reference", INPUTS / "ref_rgba.png",
                      "--prompt", "a coat", "--seed", "5")
    assert torch.equal(res.latent, want)
    assert res.frames().shape == (1, 32, 48, 3)


def test_cancel_keeps_the_checkpoint_and_resume_is_exact(pipe, tmp_path):
    whole = pipe.generate(START, "a cat", sections=3, seed=11, **SMALL)

    def stop_at_third(event):
        if event.kind == "section_start" and event.section == 2:
            raise Cancelled()

    out = tmp_path / "out"
    with pytest.raises(Cancelled) as e:
        pipe.generate(START, "a cat", sections=3, seed=11, save_path=out, output_type="latent", output_name="v",
                      callback=stop_at_third, **SMALL)
    assert e.value.checkpoint == str(out / ".v.resume.safetensors")
    assert not (out / "v_latent.safetensors").exists()
    steps = []  # the checkpoint holds the settings: nothing else needs repeating
    res = pipe.generate(save_path=out, resume=e.value.checkpoint, callback=steps.append)
    assert [ev.section for ev in steps if ev.kind == "section_start"] == [2]  # only the section left
    assert torch.equal(res.latent, whole.latent)
    assert not (out / ".v.resume.safetensors").exists()


def test_pipe_cancel_stops_at_the_next_step(pipe, monkeypatch):
    def cancel_after_first_step(event):
        if event.kind == "step" and event.step == 1:
            pipe.cancel()

    released = []
    models = pipe._session.models
    real = models.release
    monkeypatch.setattr(models, "release", lambda name: released.append(name) or real(name))
    with pytest.raises(Cancelled) as e:
        pipe.generate(START, "a cat", sections=2, seed=2, callback=cancel_after_first_step, **{**SMALL,
                                                                                               "infer_steps": 3})
    frames, tb = [], e.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert e.value.__context__ is None and frames[-1] == "_run"  # no sampler frame (nor its tensors) is held
    assert {"dit", "text", "image_encoder"} <= set(released)  # the models settle as after a finished job
    assert pipe.generate(START, "a cat", sections=1, seed=2, **SMALL).latent.shape[1] > 0  # the next job runs


def test_errors_are_the_command_lines(pipe, tmp_path, capsys):
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", infer_steps="0")  # the value as the command line gets it: the same line
    code, out = cli(["generate", *MODEL_ARGS, "--image_path", START, "--prompt", "a cat", "--infer_steps", "0",
                     "--save_path", tmp_path], capsys)
    assert code == 2 and out.err.strip() == f"Error: {e.value.message}"
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", infer_steps=0)
    assert e.value.message == "--infer_steps: 0 is too small; expected a value >= 1"
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", fp8=True)
    assert e.value.message == ("fp8: a model setting, fixed when the Pipeline was made (False); pass it to "
                               "Pipeline.from_files")
    pipe.options("generate", prompt="x", save_path=".", fp8=False, device="cpu")  # the same values are fine
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", seed="10-13")
    assert e.value.message == "seed: one seed per call; loop over the seeds (the models stay loaded)"
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", lora_weight=[tmp_path / "none.safetensors"])
    assert e.value.message.startswith("--lora_weight: file not found")
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", inference_steps=3)
    assert e.value.message == ("inference_steps: not an option of framepack generate (see `framepack generate "
                               "--help`; options are spelled with underscores)")
    with pytest.raises(FramepackError) as e:
        pipe.generate(START, "a cat", from_file="prompts.txt")
    assert e.value.message == ("from_file: not an option of a Pipeline job; loop over pipe.generate(...) calls "
                               "(the models stay loaded)")
    with pytest.raises(FramepackError) as e:
        pipe.generate(tmp_path / "missing.png", "a cat")
    assert e.value.message.startswith("--image_path: file not found")


def loads(events):
    return [e.text for e in events if e.kind == "message" and e.text.startswith("Loading DiT")]


def test_loras_per_job_reload_the_dit(pipe, tmp_path, capsys):
    lora = MODELS / "lora_tiny.safetensors"
    plain = pipe.generate(START, "a cat", sections=1, seed=4, **SMALL)
    events = []
    res = pipe.generate(START, "a cat", sections=1, seed=4, lora_weight=[lora], lora_multiplier=[0.7],
                        callback=events.append, **SMALL)
    want = cli_latent(tmp_path, capsys, "generate", "--image_path", START, "--prompt", "a cat", "--video_sections",
                      "1", "--seed", "4", "--lora_weight", lora, "--lora_multiplier", "0.7")
    assert torch.equal(res.latent, want) and not torch.equal(res.latent, plain.latent)
    assert len(loads(events)) == 1 and any("34 modules merged" in (e.text or "") for e in events)
    events.clear()  # the same LoRA again: the DiT stays; none: it loads again without
    pipe.generate(START, "a cat", sections=1, seed=4, lora_weight=[lora], lora_multiplier=[0.7],
                  callback=events.append, **SMALL)
    assert loads(events) == []
    assert torch.equal(pipe.generate(START, "a cat", sections=1, seed=4, callback=events.append, **SMALL).latent,
                       plain.latent)
    assert len(loads(events)) == 1


def test_f1_jobs_use_the_f1_dit(tmp_path, capsys):
    sharded = MODELS / "dit_sharded"
    first = sorted(sharded.glob("*.safetensors"))[0]
    p = Pipeline.from_files(MODELS / "dit_single.safetensors", MODELS / "vae.safetensors",
                            MODELS / "llava_llama3_tiny.safetensors", MODELS / "clip_l_tiny.safetensors",
                            MODELS / "sigclip_tiny.safetensors", device="cpu", f1_dit=first)
    events = []
    res = p.generate(START, "a cat", sections=2, seed=9, f1=True, callback=events.append, **SMALL)
    assert loads(events) == [f"Loading DiT {first}"]
    want = cli_latent(tmp_path, capsys, "generate", "--image_path", START, "--prompt", "a cat", "--video_sections",
                      "2", "--seed", "9", "--f1")
    assert torch.equal(res.latent, want)  # the same weights in shards
    events.clear()
    p.generate(START, "a cat", sections=1, seed=9, callback=events.append, **SMALL)
    assert loads(events) == [f"Loading DiT {MODELS / 'dit_single.safetensors'}"]


def test_keep_text_encoders_and_close(tmp_path):
    events = []
    with Pipeline.from_files(MODELS / "dit_single.safetensors", MODELS / "vae.safetensors",
                             MODELS / "llava_llama3_tiny.safetensors", MODELS / "clip_l_tiny.safetensors",
                             MODELS / "sigclip_tiny.safetensors", device="cpu", keep_text_encoders=True) as p:
        p.generate(START, "a cat", sections=1, seed=1, **SMALL)
        p.generate(START, "a new prompt", sections=1, seed=1, callback=events.append, **SMALL)
        assert p._session.models._loaded.keys() == {"dit", "vae", "image_encoder", "text"}
    assert not [e.text for e in events if e.kind == "message" and e.text.startswith("Loading")]
    assert p._session.models._loaded == {}


def test_options_take_section_forms(pipe):
    opts = pipe.options("generate", prompt={0: "a cat", 2: "a dog"}, image={"0": START, "1": START}, seed=1,
                        save_path=".")
    assert opts.prompt == "0:a cat;;;2:a dog" and opts.image_path == f"0:{START};;;1:{START}" and opts.seed == 1
    with pytest.raises(FramepackError) as e:
        pipe.options("generate", prompt={"first": "a cat"}, save_path=".")
    assert e.value.message == "prompt: section keys must be integers (got 'first')"


def test_from_files_errors():
    with pytest.raises(FramepackError) as e:  # models left out are looked for like the command line does
        Pipeline.from_files(MODELS / "dit_single.safetensors", MODELS / "vae.safetensors", device="cpu")
    assert e.value.message.startswith("--text_encoder1, --text_encoder2, --image_encoder: not given and not found")
    assert "framepack download" in e.value.message
    with pytest.raises(FramepackError) as e:
        Pipeline.from_files(MODELS / "vae.safetensors", MODELS / "vae.safetensors",
                            MODELS / "llava_llama3_tiny.safetensors", MODELS / "clip_l_tiny.safetensors",
                            MODELS / "sigclip_tiny.safetensors", device="cpu")
    assert e.value.message.startswith("--dit: ")
    with pytest.raises(FramepackError) as e:
        Pipeline.from_files(device="cpu", interactive=True)
    assert e.value.message == "interactive: not a Pipeline setting; call pipe.generate(...) for each prompt"


def test_the_command_line_runs_through_the_session(tmp_path, capsys, monkeypatch):
    from framepack_cli.engine import session

    calls = []
    real = session.Session.run

    def spy(self, opts, *a, **kw):
        calls.append(opts.prompt)
        return real(self, opts, *a, **kw)

    monkeypatch.setattr(session.Session, "run", spy)
    cli_latent(tmp_path, capsys, "one-frame", "--image_path", START, "--prompt", "a cat", "--seed", "5")
    assert calls == ["a cat"]


def test_import_framepack_loads_no_torch():
    code = ("import sys, framepack; assert framepack.Pipeline.__module__ == 'framepack_cli.api'; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
