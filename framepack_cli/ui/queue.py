"""The job queue of `framepack ui`, stored on disk so that it survives a closed tab and a restarted app.

`<save_path>/.framepack-ui/queue.json` holds every job (id, kind, options, state, message, output files, times)
and the run order. Every change is written at once through a temp file and a rename, so a crash never leaves a
half-written queue. No Gradio and no torch here.

States: queued -> running -> done | failed | cancelled. A job found "running" when the app starts was cut off
by the app stopping: it becomes "interrupted", and `resume` queues it again with `resume=` its checkpoint (the
per-section resume file `framepack generate` writes), so it continues from its last complete section.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError

KINDS = ("generate", "one_frame", "kisekae")
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
QUEUE_FILE = "queue.json"
FORMAT = 1


@dataclass
class Job:
    id: str
    kind: str
    options: dict[str, Any]
    state: str = "queued"
    message: str = ""
    files: list[str] = field(default_factory=list)
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    checkpoint: str | None = None  # the per-section resume file of a generate job, when one was written
    cancel_requested: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class JobQueue:
    """The jobs of one app folder. Thread-safe: the web handlers and the worker share it."""

    def __init__(self, app_dir: str | os.PathLike) -> None:
        self.app_dir = Path(app_dir)
        self.path = self.app_dir / QUEUE_FILE
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []  # queued jobs, in run order
        self.changed = threading.Condition(self._lock)
        self._load()

    # --- storage
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            jobs = [Job.from_dict(d) for d in data["jobs"]]
            order = [str(i) for i in data.get("order", [])]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FramepackError(f"--save_path: the app's queue {self.path} is unreadable ({e})",
                                 hint="move the file away to start with an empty queue") from None
        self._jobs = {j.id: j for j in jobs}
        self._order = [i for i in order if i in self._jobs and self._jobs[i].state == "queued"]
        self._order += [j.id for j in jobs if j.state == "queued" and j.id not in self._order]
        dirty = False
        for job in jobs:
            if job.state == "running":  # the app stopped while it ran
                job.state = "interrupted"
                job.message = ("the app stopped while this job ran; Resume continues from its last complete section"
                               if job.checkpoint and Path(job.checkpoint).exists() else
                               "the app stopped while this job ran; Resume runs it again")
                job.finished = job.finished or time.time()
                job.cancel_requested = False
                dirty = True
        if dirty:
            self._save()

    def _save(self) -> None:
        self.app_dir.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "order": self._order, "jobs": [asdict(j) for j in self._jobs.values()]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _changed(self) -> None:
        self._save()
        self.changed.notify_all()

    # --- reading
    def jobs(self) -> list[Job]:
        """Every job: the running one, then the queued ones in run order, then the finished ones, newest first."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.state == "running"]
            queued = [self._jobs[i] for i in self._order]
            rest = sorted((j for j in self._jobs.values() if j.state in FINISHED), key=lambda j: -(j.finished or 0))
            return [Job.from_dict(asdict(j)) for j in running + queued + rest]

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(str(job_id))
            if job is None:
                raise FramepackError(f"job {job_id!r}: no such job in the queue")
            return Job.from_dict(asdict(job))

    def queued_ids(self) -> list[str]:
        with self._lock:
            return list(self._order)

    # --- changes from the user
    def add(self, kind: str, options: dict[str, Any]) -> Job:
        if kind not in KINDS:
            raise FramepackError(f"job kind {kind!r}: expected one of {', '.join(KINDS)}")
        with self._lock:
            job = Job(id=uuid.uuid4().hex[:12], kind=kind, options=dict(options), created=time.time())
            self._jobs[job.id] = job
            self._order.append(job.id)
            self._changed()
            return Job.from_dict(asdict(job))

    def cancel(self, job_id: str) -> str:
        """Queued: taken out of the run order (state cancelled). Running: the worker is asked to stop it at its
        next step (`cancel_requested`; the worker sets the state). Returns what was done, as a sentence."""
        with self._lock:
            job = self._jobs.get(str(job_id))
            if job is None:
                raise FramepackError(f"job {job_id!r}: no such job in the queue")
            if job.state == "queued":
                self._order.remove(job.id)
                job.state, job.message, job.finished = "cancelled", "cancelled before it started", time.time()
                self._changed()
                return f"job {job.id} cancelled"
            if job.state == "running":
                job.cancel_requested = True
                self._changed()
                return f"job {job.id}: stopping at the next step"
            raise FramepackError(f"job {job.id} is {job.state}: only queued or running jobs can be cancelled")

    def move(self, job_id: str, delta: int) -> list[str]:
        """Move a queued job `delta` places (-1: up, earlier; +1: down) in the run order; returns the order."""
        with self._lock:
            job = self._jobs.get(str(job_id))
            if job is None or job.state != "queued":
                state = "no such job" if job is None else f"it is {job.state}"
                raise FramepackError(f"job {job_id!r}: only queued jobs can be moved ({state})")
            i = self._order.index(job.id)
            j = max(0, min(len(self._order) - 1, i + delta))
            self._order.insert(j, self._order.pop(i))
            self._changed()
            return list(self._order)

    def resume(self, job_id: str) -> Job:
        """Queue a failed, cancelled or interrupted job again (at the end). A generate job whose resume
        checkpoint still exists continues from it (`resume=` the checkpoint); otherwise it runs from the start."""
        with self._lock:
            job = self._jobs.get(str(job_id))
            if job is None:
                raise FramepackError(f"job {job_id!r}: no such job in the queue")
            if job.state not in RESUMABLE:
                raise FramepackError(f"job {job.id} is {job.state}: only {', '.join(RESUMABLE)} jobs can be resumed")
            if job.checkpoint and Path(job.checkpoint).exists():
                job.options = {**job.options, "resume": job.checkpoint}
                job.message = "queued again; continues from its last complete section"
            else:
                job.options = {k: v for k, v in job.options.items() if k != "resume"}
                job.message = "queued again; no checkpoint, runs from the start"
            job.state, job.finished, job.started, job.cancel_requested = "queued", None, None, False
            self._order.append(job.id)
            self._changed()
            return Job.from_dict(asdict(job))

    # --- changes from the worker
    def wait_next(self, timeout: float | None = None) -> Job | None:
        """Take the first queued job and mark it running; None when none came within `timeout`."""
        with self._lock:
            if not self._order:
                self.changed.wait(timeout)
            if not self._order:
                return None
            job = self._jobs[self._order.pop(0)]
            job.state, job.started, job.message = "running", time.time(), "starting"
            self._changed()
            return Job.from_dict(asdict(job))

    def update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            job = self._jobs[str(job_id)]
            for k, v in changes.items():
                if k not in Job.__dataclass_fields__ or k in ("id", "kind", "created"):
                    raise KeyError(k)
                setattr(job, k, v)
            self._changed()

    def finish(self, job_id: str, state: str, message: str = "", files: list[str] | None = None) -> None:
        if state not in FINISHED:
            raise ValueError(state)
        with self._lock:
            job = self._jobs[str(job_id)]
            job.state, job.message, job.finished, job.cancel_requested = state, message, time.time(), False
            if files is not None:
                job.files = list(files)
            self._changed()

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(str(job_id))
            return bool(job and job.cancel_requested)
