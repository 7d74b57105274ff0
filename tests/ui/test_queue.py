"""The job queue of `framepack ui` on disk (framepack_cli.ui.queue): add, cancel, reorder, resume, restart."""

from __future__ import annotations

import json
import threading

import pytest

from framepack_cli.errors import FramepackError
from framepack_cli.ui.queue import QUEUE_FILE, JobQueue

pytestmark = pytest.mark.ui


def test_jobs_are_stored_with_their_fields_and_survive_a_restart(tmp_path):
    q = JobQueue(tmp_path)
    a = q.add("generate", {"prompt": "a cat", "seed": 1})
    b = q.add("one_frame", {"prompt": "b"})
    data = json.loads((tmp_path / QUEUE_FILE).read_text())
    assert data["order"] == [a.id, b.id]
    stored = {j["id"]: j for j in data["jobs"]}
    assert stored[a.id]["kind"] == "generate" and stored[a.id]["options"] == {"prompt": "a cat", "seed": 1}
    assert stored[a.id]["state"] == "queued" and stored[a.id]["created"] > 0 and stored[a.id]["files"] == []
    again = JobQueue(tmp_path)
    assert [(j.id, j.kind, j.state) for j in again.jobs()] == [(a.id, "generate", "queued"),
                                                              (b.id, "one_frame", "queued")]


def test_writes_are_atomic_no_temp_file_left(tmp_path):
    q = JobQueue(tmp_path)
    for i in range(5):
        q.add("generate", {"prompt": str(i)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [QUEUE_FILE]


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(FramepackError, match="job kind 'video': expected one of generate, one_frame, kisekae"):
        JobQueue(tmp_path).add("video", {})


def test_cancel_a_queued_job_takes_it_out_of_the_run_order(tmp_path):
    q = JobQueue(tmp_path)
    a, b = q.add("generate", {}), q.add("generate", {})
    assert q.cancel(a.id) == f"job {a.id} cancelled"
    assert q.queued_ids() == [b.id]
    assert q.get(a.id).state == "cancelled" and q.get(a.id).message == "cancelled before it started"
    assert JobQueue(tmp_path).queued_ids() == [b.id]
    with pytest.raises(FramepackError, match=f"job {a.id} is cancelled: only queued or running jobs can be cancelled"):
        q.cancel(a.id)


def test_cancel_a_running_job_asks_the_worker(tmp_path):
    q = JobQueue(tmp_path)
    a = q.add("generate", {})
    assert q.wait_next(0).id == a.id
    assert q.get(a.id).state == "running"
    assert q.cancel(a.id) == f"job {a.id}: stopping at the next step"
    assert q.cancel_requested(a.id) and q.get(a.id).state == "running"  # the worker ends it
    q.finish(a.id, "cancelled", "cancelled at section 1/2")
    assert q.get(a.id).state == "cancelled" and not q.cancel_requested(a.id)


def test_move_up_and_down_and_the_bounds(tmp_path):
    q = JobQueue(tmp_path)
    a, b, c = (q.add("generate", {"prompt": p}) for p in "abc")
    assert q.move(c.id, -1) == [a.id, c.id, b.id]
    assert q.move(c.id, -1) == [c.id, a.id, b.id]
    assert q.move(c.id, -1) == [c.id, a.id, b.id]  # already first
    assert q.move(a.id, +1) == [c.id, b.id, a.id]
    assert JobQueue(tmp_path).queued_ids() == [c.id, b.id, a.id]
    assert q.wait_next(0).id == c.id
    with pytest.raises(FramepackError, match=rf"job '{c.id}': only queued jobs can be moved \(it is running\)"):
        q.move(c.id, 1)
    with pytest.raises(FramepackError, match=r"job 'nope': only queued jobs can be moved \(no such job\)"):
        q.move("nope", 1)


def test_a_running_job_becomes_interrupted_on_restart_and_resumes_from_its_checkpoint(tmp_path):
    q = JobQueue(tmp_path)
    a = q.add("generate", {"prompt": "a", "output_name": "x"})
    q.add("generate", {"prompt": "b"})
    q.wait_next(0)
    ckpt = tmp_path / ".x.resume.safetensors"
    ckpt.write_bytes(b"checkpoint")
    q.update(a.id, checkpoint=str(ckpt))
    # the app dies here; a new one loads the same file
    q2 = JobQueue(tmp_path)
    job = q2.get(a.id)
    assert job.state == "interrupted"
    assert job.message == "the app stopped while this job ran; Resume continues from its last complete section"
    assert json.loads((tmp_path / QUEUE_FILE).read_text())["jobs"][0]["state"] == "interrupted"  # saved at once
    resumed = q2.resume(a.id)
    assert resumed.state == "queued" and resumed.options["resume"] == str(ckpt)
    assert q2.queued_ids()[-1] == a.id
    assert q2.wait_next(0).options["prompt"] == "b"  # the order kept: b was waiting first


def test_resume_without_a_checkpoint_runs_again_and_refuses_live_jobs(tmp_path):
    q = JobQueue(tmp_path)
    a = q.add("generate", {"resume": "/old"})
    with pytest.raises(FramepackError, match=f"job {a.id} is queued: only failed, cancelled, interrupted jobs"):
        q.resume(a.id)
    q.wait_next(0)
    q.finish(a.id, "failed", "--video_size: bad")
    job = q.resume(a.id)
    assert "resume" not in job.options and job.message == "queued again; no checkpoint, runs from the start"
    q.wait_next(0)
    q.finish(a.id, "done", "done", files=["/o/a.mp4"])
    with pytest.raises(FramepackError, match="is done: only"):
        q.resume(a.id)
    assert q.get(a.id).files == ["/o/a.mp4"]


def test_listing_order_running_queued_then_finished_newest_first(tmp_path):
    q = JobQueue(tmp_path)
    a, b, c, d = (q.add("generate", {"prompt": p}) for p in "abcd")
    q.wait_next(0)
    q.finish(a.id, "done")
    q.wait_next(0)
    q.finish(b.id, "failed", "x")
    q.wait_next(0)  # c runs
    assert [j.id for j in q.jobs()] == [c.id, d.id, b.id, a.id]


def test_an_unreadable_queue_file_is_one_line(tmp_path):
    (tmp_path / QUEUE_FILE).write_text("{not json")
    with pytest.raises(FramepackError) as e:
        JobQueue(tmp_path)
    assert e.value.message.startswith(f"--save_path: the app's queue {tmp_path / QUEUE_FILE} is unreadable")
    assert e.value.hint == "move the file away to start with an empty queue"


def test_wait_next_wakes_when_a_job_is_added(tmp_path):
    q = JobQueue(tmp_path)
    got = []
    t = threading.Thread(target=lambda: got.append(q.wait_next(5)))
    t.start()
    a = q.add("generate", {})
    t.join(5)
    assert got and got[0].id == a.id
