"""Run generation jobs in phases so each model loads once and only one big model is resident at a time:

1. images: bucket-resize, VAE-encode, SigLIP-embed (every job);
2. text: encode every distinct prompt once (every job);
3. DiT: sample every job;
4. decode and write every job's outputs.

A job that fails (a user error: bad image, bad prompt syntax; out of memory while encoding its images,
sampling or decoding) is reported with its label and the others go on; the caller decides the exit code
from the failures. Out of memory is one line naming the phase (`framepack_cli.engine.resources.oom_guard`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from framepack_cli.engine.denoiser import TextCond
from framepack_cli.engine.models import Models
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.engine.resources import advice, oom_guard
from framepack_cli.engine.writing import write_outputs
from framepack_cli.errors import FramepackError


@dataclass
class Conditioning:
    """What a job's sampler needs besides the DiT, keyed the way the job asked for it."""

    latents: dict[Any, torch.Tensor] = field(default_factory=dict)  # image path (or None) -> [1, 16, 1, h, w]
    embeddings: dict[Any, torch.Tensor] = field(default_factory=dict)  # image path (or None) -> [1, N, Ds]
    texts: dict[str, TextCond] = field(default_factory=dict)  # prompt -> text conditioning
    negative: TextCond | None = None


class Job(Protocol):
    opts: Any
    label: str
    seed: int
    one_frame: bool

    def notes(self) -> list[str]: ...

    def vae_images(self) -> list[str | None]: ...

    def siglip_images(self) -> list[str | None]: ...

    def prompts(self) -> list[str]: ...

    def sample(self, dit, cond: Conditioning, device: torch.device, dtype: torch.dtype,
               sink: ProgressSink) -> torch.Tensor: ...

    def metadata(self, latent: torch.Tensor) -> dict[str, str] | None: ...


@dataclass
class JobResult:
    """Outcome of one job: its files and latent, or the error that stopped it."""

    label: str
    seed: int
    latent: torch.Tensor | None = None
    files: list = field(default_factory=list)
    error: str | None = None
    exc: FramepackError | None = None


def warn_long_prompts(jobs: list[Job], models: Models, sink: ProgressSink) -> None:
    """One warning per prompt that a text encoder truncates, before any model loads (tokenizers only)."""
    from framepack_cli.engine.input_notes import may_overflow, prompt_length_notes

    named = []
    for job in jobs:
        texts = list(dict.fromkeys(job.prompts()))
        for t in texts:
            short = t if len(t) <= 30 else t[:29] + "…"
            named.append((job, "--prompt" if len(texts) == 1 else f"--prompt {short!r}", t))
        if job.opts.guidance_scale != 1.0 and job.opts.negative_prompt:
            named.append((job, "--negative_prompt", job.opts.negative_prompt))
    named = [x for x in named if may_overflow(x[2])]
    if not named:
        return
    from framepack_cli.models.text_encoders import load_tokenizers

    o = models.opts
    tok1, tok2 = load_tokenizers(o.text_encoder1, o.text_encoder2, o.tokenizer1, o.tokenizer2)
    for job, name, text in named:
        for note in prompt_length_notes([(name, text)], tok1, tok2, custom_system_prompt=job.opts.custom_system_prompt):
            sink.message(f"{job.label}: {note}" if job.label else note)


def with_dtypes(meta: dict[str, str] | None, models: Models) -> dict[str, str] | None:
    """Add each model's dtype to the `framepack` settings JSON of the metadata (`"dtypes": {"dit": ...}`)."""
    if not meta or "framepack" not in meta:
        return meta
    settings = json.loads(meta["framepack"])
    settings["dtypes"] = models.precision.names()
    return {**meta, "framepack": json.dumps(settings, sort_keys=True)}


Fail = Callable[[JobResult, FramepackError], None]


def failure_reporter(sink: ProgressSink, report_errors: bool) -> Fail:
    """`fail(result, err)`: record `err` on the result; with `report_errors`, print it with the job's label."""

    def fail(result: JobResult, err: FramepackError) -> None:
        result.error, result.exc = err.message, err
        if report_errors:
            prefix = f"{result.label}: " if result.label else ""
            hint = f"; {err.hint}" if err.hint else ""
            for line in err.message.splitlines():
                sink.message(f"Error: {prefix}{line}{hint}")

    return fail


def run_jobs(jobs: list[Job], models: Models, sink: ProgressSink, *, report_errors: bool = True,
             write: bool = True) -> list[JobResult]:
    """Run `jobs` through the four phases; see the module docstring.

    Args:
        report_errors: print each failed job's error (batch and interactive runs); a single run leaves that
            to the caller, which raises `JobResult.exc`.
        write: run phase 4 (decode and write); False leaves each result with its latent only (the Python API
            without a `save_path`).
    """
    fail = failure_reporter(sink, report_errors)
    for job in jobs:  # warnings about settings that will have no effect, before any model loads
        for note in job.notes():
            sink.message(f"{job.label}: {note}" if job.label else note)
    warn_long_prompts(jobs, models, sink)
    results = [JobResult(job.label, job.seed) for job in jobs]
    conds, alive = condition_jobs(jobs, models, sink, results, fail)
    sample_jobs(jobs, conds, alive, models, sink, results, fail)
    if write:
        write_jobs(jobs, alive, models, sink, results, fail)
    return results


def condition_jobs(jobs: list[Job], models: Models, sink: ProgressSink, results: list[JobResult],
                   fail: Fail) -> tuple[list[Conditioning], list[int]]:
    """Phases 1 and 2: every job's image latents and embeddings, then its prompt encodings.

    Returns:
        One `Conditioning` per job and the indices of the jobs still alive (a failed job is recorded with
        `fail` and left out).
    """
    import numpy as np

    from framepack_cli.io.images import load_image, resize_to_bucket, to_pixels
    from framepack_cli.models.image_encoder import encode_image
    from framepack_cli.models.text_encoders import encode_prompt
    from framepack_cli.models.vae import vae_encode

    conds = [Conditioning() for _ in jobs]
    alive = list(range(len(jobs)))

    # 1. images -------------------------------------------------------------------------------------------
    rgb_cache: dict[tuple, np.ndarray] = {}
    lat_cache: dict[tuple, torch.Tensor] = {}

    def rgb(path: str | None, h: int, w: int) -> np.ndarray:
        key = (path, h, w)
        if key not in rgb_cache:
            rgb_cache[key] = np.zeros((h, w, 3), np.uint8) if path is None else resize_to_bucket(
                load_image(path)[0], w, h)
        return rgb_cache[key]

    dev = models.device
    if any(job.vae_images() for job in jobs):
        vae = models.vae()
        for i in list(alive):
            h, w = jobs[i].opts.video_size
            try:
                for p in dict.fromkeys(jobs[i].vae_images()):
                    key = (p, h, w)
                    if key not in lat_cache:
                        pixels = torch.zeros(1, 3, 1, h, w) if p is None else to_pixels(rgb(p, h, w))
                        shown = Path(p).name if p else "a blank start image"
                        with oom_guard(f"VAE-encoding {shown} at {h}x{w}", dev, advice("vae", dev, jobs[i].opts)):
                            lat_cache[key] = vae_encode(vae, pixels).float().cpu()
                    conds[i].latents[p] = lat_cache[key]
            except FramepackError as e:
                fail(results[i], e)
                alive.remove(i)
        models.park_vae()
    if any(jobs[i].siglip_images() for i in alive):
        enc = models.image_encoder()
        emb_cache: dict[tuple, torch.Tensor] = {}
        for i in list(alive):
            h, w = jobs[i].opts.video_size
            try:
                for p in dict.fromkeys(jobs[i].siglip_images()):
                    if (p, h, w) not in emb_cache:
                        with oom_guard("encoding images with the image encoder", dev, advice("image_encoder", dev)):
                            emb_cache[(p, h, w)] = encode_image(enc, rgb(p, h, w)).float().cpu()
                    conds[i].embeddings[p] = emb_cache[(p, h, w)]
            except FramepackError as e:
                fail(results[i], e)
                alive.remove(i)
        del enc
        models.release("image_encoder")
    rgb_cache.clear()

    # 2. text: every distinct (prompt, system prompt) once per run; the text encoders load only when one is new
    wanted: dict[int, list[tuple[str, str | None]]] = {}
    for i in alive:
        o = jobs[i].opts
        keys = [(p, o.custom_system_prompt) for p in jobs[i].prompts()]
        if o.guidance_scale != 1.0:
            keys.append((o.negative_prompt or "", o.custom_system_prompt))
        wanted[i] = keys
    needed = dict.fromkeys(k for keys in wanted.values() for k in keys)
    texts = {k: models.text_cache[k] for k in needed if k in models.text_cache}
    new = [k for k in needed if k not in texts]
    if new:
        te1, tok1, te2, tok2 = models.text()
        with oom_guard("encoding the prompts with the text encoders", dev, advice("text", dev, models.opts)):
            for p, system in new:
                vec, mask, pooler = encode_prompt(p, te1, tok1, te2, tok2, custom_system_prompt=system)
                texts[(p, system)] = TextCond(vec.float(), mask, pooler.float())
                models.remember_text((p, system), texts[(p, system)])
        del te1, te2
        models.release("text")
    for i in alive:
        o = jobs[i].opts
        for p in jobs[i].prompts():
            conds[i].texts[p] = texts[(p, o.custom_system_prompt)]
        if o.guidance_scale != 1.0:
            conds[i].negative = texts[(o.negative_prompt or "", o.custom_system_prompt)]
    return conds, alive


def sample_jobs(jobs: list[Job], conds: list[Conditioning], alive: list[int], models: Models, sink: ProgressSink,
                results: list[JobResult], fail: Fail) -> None:
    """Phase 3: sample every alive job with `models.dit()` (failed jobs leave `alive`)."""
    if not alive:
        return
    from framepack_cli.engine.preview import watch_sections

    dit = models.dit()
    for i in list(alive):
        o = jobs[i].opts
        # RoPE scaling is a per-call setting of the DiT; each job may set its own.
        dit.rope_scaling_timestep_threshold = o.rope_scaling_timestep_threshold
        dit.rope_scaling_factor = o.rope_scaling_factor
        if jobs[i].label:
            sink.message(f"{jobs[i].label}: {o.prompt!r}")
        try:
            job_sink = watch_sections(jobs[i], models, sink)  # section times, ETA, peak memory, --preview
            results[i].latent = jobs[i].sample(dit, conds[i], models.device, models.dtype, job_sink)
        except FramepackError as e:
            fail(results[i], e)
            alive.remove(i)
    del dit
    models.release("dit")


def write_jobs(jobs: list[Job], alive: list[int], models: Models, sink: ProgressSink, results: list[JobResult],
               fail: Fail, *, bases: dict[int, str] | None = None) -> None:
    """Phase 4: decode and write every alive job's outputs (`bases`: a file base name per job index)."""
    dev = models.device
    for i in alive:
        job, res = jobs[i], results[i]
        try:
            with oom_guard("in VAE decode", dev, advice("decode", dev, job.opts)):
                res.files = write_outputs(job.opts, res.latent, job.seed, with_dtypes(job.metadata(res.latent), models),
                                          vae=models.vae, sink=sink, one_frame=job.one_frame,
                                          base=(bases or {}).get(i))
            if (written := getattr(job, "on_written", None)) is not None:  # engine.resume: drop the checkpoint
                written(res.files)
        except FramepackError as e:
            fail(res, e)
