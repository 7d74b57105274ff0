"""Start the app for tests: in this process on a stand-in Pipeline (`serve_fake`), or `framepack ui` itself in a
subprocess on the tiny golden models (`serve_cli`); both on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import MODEL_ARGS, REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_fake(save_path: Path, pipe, auth=None, lora_dir=None, f1_note=None):
    """The real app (AppState, build_app, start_server) with `pipe` in place of the Pipeline."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from framepack_cli.ui.app import AppState, build_app
    from framepack_cli.ui.launch import start_server
    from framepack_cli.ui.queue import JobQueue
    from framepack_cli.ui.worker import Worker
    from tests.ui.fakes import FakeCancelled

    save_path = Path(save_path).resolve()
    app_dir = save_path / ".framepack-ui"
    queue = JobQueue(app_dir)
    worker = Worker(queue, lambda: pipe, save_path, app_dir, cancelled=FakeCancelled)
    state = AppState(save_path=save_path, app_dir=app_dir, queue=queue, worker=worker,
                     lora_dir=None if lora_dir is None else Path(lora_dir).resolve())
    if f1_note is not None:
        state.f1_note = f1_note
    demo = build_app(state)
    port = free_port()
    worker.start()
    start_server(demo, save_path, "127.0.0.1", port, auth)
    try:
        yield f"http://127.0.0.1:{port}/", state
    finally:
        worker.stop()
        demo.close()


@contextmanager
def serve_cli(save_path: Path, *extra: str, timeout: float = 120):
    """`framepack ui` on the golden models; yields (url, process). Stopped (SIGINT, then kill) at the end."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    # stderr goes to a file (a pipe nobody reads could fill up and stall the app); `proc.stderr_text()` reads it
    err = tempfile.NamedTemporaryFile("w+", prefix="framepack-ui-", suffix=".stderr", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "framepack_cli", "ui", *MODEL_ARGS, "--port", str(port),
                             "--save_path", str(save_path), *extra], stdout=subprocess.PIPE, stderr=err,
                            text=True, cwd=REPO, env=env)
    proc.stderr_text = lambda: Path(err.name).read_text()
    try:
        end = time.time() + timeout
        line = ""
        while time.time() < end:
            line = proc.stdout.readline()
            if line.startswith("Running on http://") or proc.poll() is not None:
                break
        if not line.startswith("Running on http://"):
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"framepack ui did not start: {line!r} {proc.stderr_text()[-2000:]}")
        yield line.split()[-1].rstrip("/") + "/", proc
    finally:
        if proc.poll() is None:
            import signal

            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        err.close()
        os.unlink(err.name)
