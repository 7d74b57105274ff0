"""What a run has done so far, so Ctrl-C can say it in one line: the phase (loading, sampling section k of
n, decoding, writing) and the files already written.

`RunTracker` wraps the run's `ProgressSink`: it passes every call on and keeps count on the way (sections
started and finished, the decode, every `Wrote <path>` result).
"""

from __future__ import annotations

from framepack_cli.engine.progress import ProgressSink


class RunTracker:
    """A `ProgressSink` that forwards to `inner` and remembers how far the run got."""

    def __init__(self, inner: ProgressSink, before: str = "before sampling") -> None:
        """`before`: how the line says a run stopped before any section or decode began."""
        self.inner = inner
        self.before = before
        self.phase = "start"  # start | sampling | sampled | decoding | writing
        self.sections_total = 0
        self.sections_done = 0
        self.written: list[str] = []
        self._counted = False  # the current section's last step is done and counted

    # ProgressSink ------------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        self.inner.message(text)

    def result(self, text: str) -> None:
        if text.startswith("Wrote "):
            self.written.append(text[len("Wrote "):])
        self.inner.result(text)

    def start_sections(self, total: int) -> None:
        self.phase, self.sections_total, self.sections_done = "sampling", total, 0
        self.inner.start_sections(total)

    def start_section(self, index: int, total: int, label: str) -> None:
        self.phase, self._counted = "sampling", False
        self.inner.start_section(index, total, label)

    def step(self, done: int, total: int) -> None:
        # A section counts as done with its last step, before the inner sink reports it: a Ctrl-C that follows
        # the "N steps in" line must not say the section was still sampling.
        if done >= total and not self._counted:
            self._section_done()
        self.inner.step(done, total)

    def section_output(self, latent) -> None:
        self.inner.section_output(latent)

    def end_section(self, info: dict | None = None) -> None:
        if not self._counted:
            self._section_done()
        self._counted = False
        self.inner.end_section(info)

    def _section_done(self) -> None:
        self._counted = True
        self.sections_done += 1
        if self.sections_done >= self.sections_total:
            self.phase = "sampled"

    def start_items(self, total: int, label: str) -> None:
        if label == "decode":
            self.phase = "decoding"
        self.inner.start_items(total, label)

    def advance(self, n: int = 1) -> None:
        self.inner.advance(n)

    def end_items(self) -> None:
        if self.phase == "decoding":
            self.phase = "writing"
        self.inner.end_items()

    def start_training(self, total: int, done: int) -> None:
        self.inner.start_training(total, done)

    def train_step(self, done: int, total: int, info: dict) -> None:
        self.inner.train_step(done, total, info)

    def end_training(self) -> None:
        self.inner.end_training()

    def close(self) -> None:
        self.inner.close()

    # the Ctrl-C line ---------------------------------------------------------------------------------
    def interrupted_line(self) -> str:
        """`Interrupted after section 1 of 2; nothing written`, `Interrupted while decoding; wrote a, b`."""
        if self.phase == "sampling":
            if self.sections_done:
                where = f"after section {self.sections_done} of {self.sections_total}"
            elif self.sections_total > 1:
                where = f"while sampling section 1 of {self.sections_total}"
            else:
                where = "while sampling"
        elif self.phase == "sampled":
            where = f"after sampling all {self.sections_total} section(s)" if self.sections_total > 1 else (
                "after sampling")
        elif self.phase in ("decoding", "writing"):
            where = f"while {self.phase}"
        else:
            where = self.before
        done = f"wrote {', '.join(self.written)}" if self.written else "nothing written"
        return f"Interrupted {where}; {done}"
