"""How engines report progress without knowing about rich (the CLI renders; tests record)."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def message(self, text: str) -> None:
        """A one-line status message (stderr: progress, warnings, errors)."""

    def result(self, text: str) -> None:
        """A result line (`Wrote <path>`, a `--json` summary): stdout, so scripts can capture it."""

    def start_sections(self, total: int) -> None:
        """Generation of `total` sections begins."""

    def start_section(self, index: int, total: int, label: str) -> None:
        """Section `index` (0-based, in generation order) begins; `label` says which one in time."""

    def step(self, done: int, total: int) -> None:
        """`done` of `total` sampler steps of the current section are finished."""

    def section_output(self, latent) -> None:
        """The latent sampled so far (CTHW, time order, CPU), after each section: for live previews
        (`framepack_cli.engine.preview`); sinks that show no preview ignore it."""

    def end_section(self, info: dict | None = None) -> None:
        """The current section is finished. `info` (from `framepack_cli.engine.preview.SectionWatch`; None from a
        bare job): label, index, total, seconds (wall time), steps, it_s, sections_done, eta_s (the job's
        remaining sections at the mean section time so far), peak_gpu_bytes (CUDA only), preview (its path)."""

    def start_items(self, total: int, label: str) -> None:
        """A run over `total` items (files to cache, captions to encode) begins; `label` names them."""

    def advance(self, n: int = 1) -> None:
        """`n` more items are done (cached, skipped or failed)."""

    def end_items(self) -> None:
        """The run over items is finished."""

    def start_training(self, total: int, done: int) -> None:
        """Training of `total` optimizer steps begins (`done` already done: a resumed run)."""

    def train_step(self, done: int, total: int, info: dict) -> None:
        """`done` of `total` optimizer steps are finished; `info` has loss (smoothed), current, lr, epoch, epochs."""

    def end_training(self) -> None:
        """The training loop is finished (or stopped)."""

    def close(self) -> None:
        """Stop any live display."""


class NullProgress:
    """Records nothing; used by library callers and tests."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.results: list[str] = []
        self.steps = 0
        self.sections = 0
        self.items_total = 0
        self.items_done = 0
        self.train_steps: list[tuple[int, int, dict]] = []
        self.section_infos: list[dict] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def result(self, text: str) -> None:
        self.results.append(text)

    def start_sections(self, total: int) -> None:
        pass

    def start_section(self, index: int, total: int, label: str) -> None:
        self.sections += 1

    def step(self, done: int, total: int) -> None:
        self.steps += 1

    def section_output(self, latent) -> None:
        pass

    def end_section(self, info: dict | None = None) -> None:
        if info is not None:
            self.section_infos.append(dict(info))

    def start_items(self, total: int, label: str) -> None:
        self.items_total, self.items_done = total, 0

    def advance(self, n: int = 1) -> None:
        self.items_done += n

    def end_items(self) -> None:
        pass

    def start_training(self, total: int, done: int) -> None:
        pass

    def train_step(self, done: int, total: int, info: dict) -> None:
        self.train_steps.append((done, total, dict(info)))

    def end_training(self) -> None:
        pass

    def close(self) -> None:
        pass
