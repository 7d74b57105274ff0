"""Every endpoint of the `framepack ui` app through `gradio_client`, on a live app (127.0.0.1, a free port) with a
stand-in Pipeline; and the file routes, which serve nothing outside --save_path."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import INPUTS
from tests.ui.fakes import FakePipeline

pytestmark = pytest.mark.ui
gradio_client = pytest.importorskip("gradio_client", reason="the ui extra is not installed (pip install -e .[ui])")
from gradio_client import Client, handle_file  # noqa: E402

from tests.ui.live import serve_fake  # noqa: E402

FORM = dict(negative_prompt="", length_unit="sections", seconds=5, sections=2, f1=False, end_image=None, seed=42,
            steps=3, guidance=10, window=9, resolution="48x64", cache="off")


def submit(c: Client, image=None, prompt="a cat", **kw):
    f = {**FORM, **kw}
    return c.predict(handle_file(str(image)) if image else None, prompt, f["negative_prompt"], f["length_unit"],
                     f["seconds"], f["sections"], f["f1"], f["end_image"], f["seed"], f["steps"], f["guidance"],
                     f["window"], f["resolution"], f["cache"], api_name="/submit_generate")


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
                     "/outputs_list", "/output_settings", "/load_settings"}


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
