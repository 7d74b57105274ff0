"""A stand-in for `framepack_cli.api.Pipeline` that the worker and app tests drive without models: it reports
the events the real one reports, writes a preview PNG after each section and a small real MP4 at the end."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from framepack_cli.api import Cancelled, Event
from framepack_cli.errors import FramepackError

# The real event and cancel types (framepack_cli.api imports neither torch nor gradio).
FakeCancelled = Cancelled
FakeEvent = Event


def write_png(path: Path, color=(200, 30, 30), size=(32, 24)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_mp4(path: Path, frames: int = 4) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.full((48, 64, 3), 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


class FakePipeline:
    def __init__(self, sections: int = 2, steps: int = 3, gate: threading.Event | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.sections, self.steps = sections, steps
        self.gate = gate  # when set: each step waits for it (tests hold a job "running")
        self.cancelled = threading.Event()
        self.after_event = None  # called after each callback (tests read the worker's progress there)

    def options(self, command: str, **values: Any):
        if values.get("prompt") == "bad":
            raise FramepackError("--prompt: 'bad' is not allowed here", hint="say something else")
        return values

    def cancel(self) -> None:
        self.cancelled.set()

    def generate(self, *, callback, save_path, preview, output_name="out", **options):
        if self.after_event is not None:
            inner, hook = callback, self.after_event

            def callback(event):
                inner(event)
                hook(event)

        self.calls.append({"save_path": save_path, "preview": preview, "output_name": output_name, **options})
        self.cancelled.clear()
        if options.get("prompt") == "fail":
            raise FramepackError("--video_size: 16 16 is too small", hint="use 48 64 or more")
        if options.get("prompt") == "bug":
            raise ZeroDivisionError("division by zero\nin line 3")
        ckpt = Path(save_path) / f".{output_name}.resume.safetensors"
        for sec in range(self.sections):
            callback(FakeEvent("section_start", section=sec, sections=self.sections))
            for st in range(1, self.steps + 1):
                if self.gate is not None:
                    self.gate.wait(10)
                if self.cancelled.is_set():
                    raise FakeCancelled("cancelled", checkpoint=str(ckpt) if ckpt.exists() else None)
                callback(FakeEvent("step", section=sec, sections=self.sections, step=st, steps=self.steps,
                                   eta_s=12.0))
            write_png(Path(preview), (60 * sec, 100, 100))
            ckpt.write_bytes(b"ckpt")
            callback(FakeEvent("section_end", section=sec, sections=self.sections, eta_s=1.0, preview=preview))
        out = Path(save_path) / f"{output_name}.mp4"
        write_mp4(out)
        ckpt.unlink()
        callback(FakeEvent("written", files=[out]))

        class R:
            seed = options.get("seed", 7)
            files = [out]

        return R()
