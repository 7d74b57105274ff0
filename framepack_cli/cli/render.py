"""rich rendering of engine progress: a sections bar and a steps bar with it/s and ETA; an items bar with
items/s and ETA for dataset caching. Plain `key  value` reports (`print_rows`) that never cut a name."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

KEY_COLUMN_MAX = 40  # keys up to this long line their values up; longer ones push their value right


def format_rows(rows: list[tuple[str, str]]) -> list[str]:
    """`key  value` lines, values aligned after the longest key (up to KEY_COLUMN_MAX): plain text, nothing
    wrapped, cropped or ellipsized, whatever the terminal width or when piped, so every key and value can be
    copied or grepped whole."""
    width = min(max((len(k) for k, _ in rows), default=0), KEY_COLUMN_MAX)
    return [f"{key:<{width}}  {value}".rstrip() if value else key.rstrip() for key, value in rows]


def print_rows(rows: list[tuple[str, str]]) -> None:
    """`format_rows` on stdout."""
    for line in format_rows(rows):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def duration(seconds: float) -> str:
    """`4.2s`, `3m04s`, `2h05m`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def section_line(info: dict) -> str:
    """The plain per-section line: `section 1/3 done in 12.3s (25 steps, 2.10 it/s), peak GPU memory 21.3 GiB;
    ETA 24.6s for the 2 sections left` (the last: `...; all 3 sections in 36.9s`)."""
    label = info.get("label") or f"section {info.get('sections_done', 0)}/{info.get('total', 0)}"
    speed = f", {info['it_s']:.2f} it/s" if info.get("it_s") else ""
    line = f"{label} done in {duration(info['seconds'])} ({info.get('steps', 0)} steps{speed})"
    if info.get("peak_gpu_bytes") is not None:
        line += f", peak GPU memory {gib(info['peak_gpu_bytes'])}"
    done, total = info.get("sections_done", 0), info.get("total", 0)
    left = total - done
    if left > 0:
        line += f"; ETA {duration(info.get('eta_s') or 0.0)} for the {left} section{'s' if left > 1 else ''} left"
    elif total > 1:
        line += f"; all {total} sections in {duration(info.get('elapsed_s', info['seconds']))}"
    return line


def section_rate(info: dict) -> str:
    """The sections bar's live field: the last section's time and the peak GPU memory."""
    text = f"last {duration(info['seconds'])}"
    if info.get("peak_gpu_bytes") is not None:
        text += f", peak {gib(info['peak_gpu_bytes'])}"
    return text


class RichProgress:
    """Implements `framepack_cli.engine.progress.ProgressSink` on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=not sys.stderr.isatty(),
        )
        self._sections = None
        self._steps = None
        self._items = None
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self.progress.start()
            self._started = True

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def result(self, text: str) -> None:
        """Results go to stdout, plain (no rich markup), one line each."""
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()

    def start_sections(self, total: int) -> None:
        self._start()
        self._sections = self.progress.add_task("sections", total=total, rate="")

    def start_section(self, index: int, total: int, label: str) -> None:
        self._start()
        if self._steps is not None:
            self.progress.remove_task(self._steps)
        self._steps = self.progress.add_task(f"  {label}", total=None, rate="")

    def step(self, done: int, total: int) -> None:
        if self._steps is None:
            return
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(self._steps)]
        speed = task.speed
        rate = f"{speed:.2f} it/s" if speed else ""
        self.progress.update(self._steps, completed=done, total=total, rate=rate)
        if not sys.stderr.isatty() and done == total:
            took = task.elapsed or 0
            self.console.print(f"{task.description.strip()}: {total} steps in {took:.1f}s", highlight=False)

    def section_output(self, latent) -> None:
        pass

    def end_section(self, info: dict | None = None) -> None:
        if self._sections is not None:
            self.progress.advance(self._sections)
            if info is not None:
                self.progress.update(self._sections, rate=section_rate(info))
        if info is not None and not sys.stderr.isatty():
            self.console.print(section_line(info), highlight=False, soft_wrap=True, markup=False)

    def start_items(self, total: int, label: str) -> None:
        self._start()
        self._items = self.progress.add_task(label, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        if self._items is None:
            return
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(self._items)]
        self.progress.advance(self._items, n)
        speed = task.speed
        self.progress.update(self._items, rate=f"{speed:.2f} items/s" if speed else "")

    def end_items(self) -> None:
        if self._items is not None:
            task = self.progress.tasks[[t.id for t in self.progress.tasks].index(self._items)]
            if not sys.stderr.isatty():
                took = task.elapsed or 0
                self.console.print(f"{task.description}: {int(task.completed)}/{int(task.total or 0)} in {took:.1f}s",
                                   highlight=False)
            self._items = None

    def start_training(self, total: int, done: int) -> None:
        self._start()
        self._train = self.progress.add_task("train", total=total, completed=done, rate="")
        self._train_start = (done, total)
        self._train_plain_every = max(1, total // 20)

    def train_step(self, done: int, total: int, info: dict) -> None:
        if getattr(self, "_train", None) is None:
            return
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(self._train)]
        speed = task.speed
        text = (f"loss {info.get('loss', 0.0):.4f} lr {info.get('lr', 0.0):.2e} "
                f"epoch {info.get('epoch', 0)}/{info.get('epochs', 0)}")
        rate = f"{text} {speed:.2f} it/s" if speed else text
        self.progress.update(self._train, completed=done, total=total, rate=rate)
        if not sys.stderr.isatty() and (done % self._train_plain_every == 0 or done == total):
            self.console.print(f"step {done}/{total}: {rate}", highlight=False)

    def end_training(self) -> None:
        self._train = None

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False
