"""The worker of `framepack ui` (framepack_cli.ui.worker) on a stand-in Pipeline: one job at a time, progress and
preview, done / failed (one line) / cancelled, and the checkpoint recorded for Resume."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from framepack_cli.ui.queue import JobQueue
from framepack_cli.ui.worker import Worker, error_line, format_eta
from tests.ui.fakes import FakeCancelled, FakePipeline

pytestmark = pytest.mark.ui


def make(tmp_path, pipe):
    app = tmp_path / "out" / ".framepack-ui"
    q = JobQueue(app)
    made = []

    def factory():
        made.append(1)
        return pipe

    return q, Worker(q, factory, tmp_path / "out", app, cancelled=FakeCancelled), made


def wait_for(cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_jobs_run_one_at_a_time_with_one_pipeline_and_end_done_with_their_files(tmp_path):
    pipe = FakePipeline()
    q, w, made = make(tmp_path, pipe)
    a = q.add("generate", {"prompt": "a", "output_name": "a", "seed": 5})
    b = q.add("generate", {"prompt": "b", "output_name": "b"})
    w.start()
    try:
        assert wait_for(lambda: q.get(b.id).state == "done")
    finally:
        w.stop()
    assert made == [1]  # the Pipeline is made once
    ja = q.get(a.id)
    assert ja.state == "done" and ja.message.startswith("done in ") and ja.message.endswith(", seed 5")
    assert ja.files == [str(tmp_path / "out" / "a.mp4")] and Path(ja.files[0]).exists()
    assert [c["prompt"] for c in pipe.calls] == ["a", "b"]
    assert pipe.calls[0]["save_path"] == str(tmp_path / "out")
    assert pipe.calls[0]["preview"] == str(tmp_path / "out" / ".framepack-ui" / "previews" / f"{a.id}.png")
    assert w.last_preview[a.id] == pipe.calls[0]["preview"] and Path(w.last_preview[a.id]).exists()


def test_progress_shows_section_step_and_eta_while_running(tmp_path):
    from framepack_cli.ui.worker import progress_text

    pipe = FakePipeline(sections=2, steps=2)
    q, w, _ = make(tmp_path, pipe)
    a = q.add("generate", {"prompt": "a", "output_name": "a"})
    seen = []
    pipe.after_event = lambda ev: seen.append((ev.kind, progress_text(w.progress), w.progress.preview))
    w.run_job(q.wait_next(0))
    preview = str(tmp_path / "out" / ".framepack-ui" / "previews" / f"{a.id}.png")
    assert seen == [
        ("section_start", "section 1/2", None),
        ("step", "section 1/2, step 1/2, ETA 12 s", None), ("step", "section 1/2, step 2/2, ETA 12 s", None),
        ("section_end", "section 1/2, step 2/2, ETA 1 s", preview),
        ("section_start", "section 2/2, step 0/2, ETA 1 s", preview),
        ("step", "section 2/2, step 1/2, ETA 12 s", preview), ("step", "section 2/2, step 2/2, ETA 12 s", preview),
        ("section_end", "section 2/2, step 2/2, ETA 1 s", preview),
        ("written", "section 2/2, step 2/2, ETA 1 s", preview),
    ]
    assert w.progress is None and q.get(a.id).state == "done"


def test_a_bad_value_fails_the_job_with_the_one_line_message(tmp_path):
    q, w, _ = make(tmp_path, FakePipeline())
    a = q.add("generate", {"prompt": "fail"})
    w.run_job(q.wait_next(0))
    job = q.get(a.id)
    assert job.state == "failed" and job.message == "--video_size: 16 16 is too small; use 48 64 or more"


def test_a_bug_fails_the_job_with_one_line_no_traceback(tmp_path, capsys):
    q, w, _ = make(tmp_path, FakePipeline())
    a = q.add("generate", {"prompt": "bug"})
    w.run_job(q.wait_next(0))
    job = q.get(a.id)
    assert job.message == "Internal error: ZeroDivisionError: division by zero in line 3"
    assert "Traceback" not in capsys.readouterr().err


def test_a_pipeline_that_cannot_be_made_fails_the_job(tmp_path):
    from framepack_cli.errors import FramepackError

    q = JobQueue(tmp_path)

    def factory():
        raise FramepackError("--dit: file not found: x.safetensors")

    w = Worker(q, factory, tmp_path, tmp_path, cancelled=FakeCancelled)
    a = q.add("generate", {})
    w.run_job(q.wait_next(0))
    assert q.get(a.id).message == "--dit: file not found: x.safetensors"


def test_cancel_the_running_job_stops_it_and_keeps_its_checkpoint_for_resume(tmp_path):
    pipe = FakePipeline(sections=3, steps=2)
    q, w, _ = make(tmp_path, pipe)
    a = q.add("generate", {"prompt": "a", "output_name": "a"})
    b = q.add("generate", {"prompt": "b", "output_name": "b"})
    said = []

    def cancel_in_section_2(ev):
        if ev.kind == "step" and ev.section == 1 and not said:
            said.append(threading.Thread(target=lambda: said.append(w.cancel(a.id))))
            said[0].start()
            said[0].join()

    pipe.after_event = cancel_in_section_2
    w.run_job(q.wait_next(0))
    assert said[1] == f"job {a.id}: stopping at the next step"
    job = q.get(a.id)
    assert job.state == "cancelled"
    assert job.message == ("cancelled at section 2/3, step 1/2, ETA 12 s; "
                           "Resume continues from its last complete section")
    assert job.checkpoint == str(tmp_path / "out" / ".a.resume.safetensors") and Path(job.checkpoint).exists()
    pipe.after_event = None
    w.run_job(q.wait_next(0))  # the next job runs
    assert q.get(b.id).state == "done"
    resumed = q.resume(a.id)
    assert resumed.options["resume"] == job.checkpoint
    w.run_job(q.wait_next(0))
    assert q.get(a.id).state == "done" and pipe.calls[-1]["resume"] == job.checkpoint


def test_cancel_a_queued_job_never_runs_it(tmp_path):
    pipe = FakePipeline()
    q, w, _ = make(tmp_path, pipe)
    a = q.add("generate", {"prompt": "a"})
    w.cancel(a.id)
    assert q.wait_next(0) is None and pipe.calls == []


def test_check_validates_through_the_pipeline(tmp_path):
    from framepack_cli.errors import FramepackError

    q, w, _ = make(tmp_path, FakePipeline())
    w.check("generate", {"prompt": "ok"})
    with pytest.raises(FramepackError, match="--prompt: 'bad' is not allowed here"):
        w.check("generate", {"prompt": "bad"})


def test_error_line_and_eta():
    from framepack_cli.errors import FramepackError

    assert error_line(FramepackError("a\nb", hint="c")) == "a; b; c"
    assert format_eta(None) == "" and format_eta(5.4) == ", ETA 5 s" and format_eta(125) == ", ETA 2:05"


def test_stopping_the_app_mid_job_leaves_it_interrupted_and_resumable(tmp_path):
    pipe = FakePipeline(sections=3, steps=2)
    q, w, _ = make(tmp_path, pipe)
    a = q.add("generate", {"prompt": "a", "output_name": "a"})

    def stop_in_section_2(ev):
        if ev.kind == "step" and ev.section == 1 and not w._stop.is_set():
            w._stop.set()
            w.request_cancel()

    pipe.after_event = stop_in_section_2
    w.run_job(q.wait_next(0))
    job = q.get(a.id)
    assert job.state == "interrupted"
    assert job.message == ("the app stopped at section 2/3, step 1/2, ETA 12 s; "
                           "Resume continues from its last complete section")
    assert q.resume(a.id).options["resume"] == job.checkpoint


def test_check_gives_the_pipeline_section_prompts_and_images_as_given(tmp_path):
    """The worker hands `{section: value}` to `Pipeline.options`, which makes the command's form of them
    (tests/integration/test_python_api.py::test_options_take_section_forms)."""
    seen = {}

    class Pipe(FakePipeline):
        def options(self, command, **values):
            seen.update(values, command=command)
            return values

    q, w, _ = make(tmp_path, Pipe())
    w.check("generate", {"prompt": {0: "a cat", 2: "a dog"}, "image": {"0": "/u/a.png", "1": "/u/b.png"}, "seed": 1})
    assert seen["command"] == "generate"
    assert seen["prompt"] == {0: "a cat", 2: "a dog"} and seen["image"] == {"0": "/u/a.png", "1": "/u/b.png"}
    assert seen["seed"] == 1
