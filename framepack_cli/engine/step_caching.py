"""TeaCache / MagCache for one generation job: a fresh `StepCache` per section, the summary line, and the
`--magcache_calibration` output (the ratios line after each section on stderr, and the ratios file)."""

from __future__ import annotations

import os
from pathlib import Path

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.models.step_cache import StepCache, StepCacheSettings, format_ratios, settings_from_options

RATIOS_SUFFIX = ".magcache_ratios.txt"


class JobStepCache:
    """The step cache of one job (video or one-frame); inert when the options ask for none."""

    def __init__(self, opts, seed: int) -> None:
        self.opts = opts
        self.seed = seed
        self.settings: StepCacheSettings | None = settings_from_options(opts)
        self.steps = int(opts.infer_steps)
        self.computed = 0
        self.total = 0
        self.calibrated: list[list[float]] = []  # per section: the ratios line's values
        self.path: Path | None = None

    def start(self, sink: ProgressSink) -> None:
        if self.settings is not None:
            sink.message(self.settings.describe(self.steps))

    def section(self) -> StepCache | None:
        """A fresh cache for the next section (state never carries over between sections or jobs)."""
        return StepCache(self.settings, self.steps) if self.settings is not None else None

    def end_section(self, cache: StepCache | None, sink: ProgressSink, label: str) -> None:
        if cache is None:
            return
        self.computed += len(cache.computed)
        self.total += cache.step + 1
        if cache.calibration is None:
            return
        values = [1.0, *cache.calibration.norm_ratio]
        self.calibrated.append(values)
        sink.message(f"MagCache calibration, {label}: norm_std {cache.calibration.norm_std}, cos_dis "
                     f"{cache.calibration.cos_dis}; ratios for --magcache_mag_ratios:")
        sink.message(format_ratios(values))
        self._write()

    def finish(self, sink: ProgressSink) -> None:
        s = self.settings
        if s is None:
            return
        if s.calibration:
            if self.path is not None:
                sink.result(f"Wrote {self.path}")
            return
        name = "TeaCache" if s.kind == "tea" else "MagCache"
        sink.message(f"{name}: {self.total - self.computed} of {self.total} steps skipped")

    def _write(self) -> None:
        """The ratios file, rewritten after each section (temp file, then rename): the mean over the sections."""
        from framepack_cli.engine.writing import timestamp
        from framepack_cli.io.outputs import unique_base
        from framepack_cli.io.writable import resource_error_for

        save_dir = Path(self.opts.save_path)
        if self.path is None:
            base = unique_base(save_dir, self.opts.output_name or f"{timestamp()}_{self.seed}", [RATIOS_SUFFIX])
            self.path = save_dir / (base + RATIOS_SUFFIX)
        n = min(len(v) for v in self.calibrated)
        mean = [sum(v[i] for v in self.calibrated) / len(self.calibrated) for i in range(n)]
        lines = [f"# MagCache ratios measured by framepack --magcache_calibration: {self.steps} steps, the mean over "
                 f"{len(self.calibrated)} section(s).",
                 "# Give this file to --magcache_mag_ratios; lines starting with # are ignored.",
                 *(f"# section {i + 1}: {format_ratios(v)}" for i, v in enumerate(self.calibrated)),
                 format_ratios(mean)]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise resource_error_for(e, "--save_path", self.path) from None
