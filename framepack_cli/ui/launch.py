"""`framepack ui`: check the extra is installed, prepare the app folder, start the worker and serve the app.

Gradio is imported only here, when the command runs (never for `framepack --help`). The app listens on the
options' bind host (127.0.0.1 unless `--listen`), never opens a share link, and serves files only from
`--save_path` (which holds the app folder with the uploads and previews).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.io.writable import ensure_writable_dir, remove_created

APP_DIR = ".framepack-ui"
INSTALL = 'pip install "framepack-cli[ui]"'


def app_dir_of(save_path: str | os.PathLike) -> Path:
    return Path(save_path) / APP_DIR


def import_gradio() -> Any:
    """Gradio, or one line saying how to install it (exit 2)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio
    except ImportError:
        raise FramepackError("framepack ui needs Gradio, which is not installed",
                             hint=f'{INSTALL} (in a clone: pip install -e ".[ui]")') from None
    return gradio


def port_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE) or "cannot find empty port" in text


def start_server(demo: Any, save_path: str | os.PathLike, host: str, port: int,
                 auth: tuple[str, str] | None) -> None:
    """Serve `demo` in the background: on `host` only, no share link, files only from `save_path`.

    Raises:
        ResourceError: the port is in use (exit 3).
    """
    try:
        demo.queue(default_concurrency_limit=4).launch(
            server_name=host, server_port=port, share=False, auth=auth, prevent_thread_lock=True, quiet=True,
            show_error=False, inbrowser=False, allowed_paths=[str(Path(save_path).resolve())])
    except (OSError, ValueError) as e:
        if port_busy(e):
            raise ResourceError(f"--port {port}: the port is in use on {host}",
                                hint="stop what uses it or pick another with --port N") from None
        raise


def run(opts: Any, sink: Any) -> None:
    import_gradio()
    created = ensure_writable_dir(opts.save_path, "--save_path")
    app_dir = app_dir_of(opts.save_path)
    app_created = ensure_writable_dir(app_dir, "--save_path")
    created = created or app_created  # the top folder this run made
    # Gradio's own copies of uploads and outputs stay under the app folder too.
    os.environ.setdefault("GRADIO_TEMP_DIR", str((app_dir / "gradio").resolve()))
    from framepack_cli.ui.app import AppState, build_app

    try:
        state = AppState.create(opts)
        state.worker.pipeline  # noqa: B018 - the model files are checked now: a wrong one is one line, exit 2
    except FramepackError:
        remove_created(app_dir, created)  # nothing was served: leave no empty folders behind
        raise
    demo = build_app(state)
    host = opts.bind_host
    if opts.listen:
        sink.message(f"Warning: --listen: the app listens on all interfaces ({host}:{opts.port}); anyone who can "
                     "reach this machine and knows the --auth password can run jobs and read the outputs")
    state.worker.start()
    try:
        start_server(demo, state.save_path, host, opts.port, opts.credentials)
        shown = "127.0.0.1" if host == "0.0.0.0" else host
        sink.result(f"Running on http://{shown}:{opts.port}")
        sink.message(f"Outputs in {opts.save_path}; queue in {app_dir / 'queue.json'}; Ctrl-C stops the app")
        with contextlib.redirect_stdout(sys.stderr):  # Gradio's own lines: stdout carries only the URL
            demo.block_thread()  # until Ctrl-C
    finally:
        state.worker.stop()
        with contextlib.redirect_stdout(sys.stderr):
            try:
                demo.close()
            except Exception:  # noqa: BLE001 - closing a server that failed to start
                pass
    waiting = len(state.queue.queued_ids())
    sink.message(f"Stopped; {waiting} waiting job(s) and the finished ones stay in {app_dir / 'queue.json'} "
                 "for the next `framepack ui`")
