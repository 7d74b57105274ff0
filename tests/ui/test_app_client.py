"""Every endpoint of the `framepack ui` app through `gradio_client`, on a live app (127.0.0.1, a free port) with a
stand-in Pipeline; and the file routes, which serve nothing outside --save_path."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from framepack_cli.errors import FramepackError
from tests.conftest import INPUTS
from tests.ui.fakes import FakePipeline

pytestmark = pytest.mark.ui
gradio_client = pytest.importorskip("gradio_client", reason="the ui extra is not installed (pip install -e .[ui])")
from gradio_client import Client, handle_file  # noqa: E402

from tests.ui.live import serve_fake  # noqa: E402

FORM = dict(negative_prompt="", length_unit="sections", seconds=5, sections=2, f1=False, end_image=None, seed=42,
            steps=3, guidance=10, window=9, resolution="48x64", cache="off", seed_mode="fixed", seed_list="",
            loras=[], lora_multipliers={}, timeline={})


def submit(c: Client, image=None, prompt="a cat", **kw):
    f = {**FORM, **kw}
    return c.predict(handle_file(str(image)) if image else None, prompt, f["negative_prompt"], f["length_unit"],
                     f["seconds"], f["sections"], f["f1"], f["end_image"], f["seed"], f["steps"], f["guidance"],
                     f["window"], f["resolution"], f["cache"], f["seed_mode"], f["seed_list"], f["loras"],
                     f["lora_multipliers"], f["timeline"], api_name="/submit_generate")


def wait_state(c: Client, job_id: str, state: str, timeout: float = 20):
    end = time.time() + timeout
    while time.time() < end:
        line, preview, video = c.predict(job_id, api_name="/job_status")
        if line.startswith(f"Job {job_id}: {state}"):
            return line, preview, video
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never became {state}: {line}")


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    pipe = FakePipeline()
    with serve_fake(tmp_path / "out", pipe) as (url, state):
        yield Client(url, verbose=False), state, pipe, url


def test_the_endpoints_are_named(app):
    c, *_ = app
    names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/submit_generate", "/job_status", "/poll", "/queue_list", "/cancel_job", "/move_job_up",
                     "/move_job_down", "/resume_job", "/submit_one_frame", "/one_frame_status", "/one_frame_poll",
                     "/outputs_list", "/output_settings", "/load_settings", "/refresh_loras", "/job_details",
                     "/load_job_settings"}


def test_submit_generate_runs_the_job_and_shows_preview_and_video(app, tmp_path):
    c, state, pipe, _ = app
    job_id, status = submit(c, INPUTS / "start.png", steps=4, cache="TeaCache")
    assert re.fullmatch(r"Queued job [0-9a-f]{12} \(seed 42; \d ahead of it\)", status)
    line, preview, video = wait_state(c, job_id, "done")
    assert line == f"Job {job_id}: done ({state.queue.get(job_id).message})"
    assert Path(preview).read_bytes()[:4] == b"\x89PNG" and Path(video).read_bytes()[4:8] == b"ftyp"
    (call,) = pipe.calls
    assert (call["prompt"], call["sections"], call["seed"], call["infer_steps"], call["video_size"]) == (
        "a cat", 2, 42, 4, (48, 64))
    assert call["teacache_thresh"] == 0.15 and call["embedded_cfg_scale"] == 10.0 and "guidance_scale" not in call
    assert call["latent_window_size"] == 9
    uploads = tmp_path / "out" / ".framepack-ui" / "uploads"
    assert Path(call["image"]).parent == uploads and re.fullmatch(r"[0-9a-f]{32}\.png", Path(call["image"]).name)
    (mp4,) = state.queue.get(job_id).files
    assert Path(mp4).parent == tmp_path / "out" and Path(mp4).exists()
    listed = c.predict(api_name="/queue_list")
    assert listed["data"][0][:3] == [job_id, "generate", "done"]


def test_bad_input_is_one_readable_line_and_queues_nothing(app):
    c, state, pipe, _ = app
    job, status = submit(c, resolution="47x64")
    assert status == "**Error:** Resolution: height and width must be positive multiples of 16, got 47x64; try 48x64"
    assert state.queue.jobs() == []
    _, status = submit(c, prompt="bad")  # refused by the Pipeline's own validation, before queueing
    assert status == "**Error:** --prompt: 'bad' is not allowed here; say something else"
    _, status = submit(c, seed=2**33)
    assert status == "**Error:** Seed: 8589934592 must be an integer from 0 to 4294967295; -1 for a random one"
    assert "Traceback" not in status and state.queue.jobs() == []


def test_a_failing_job_shows_its_message(app):
    c, *_ = app
    job_id, _ = submit(c, prompt="fail")
    line, _, video = wait_state(c, job_id, "failed")
    assert line == f"Job {job_id}: failed (--video_size: 16 16 is too small; use 48 64 or more)" and video is None


def test_queue_two_cancel_one_reorder_and_resume(app):
    c, state, pipe, _ = app
    import threading

    gate = threading.Event()
    pipe.gate = gate  # the first job holds at its first step
    try:
        first, _ = submit(c, prompt="first")
        end = time.time() + 10
        while state.worker.progress is None and time.time() < end:
            time.sleep(0.05)
        a, _ = submit(c, prompt="a")
        b, _ = submit(c, prompt="b")
        msg, table = c.predict(b, api_name="/move_job_up")
        assert msg == f"Moved job {b} up" and [r[0] for r in table["data"]][:3] == [first, b, a]
        msg, table = c.predict(b, api_name="/move_job_down")
        assert [r[0] for r in table["data"]][:3] == [first, a, b]
        msg, _ = c.predict(a, api_name="/cancel_job")
        assert msg == f"job {a} cancelled"
        msg, _ = c.predict(first, api_name="/cancel_job")
        assert msg == f"job {first}: stopping at the next step"
    finally:
        gate.set()
    wait_state(c, first, "cancelled")
    wait_state(c, b, "done")
    assert [call["prompt"] for call in pipe.calls] == ["first", "b"]
    msg, _ = c.predict(a, api_name="/resume_job")
    assert msg == f"Job {a}: queued again; no checkpoint, runs from the start"
    wait_state(c, a, "done")
    msg, _ = c.predict(b, api_name="/resume_job")  # done: one line, no traceback
    assert msg == f"**Error:** job {b} is done: only failed, cancelled, interrupted jobs can be resumed"
    msg, _ = c.predict("nope", api_name="/cancel_job")
    assert msg == "**Error:** job 'nope': no such job in the queue"


def test_poll_sends_the_preview_and_video_once(app):
    c, *_ = app
    job_id, _ = submit(c, INPUTS / "start.png")
    wait_state(c, job_id, "done")
    # the States of the session stay server-side: status, preview, video, queue, outputs gallery
    line, preview, video, table, gallery = c.predict(job_id, api_name="/poll")
    assert line.startswith(f"Job {job_id}: done") and preview and video and table["data"][0][0] == job_id
    assert [Path(g["video"]).suffix for g in gallery] == [".mp4"]
    again = c.predict(job_id, api_name="/poll")
    assert again[1] == again[2] == again[4] == {"__type__": "update"}  # unchanged: not sent again


def test_file_routes_serve_outputs_only(app, tmp_path):
    c, state, _, url = app
    job_id, _ = submit(c, INPUTS / "start.png")
    _, _, video = wait_state(c, job_id, "done")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")

    def get(path):
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""

    (mp4,) = state.queue.get(job_id).files
    assert get(mp4)[0] == 200  # an output under --save_path
    for bad in (secret, "/etc/passwd", f"{tmp_path}/out/../secret.txt", Path(__file__).resolve()):
        status, body = get(bad)
        assert status in (403, 404) and b"secret" not in body and b"root:" not in body, bad


def test_auth_is_required_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    with serve_fake(tmp_path / "out", FakePipeline(), auth=("me", "a-long-password")) as (url, _state):
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error for a login page
            Client(url, verbose=False).predict(api_name="/queue_list")
        try:
            with urllib.request.urlopen(f"{url}gradio_api/info", timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status in (401, 403)
        c = Client(url, auth=("me", "a-long-password"), verbose=False)
        assert c.predict(api_name="/queue_list")["data"] == []  # logged in: the (empty) queue


def test_a_seed_list_queues_one_job_per_seed(app):
    c, state, pipe, _ = app
    first, status = submit(c, prompt="many", seed_mode="list", seed_list="10-12 20")
    jobs = [j for j in state.queue.jobs() if j.options["prompt"] == "many"]
    ids = [j.id for j in sorted(jobs, key=lambda j: j.created)]
    assert first == ids[0] and len(ids) == 4
    assert re.fullmatch(rf"Queued 4 jobs \(seeds 10, 11, 12, 20; \d ahead of the first\): {', '.join(ids)}", status)
    for jid in ids:
        wait_state(c, jid, "done")
    assert sorted(call["seed"] for call in pipe.calls) == [10, 11, 12, 20]
    assert len({call["output_name"] for call in pipe.calls}) == 4  # one output each
    table = c.predict(api_name="/queue_list")["data"]
    assert {r[0] for r in table} >= set(ids)  # each visible in the queue
    _, status = submit(c, seed_mode="list", seed_list="3-1")
    assert status == "**Error:** Seeds: '3-1' ends before it starts; write 1-3"
    job, status = submit(c, prompt="r", seed_mode="random", seed=42)
    assert state.queue.get(job).options["seed"] == int(re.search(r"seed (\d+);", status).group(1))


def test_timeline_rows_become_section_prompts_and_images(app, tmp_path):
    c, state, pipe, _ = app
    state.uploads.mkdir(parents=True, exist_ok=True)
    mid = state.uploads / "0123abcd.png"
    mid.write_bytes((INPUTS / "section.png").read_bytes())
    tl = {"prompts": {"1": "a dog"}, "images": {"1": str(mid)}}
    job_id, status = submit(c, INPUTS / "start.png", prompt="a cat", timeline=tl)
    assert status.startswith(f"Queued job {job_id}")
    wait_state(c, job_id, "done")
    (call,) = pipe.calls
    assert call["prompt"] == {0: "a cat", 1: "a dog"}
    assert list(call["image"]) == [0, 1] and call["image"][1] == str(mid)
    assert Path(call["image"][0]).parent == state.uploads  # the start image, stored under a generated name
    secret = tmp_path / "secret.png"
    secret.write_bytes((INPUTS / "section.png").read_bytes())
    _, status = submit(c, INPUTS / "start.png", timeline={"images": {"1": str(secret)}})
    assert status == ("**Error:** Timeline: the image of section 1 is not an upload of this app; upload it in the "
                      "section's row")


@pytest.fixture
def lora_app(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes(b"x")
    pipe = FakePipeline()
    with serve_fake(tmp_path / "out", pipe, lora_dir=loras) as (url, state):
        yield Client(url, verbose=False), state, pipe, loras


def test_picked_loras_go_to_the_job_with_their_multipliers(lora_app, tmp_path):
    c, state, pipe, loras = lora_app
    (loras / "later.safetensors").write_bytes(b"x")
    update = c.predict([], api_name="/refresh_loras")  # the folder read again
    assert [ch[0] for ch in update["choices"]] == ["later.safetensors", "style.safetensors"]
    assert update["label"] == f"LoRAs in {loras.resolve()} (several allowed; a multiplier each)"
    job_id, _ = submit(c, loras=["style.safetensors", "later.safetensors"],
                       lora_multipliers={"style.safetensors": 0.7})
    wait_state(c, job_id, "done")
    (call,) = pipe.calls
    assert call["lora_weight"] == [str((loras / "style.safetensors").resolve()),
                                   str((loras / "later.safetensors").resolve())]
    assert call["lora_multiplier"] == [0.7, 1.0]
    outside = tmp_path / "evil.safetensors"
    outside.write_bytes(b"x")
    for name in (str(outside), "../evil.safetensors"):  # only the listed names get past the picker (then ours)
        with pytest.raises(Exception, match="is not in the list of choices"):
            submit(c, loras=[name])
    assert len(state.queue.jobs()) == 1


def test_a_lora_that_fails_to_load_is_the_jobs_one_line_error(lora_app):
    c, state, pipe, loras = lora_app

    def broken(*, callback, save_path, preview, **options):
        raise FramepackError(f"--lora_weight: {options['lora_weight'][0]} is not a LoRA file (no lora_down weights)")

    pipe.generate = broken
    job_id, _ = submit(c, loras=["style.safetensors"])
    line, _, video = wait_state(c, job_id, "failed")
    want = f"--lora_weight: {(loras / 'style.safetensors').resolve()} is not a LoRA file (no lora_down weights)"
    assert line == f"Job {job_id}: failed ({want})" and video is None
    details = c.predict(job_id, api_name="/job_details")
    assert details.startswith(f"**Job {job_id}** (generate): **failed**\n\nError: {want}")
    assert "- lora_weight: `style.safetensors`" in details


def test_load_a_jobs_settings_into_the_form(lora_app):
    c, state, pipe, loras = lora_app
    state.uploads.mkdir(parents=True, exist_ok=True)
    mid = state.uploads / "0123abcd.png"
    mid.write_bytes((INPUTS / "section.png").read_bytes())
    job_id, _ = submit(c, INPUTS / "start.png", prompt="a cat", seed=77, steps=5, cache="MagCache",
                       timeline={"prompts": {"1": "a dog"}, "images": {"1": str(mid)}},
                       loras=["style.safetensors"], lora_multipliers={"style.safetensors": 0.25})
    wait_state(c, job_id, "done")
    out = c.predict(job_id, api_name="/load_job_settings")
    generate, one_frame, said = out[:20], out[20:30], out[30]
    assert said == f"Loaded the settings of job {job_id} into the Generate tab"
    assert Path(generate[0]).read_bytes() == (INPUTS / "start.png").read_bytes()
    assert list(generate[1:18]) == ["a cat", "", "sections", 5, 2, False, None, 77, 5, 10, 9, "48x64", "MagCache",
                                    "fixed", "", ["style.safetensors"], {"style.safetensors": 0.25}]
    assert generate[18] == {"prompts": {"1": "a dog"}, "images": {"1": str(mid)}}
    assert all(v == {"__type__": "update"} for v in one_frame)  # the other tab is left alone
    failed, _ = submit(c, prompt="fail", seed_mode="list", seed_list="3")
    wait_state(c, failed, "failed")
    assert c.predict(failed, api_name="/load_job_settings")[8] == 3  # a failed job loads too
    assert c.predict("nope", api_name="/load_job_settings")[-1] == "**Error:** job 'nope': no such job in the queue"
    queued = state.queue.add("one_frame", {"prompt": "edit", "image": str(mid), "control_images": [str(mid)],
                                          "seed": 5, "infer_steps": 3, "video_size": [48, 64],
                                          "one_frame_inference": "target_index=2"})
    out = c.predict(queued.id, api_name="/load_job_settings")
    assert all(v == {"__type__": "update"} for v in out[:20])
    recipe, start, control, prompt, inference, seed, steps, res, lo, mults = out[20:30]
    assert (recipe, control, prompt, inference, seed, steps, res, lo, mults) == (
        "One-frame", None, "edit", "target_index=2", 5, 3, "48x64", [], {})
    assert out[30] == f"Loaded the settings of job {queued.id} into the One-frame tab (paint the masks again)"


def test_the_one_frame_tab_takes_loras_too(lora_app):
    c, state, pipe, loras = lora_app
    editor = {"background": handle_file(str(INPUTS / "start.png")), "layers": [],
              "composite": handle_file(str(INPUTS / "start.png"))}
    job_id, status = c.predict("One-frame", editor, None, "a cat", "", 4, 2, "48x64", ["style.safetensors"],
                               {"style.safetensors": -0.5}, api_name="/submit_one_frame")
    assert status == f"Queued job {job_id} (One-frame, seed 4)"
    o = state.queue.get(job_id).options
    assert o["lora_weight"] == [str((loras / "style.safetensors").resolve())] and o["lora_multiplier"] == [-0.5]
