"""Models loaded once for many jobs: the command line's single generate / one-frame / kisekae run and the Python
API's `Pipeline` (`framepack_cli.api`) both `prepare` their options, open a `Session` and run each job through
`Session.run`, so a job runs the same code whichever way it was asked for.

`prepare` is everything that happens before a model loads: the model files' headers, the attention kernel for
the DiT's dtype, the input images, `--memory auto` / `--blocks_to_swap auto` and the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from framepack_cli.engine.context import resolve_device
from framepack_cli.engine.models import Models
from framepack_cli.engine.pipeline import JobResult, run_jobs
from framepack_cli.engine.precision import Precision
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.engine.resources import Budget


@dataclass
class Prepared:
    """Options after the memory plan, and what the run found out before loading anything."""

    opts: Any
    device: torch.device
    precision: Precision
    budget: Budget


def resident_models(keep: frozenset[str]) -> tuple[str, ...]:
    """Model files that stay in CPU RAM across phases: the parked VAE and what `keep` names."""
    kinds = {"vae"} | {k for k in keep if k != "text"}
    if "text" in keep:
        kinds |= {"text_encoder1", "text_encoder2"}
    return tuple(sorted(kinds))


def prepare(opts, sink: ProgressSink, *, keep: frozenset[str] = frozenset(), largest=None) -> Prepared:
    """Check the models, kernel and images, apply `--memory auto`, and size the memory budget.

    Args:
        keep: the models that stay loaded between jobs (their host copies count in the RAM check).
        largest: `--from_file`: (label, request) of the largest job, planned for instead of `opts`.

    Raises:
        FramepackError: a model file, the attention kernel or an image is wrong (exit 2).
        ResourceError: nothing fits in memory even with every saving on (exit 3).
    """
    from framepack_cli.engine.generate import job_sections
    from framepack_cli.engine.memory_auto import apply_memory_plan
    from framepack_cli.engine.precision import precision_for
    from framepack_cli.engine.preflight import preflight
    from framepack_cli.engine.resources import model_sizes

    device = resolve_device(opts.device)
    precision = precision_for(opts, device)
    found = preflight(opts, device, precision)
    resident = resident_models(keep)
    host = model_sizes(found, precision, fp8_llm=opts.fp8_llm)
    opts = apply_memory_plan(opts, found, precision, device, sink, job_sections(opts),
                             host_bytes=sum(host.weights.get(m, 0) for m in resident if m != "dit"),
                             largest=largest)
    swap = opts.blocks_to_swap if device.type == "cuda" else 0
    sizes = model_sizes(found, precision, fp8_llm=opts.fp8_llm, fp8_dit=opts.fp8 or opts.fp8_scaled,
                        blocks_to_swap=swap)
    return Prepared(opts, device, precision, Budget(sizes, precision, device, resident=resident, force=opts.force))


# The settings the DiT is loaded with that a job may change (the DiT then loads again): its file and its LoRAs.
DIT_SETTINGS = ("dit", "lora_weight", "lora_multiplier", "include_patterns", "exclude_patterns", "lycoris")


class Relay:
    """A `ProgressSink` that passes every call to `target`, which a session points at each job's own sink (the
    models print their `Loading ...` lines to whichever job loads them)."""

    def __init__(self, target: ProgressSink) -> None:
        self.target = target

    def __getattr__(self, name: str):
        return getattr(self.target, name)


class Session:
    """The models of `prepared.opts`, loaded at the first job that needs each and kept as `keep` says.

    Args:
        prepared: `prepare`'s result (the model settings of every job run here).
        sink: where messages go between jobs (each `run` may pass its own).
        keep: models kept loaded after their phase ("dit", "vae", "image_encoder", "text"); the others are
            loaded again by the next job that needs them.
    """

    def __init__(self, prepared: Prepared, sink: ProgressSink, *, keep: frozenset[str] = frozenset()) -> None:
        self.opts = prepared.opts
        self.device = prepared.device
        self.precision = prepared.precision
        self.budget = prepared.budget
        self.sink = Relay(sink)
        self.models = Models(prepared.opts, prepared.device, prepared.precision, self.sink, keep=keep)
        self.last_job = None  # the job `run` ran last (its `checkpoint`, when it has one)

    def use_dit_settings(self, opts) -> bool:
        """Make the DiT the job's: another DiT file or other LoRAs than the loaded DiT's let it go, so that the job
        loads it again (checked first: a wrong DiT file is one line before anything is released). Returns whether
        the DiT settings changed."""
        from framepack_cli.engine.context import free_memory
        from framepack_cli.engine.preflight import check_models

        models = self.models
        changed = {k: getattr(opts, k) for k in DIT_SETTINGS if getattr(opts, k) != getattr(models.opts, k)}
        if not changed:
            return False
        if "dit" in changed:
            check_models(opts, kinds=("dit",))
        models._loaded.pop("dit", None)
        free_memory(self.device)
        models.opts = models.opts.model_copy(update=changed)
        self.opts = models.opts
        return True

    def check(self, opts) -> None:
        """A job's own checks before it samples: step-cache settings, images, memory, output folder, preview file.
        (The command line's single run makes them in `engine.generate` before opening the session.)"""
        from framepack_cli.engine.generate import job_sections
        from framepack_cli.engine.preflight import check_images, job_images
        from framepack_cli.engine.preview import check_preview_target
        from framepack_cli.models.step_cache import settings_from_options

        settings_from_options(opts)
        check_images(job_images(opts))
        self.budget.check(opts, job_sections(opts))
        check_preview_target(opts)

    def run(self, opts, sink: ProgressSink | None = None, *, write: bool = True, checkpoint: bool = True) -> JobResult:
        """Run one job with this session's models.

        Args:
            opts: the job's validated options (its model settings must be the session's).
            sink: the job's progress sink (default: the session's).
            write: decode and write the outputs per `--output_type` (False: the latent only, nothing written).
            checkpoint: keep the per-section resume checkpoint (`--resume` / `--no_resume_file` as given).

        Raises:
            FramepackError: the job failed (after saying which checkpoint it kept, if any).
        """
        from framepack_cli.engine.generate import make_job
        from framepack_cli.engine.resume import attach_single, kept_line

        sink = sink or self.sink.target
        previous, self.sink.target = self.sink.target, sink
        try:
            job = self.last_job = make_job(opts)
            if checkpoint and write:
                attach_single(job, opts, sink)
            result = run_jobs([job], self.models, sink, report_errors=False, write=write)[0]
            if result.exc is not None:
                if (kept := kept_line()) is not None:
                    sink.message(kept)
                raise result.exc
            return result
        finally:
            self.sink.target = previous

