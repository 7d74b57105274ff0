"""The worker of `framepack ui`: one thread that runs the queue's jobs one at a time through the Python API.

The Pipeline (`framepack_cli.api.Pipeline`) is made once, at the first job, and keeps its models loaded
between jobs. Progress (section, step, ETA) and the latest live preview are kept for the page to show; a job
ends done (its files recorded), failed (the one-line message of the error, never a traceback) or cancelled
(`JobQueue.cancel` on a running job asks `pipe.cancel()`; the resume checkpoint stays for `Resume`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.ui.queue import Job, JobQueue

PREVIEWS = "previews"
COMMAND_OF = {"generate": "generate", "one_frame": "one-frame", "kisekae": "kisekae"}


@dataclass
class Progress:
    """What the page shows of the running job."""

    job_id: str
    text: str = "starting"
    section: int | None = None
    sections: int | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    preview: str | None = None  # the preview file, once a section has ended


def error_line(exc: BaseException) -> str:
    """One readable line for the page: a FramepackError's message and hint, else the error's type and text."""
    if isinstance(exc, FramepackError):
        lines = [ln for ln in exc.message.splitlines() if ln.strip()] or [type(exc).__name__]
        text = "; ".join(lines)
        return f"{text}; {exc.hint}" if exc.hint else text
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"Internal error: {type(exc).__name__}: {text}"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = max(0, int(round(seconds)))
    return f", ETA {s // 60}:{s % 60:02d}" if s >= 60 else f", ETA {s} s"


def progress_text(p: Progress) -> str:
    parts = []
    if p.section is not None and p.sections:
        parts.append(f"section {p.section + 1}/{p.sections}")
    if p.step is not None and p.steps:
        parts.append(f"step {p.step}/{p.steps}")
    return (", ".join(parts) or p.text) + format_eta(p.eta_s)


class Worker:
    """Runs `queue`'s jobs in one background thread.

    Args:
        queue: the app's job queue.
        make_pipeline: called once, at the first job, to make the Pipeline (models load lazily inside it).
        save_path: where every job writes its outputs.
        app_dir: the app folder (previews go to `<app_dir>/previews/`).
        cancelled: the exception type the Pipeline raises when a job is cancelled (default: `api.Cancelled`).
    """

    def __init__(self, queue: JobQueue, make_pipeline: Callable[[], Any], save_path: str | Path,
                 app_dir: str | Path, cancelled: type[BaseException] | None = None) -> None:
        self.queue = queue
        self.make_pipeline = make_pipeline
        self.save_path = Path(save_path)
        self.app_dir = Path(app_dir)
        self._cancelled = cancelled
        self._pipe: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.progress: Progress | None = None
        self.last_preview: dict[str, str] = {}  # job id -> its latest preview file

    # --- life cycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="framepack-ui-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self.queue.changed:
            self.queue.changed.notify_all()
        self.request_cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def pipeline(self) -> Any:
        """The app's one Pipeline, made at the first call (the model files are checked then; the weights load at
        the first job)."""
        with self._lock:
            if self._pipe is None:
                self._pipe = self.make_pipeline()
            return self._pipe

    def check(self, kind: str, options: dict[str, Any]) -> None:
        """Validate a job's options as the Pipeline will (the same one-line FramepackError), before queueing."""
        pipe = self.pipeline
        if hasattr(pipe, "options"):
            pipe.options(COMMAND_OF[kind], **options, save_path=str(self.save_path),
                         preview=str(self.app_dir / PREVIEWS / "check.png"))

    def request_cancel(self) -> None:
        pipe = self._pipe
        if pipe is not None and self.progress is not None:
            pipe.cancel()

    def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued one leaves the run order, the running one stops at its next step."""
        said = self.queue.cancel(job_id)
        if self.progress is not None and self.progress.job_id == job_id:
            self.request_cancel()
        return said

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.queue.wait_next(timeout=0.5)
            if job is None:
                continue
            self.run_job(job)

    # --- one job
    def preview_path(self, job: Job) -> Path:
        suffix = ".png"  # a tile per section for a video; the frame itself for one-frame jobs
        return self.app_dir / PREVIEWS / f"{job.id}{suffix}"

    def checkpoint_path(self, job: Job) -> Path | None:
        name = job.options.get("output_name")
        if job.kind != "generate" or not name:
            return None
        return self.save_path / f".{name}.resume.safetensors"

    def _cancelled_type(self) -> type[BaseException]:
        if self._cancelled is None:
            from framepack_cli.api import Cancelled

            self._cancelled = Cancelled
        return self._cancelled

    def run_job(self, job: Job) -> None:
        """Run one job (already marked running) to its end state."""
        progress = Progress(job_id=job.id)
        self.progress = progress
        preview = self.preview_path(job)
        checkpoint = self.checkpoint_path(job)
        if checkpoint is not None:
            self.queue.update(job.id, checkpoint=str(checkpoint))
        cancelled = self._cancelled_type()
        written: list[str] = []

        def callback(event: Any) -> None:
            kind = getattr(event, "kind", None)
            if kind == "section_start":
                progress.section, progress.sections = event.section, event.sections
                progress.step = 0
            elif kind == "step":
                progress.step, progress.steps = event.step, event.steps
                if getattr(event, "eta_s", None) is not None:
                    progress.eta_s = event.eta_s
                if getattr(event, "section", None) is not None:
                    progress.section = event.section
                if getattr(event, "sections", None):
                    progress.sections = event.sections
            elif kind == "section_end":
                if getattr(event, "eta_s", None) is not None:
                    progress.eta_s = event.eta_s
                shown = getattr(event, "preview", None) or (str(preview) if preview.exists() else None)
                if shown and Path(shown).exists():
                    progress.preview = str(shown)
                    self.last_preview[job.id] = str(shown)
                self.queue.update(job.id, message=progress_text(progress))
            elif kind == "written":
                written.extend(str(f) for f in (getattr(event, "files", None) or []))
            elif kind == "message" and getattr(event, "text", None):
                progress.text = event.text
            # A cancel asked before the Pipeline started listening (pipe.cancel() is reset when a job starts)
            # stops the job here; never on a section's last step, which writes its checkpoint first.
            last_step = kind == "step" and event.step is not None and event.step >= (event.steps or 0)
            if kind in ("section_start", "step") and not last_step and self.queue.cancel_requested(job.id):
                raise cancelled(f"job {job.id} cancelled")

        try:
            if self.queue.cancel_requested(job.id):
                raise cancelled(f"job {job.id} cancelled")
            method = getattr(self.pipeline, job.kind)
            preview.parent.mkdir(parents=True, exist_ok=True)
            result = method(**job.options, callback=callback, save_path=str(self.save_path), preview=str(preview))
        except BaseException as e:  # noqa: BLE001 - every end of a job is recorded, never raised into the thread
            if isinstance(e, cancelled):
                kept = getattr(e, "checkpoint", None)
                if kept:
                    self.queue.update(job.id, checkpoint=str(kept))
                    checkpoint = Path(kept)
                where = f"at {progress_text(progress)}" if progress.section is not None else "before it sampled"
                has_ckpt = checkpoint is not None and checkpoint.exists()
                then = "; Resume continues from its last complete section" if has_ckpt else ""
                if self._stop.is_set():  # the app is stopping (Ctrl-C): not the user's cancel
                    self.queue.finish(job.id, "interrupted", f"the app stopped {where}{then}")
                else:
                    self.queue.finish(job.id, "cancelled", f"cancelled {where}{then}")
            elif isinstance(e, (KeyboardInterrupt, SystemExit)):
                self.queue.finish(job.id, "interrupted", "the app stopped while this job ran")
                raise
            else:
                line = error_line(e)
                self.queue.finish(job.id, "failed", line, files=written)
                if not isinstance(e, FramepackError):
                    sys.stderr.write(f"framepack ui: job {job.id} failed: {line}\n")
        else:
            files = [str(f) for f in (getattr(result, "files", None) or written)]
            seed = getattr(result, "seed", None)
            took = time.time() - (self.queue.get(job.id).started or time.time())
            self.queue.finish(job.id, "done", f"done in {took:.0f} s" + (f", seed {seed}" if seed is not None else ""),
                              files=files)
        finally:
            self.progress = None
