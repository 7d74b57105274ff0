"""`framepack generate`: progressive image-to-video (vanilla inverted anti-drifting and F1), single prompt,
`--from_file` batches, `--interactive` and `--latent_path` decoding.

A `VideoJob` follows the section plan of `framepack_cli.plan.sections`: one CPU generator seeded once, one
noise draw per section in generation order, the flow UniPC sampler per section, history latents feeding
the next section's clean / 2x / 4x context. `framepack_cli.engine.pipeline` runs jobs in phases so every
model loads once.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from framepack_cli.engine.context import resolve_device
from framepack_cli.engine.denoiser import make_model_fn, to_device
from framepack_cli.engine.input_notes import BLACK_START, image_notes, seconds_note
from framepack_cli.engine.models import ALL_MODELS, INTERACTIVE_KEEP, Models, keep_line
from framepack_cli.engine.one_frame import OneFrameJob
from framepack_cli.engine.pipeline import Conditioning, JobResult, run_jobs
from framepack_cli.engine.precision import FP16_DIT_WARNING, precision_for
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.engine.resources import Budget, advice, oom_guard
from framepack_cli.engine.resume import section_checkpoint
from framepack_cli.engine.step_caching import JobStepCache
from framepack_cli.engine.writing import run_metadata, write_outputs
from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.models.text_encoders import positive_prompt
from framepack_cli.options.sections import is_pipe_form, parse_section_values, value_for_section
from framepack_cli.plan.schedules import flow_mu, flow_sigmas, noisy_token_count
from framepack_cli.plan.sections import (
    HISTORY_1X,
    HISTORY_2X,
    HISTORY_4X,
    HISTORY_LEN,
    LATENT_CHANNELS,
    f1_layout,
    frames_per_section,
    num_sections,
    plan_f1,
    plan_vanilla,
    vanilla_layout,
)
from framepack_cli.sampling.unipc import sample_unipc


@dataclass
class GenerateResult:
    """What a generation produced: files written, the seed used and the final latent (CTHW, CPU)."""

    seed: int
    latent: torch.Tensor
    files: list[Path] = field(default_factory=list)


def section_values(text: str | None, n: int, flag: str) -> dict[int, str] | None:
    """Per-section values; the pipe form must have exactly one entry per section."""
    if text is None:
        return None
    values = parse_section_values(text)
    if is_pipe_form(text) and len(values) != n:
        raise FramepackError(f"{flag}: {len(values)} entries separated by '|' for {n} sections; give one per section "
                             "(in time order) or use the indexed form '0:...;;;-1:...'")
    return values


class VideoJob:
    """One video: its section plan, the images/prompts it needs and its sampling loop."""

    one_frame = False

    def __init__(self, opts, label: str = "") -> None:
        self.opts = opts
        self.label = label
        self.seed = opts.seed if opts.seed is not None else random.randint(0, 2**32 - 1)
        self.n = num_sections(opts.video_seconds, opts.latent_window_size, opts.video_sections)
        prompts = section_values(opts.prompt, self.n, "--prompt") or {0: ""}
        images = section_values(opts.image_path, self.n, "--image_path") or {0: None}
        self.plan = plan_f1(self.n) if opts.f1 else plan_vanilla(self.n, opts.paddings)
        self.section_image = {s.index: value_for_section(images, s.index, self.n) for s in self.plan}
        # The text each section encodes: an empty prompt is encoded as " ", as the reference does.
        self.section_prompt = {s.index: positive_prompt(value_for_section(prompts, s.index, self.n))
                               for s in self.plan}

    def vae_images(self) -> list[str | None]:
        return [*self.section_image.values(), *([self.opts.end_image_path] if self.opts.end_image_path else [])]

    def siglip_images(self) -> list[str | None]:
        return list(self.section_image.values())

    def prompts(self) -> list[str]:
        return list(self.section_prompt.values())

    def metadata(self, latent: torch.Tensor) -> dict[str, str] | None:
        return run_metadata(self.opts, self.seed, latent, {"video_sections": self.n})

    def notes(self) -> list[str]:
        """Settings that will have no effect and odd inputs, said before the work starts."""
        o, out = self.opts, []
        height, width = o.video_size
        if self.section_image[0] is None:
            out.append(BLACK_START)
        for path in dict.fromkeys(self.section_image[i] for i in sorted(self.section_image) if self.section_image[i]):
            out += image_notes("--image_path", path, width, height)
        if o.end_image_path:
            out += image_notes("--end_image_path", o.end_image_path, width, height)
        if (note := seconds_note(o, self.n)) is not None:
            out.append(note)
        if o.negative_prompt and o.guidance_scale == 1.0:
            out.append("Warning: --negative_prompt has no effect with --guidance_scale 1 (real CFG off)")
        for flag, text in (("--prompt", o.prompt), ("--image_path", o.image_path)):
            if text and ";;;" in text:
                unused = sorted(i for i in parse_section_values(text) if i >= self.n or i < -self.n)
                if unused:
                    out.append(f"Warning: {flag}: section index {', '.join(map(str, unused))} is outside the "
                               f"{self.n} section(s) of this video and is not used")
        return out

    def sample(self, dit, cond: Conditioning, device, dtype, sink: ProgressSink) -> torch.Tensor:
        """All sections, in generation order; returns the final latent `[16, T, h, w]` on the CPU."""
        o = self.opts
        height, width = o.video_size
        lh, lw = height // 8, width // 8
        window = o.latent_window_size
        sink.message(f"Seed {self.seed}, {self.n} section(s) of {window} latent frames, {height}x{width}, "
                     f"{o.infer_steps} steps{', F1' if o.f1 else ''}")
        generator = torch.Generator("cpu").manual_seed(self.seed)
        latent_frames = (frames_per_section(window) + 3) // 4
        sigmas = flow_sigmas(o.infer_steps, flow_mu(noisy_token_count(latent_frames, lh, lw), o.flow_shift))
        zeros_ctx = torch.zeros(1, LATENT_CHANNELS, HISTORY_LEN, lh, lw)
        if o.f1:
            history = torch.cat([zeros_ctx, cond.latents[self.section_image[0]]], dim=2)
        else:
            history = zeros_ctx.clone()
            if o.end_image_path:
                history[:, :, 0:1] = cond.latents[o.end_image_path]
        total = 1 if o.f1 else 0
        checkpoint = section_checkpoint(self)  # --resume: the history and generator of the last section done
        history, total, first = checkpoint.restore(history, total, generator, self.n)
        negative = to_device(cond.negative, device, dtype) if cond.negative is not None else None
        caches = JobStepCache(o, self.seed)
        caches.start(sink)
        sink.start_sections(self.n)
        for s in self.plan:
            if s.loop < first:
                continue
            sink.start_section(s.loop, self.n, f"section {s.index + 1}/{self.n}")
            start_latent = cond.latents[self.section_image[s.index]]
            if o.f1:
                lay = f1_layout(window)
                x4, x2, x1 = history[:, :, -HISTORY_LEN:].split([HISTORY_4X, HISTORY_2X, HISTORY_1X], dim=2)
                clean = torch.cat([start_latent, x1], dim=2)
            else:
                lay = vanilla_layout(s.latent_padding, window)
                post, x2, x4 = history[:, :, :HISTORY_LEN].split([HISTORY_1X, HISTORY_2X, HISTORY_4X], dim=2)
                clean = torch.cat([start_latent, post], dim=2)
            context = {
                "latent_indices": torch.tensor([lay.latent_indices]),
                "clean_latents": clean, "clean_latent_indices": torch.tensor([lay.clean_latent_indices]),
                "clean_latents_2x": x2, "clean_latent_2x_indices": torch.tensor([lay.clean_latent_2x_indices]),
                "clean_latents_4x": x4, "clean_latent_4x_indices": torch.tensor([lay.clean_latent_4x_indices]),
            }
            model_fn = make_model_fn(
                dit, positive=to_device(cond.texts[self.section_prompt[s.index]], device, dtype), negative=negative,
                image_embeddings=cond.embeddings[self.section_image[s.index]], guidance_scale=o.guidance_scale,
                guidance_rescale=o.guidance_rescale, embedded_cfg_scale=o.embedded_cfg_scale, context=context,
                dtype=dtype, device=device, step_cache=(step_cache := caches.section()),
            )
            noise = torch.randn((1, LATENT_CHANNELS, latent_frames, lh, lw), generator=generator, dtype=torch.float32)
            with oom_guard(f"sampling section {s.index + 1}/{self.n} at {height}x{width}", device,
                           advice("sampling", device, o)):
                out = sample_unipc(model_fn, noise.to(device), sigmas,
                                   callback=lambda d: sink.step(d["i"] + 1, o.infer_steps)).float().cpu()
            if o.f1:
                history = torch.cat([history, out], dim=2)
            else:
                if s.is_last:
                    out = torch.cat([start_latent, out], dim=2)
                history = torch.cat([out, history], dim=2)
            total += out.shape[2]
            checkpoint.save(s.loop + 1, self.n, history, total, generator)
            sink.section_output((history[:, :, -total:] if o.f1 else history[:, :, :total])[0])  # --preview
            sink.end_section()
            caches.end_section(step_cache, sink, f"section {s.index + 1}/{self.n}")
        caches.finish(sink)
        final = history[:, :, -total:] if o.f1 else history[:, :, :total]
        return final[0].contiguous()  # CTHW, as the reference saves it


def make_job(opts, label: str = ""):
    """A video job, or a one-frame job when `--one_frame_inference` is set."""
    if opts.one_frame_inference is not None:
        return OneFrameJob(opts, label)
    return VideoJob(opts, label)


# --------------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------------


def job_sections(opts) -> int:
    """Sections a job's options plan (1 for one-frame jobs)."""
    if opts.one_frame_inference is not None:
        return 1
    return num_sections(opts.video_seconds, opts.latent_window_size, opts.video_sections)


def interactive_keep(opts) -> frozenset[str]:
    return ALL_MODELS if opts.keep_models else INTERACTIVE_KEEP


def run(opts, sink: ProgressSink) -> list[JobResult] | list[GenerateResult]:
    """Entry point of `framepack generate`, `one-frame` and `kisekae` (validated options; the sink is the CLI's).

    Before any model loads: the model files (headers), the attention kernel against the DiT's dtype, the input
    images, the sanity bounds and the memory each phase needs (`framepack_cli.engine.resources`).
    """
    from framepack_cli.engine.processes import join_processes
    from framepack_cli.models.step_cache import settings_from_options

    settings_from_options(opts)  # bad ratios / both caches: one line, before anything loads

    group = join_processes(opts, sink)  # None in a plain run; under several processes, each runs some jobs
    if group is not None:
        return group.run(_run, opts, sink)
    return _run(opts, sink)


def _run(opts, sink: ProgressSink, group=None) -> list[JobResult] | list[GenerateResult]:
    from framepack_cli.engine.preflight import check_models
    from framepack_cli.engine.session import Session, prepare

    prepared = None
    if group is not None and opts.resume:
        raise FramepackError("--resume: resumes in one process; run it without accelerate launch / torchrun "
                             "(checkpoints are written by single-process runs only)")
    if opts.blocks_to_swap == "auto" and (opts.latent_path or opts.save_merged_model):
        opts = opts.model_copy(update={"blocks_to_swap": 0})  # no DiT runs: nothing to plan
    if opts.latent_path:
        check_models(opts, kinds=("vae",))
    elif opts.save_merged_model:
        check_models(opts, kinds=("dit",))
    else:
        # Model headers, kernel, images; --memory auto / --blocks_to_swap auto (--from_file: planned for the
        # file's largest job, the models load once); the memory budget (engine.session).
        largest = batch_largest(opts) if opts.from_file and resolve_device(opts.device).type == "cuda" else None
        prepared = prepare(opts, sink, keep=interactive_keep(opts) if opts.interactive else frozenset(),
                           largest=largest)
        opts, device, precision, budget = prepared.opts, prepared.device, prepared.precision, prepared.budget
        if not opts.from_file and not opts.interactive:
            budget.check(opts, job_sections(opts))
    from framepack_cli.engine.lifecycle import RunTracker
    from framepack_cli.errors import Interrupted
    from framepack_cli.io.writable import ensure_writable_dir, remove_created

    # The output folder is created and proven writable before any model loads (not found unwritable after
    # the sampling); a folder this run created is removed again when the run leaves it empty.
    flag, folder = (("--save_merged_model", Path(opts.save_merged_model).parent) if opts.save_merged_model
                    and not opts.latent_path else ("--save_path", Path(opts.save_path)))
    created = ensure_writable_dir(folder, flag)
    before = ("before decoding" if opts.latent_path else "while merging" if opts.save_merged_model
              else "before sampling")
    sink = RunTracker(sink, before=before)
    try:
        if opts.latent_path:
            return decode_latent_files(opts, sink)
        if opts.save_merged_model:
            return save_merged_model(opts, sink)
        if precision.dit == torch.float16:
            sink.message(FP16_DIT_WARNING)
        from framepack_cli.engine.preview import check_preview_target

        check_preview_target(opts)  # a file at --preview that is not our preview: refused before any model loads
        if opts.from_file:
            return run_batch(opts, device, precision, sink, budget, group=group)
        if opts.interactive:
            return run_interactive(opts, device, precision, sink, budget=budget)
        from framepack_cli.engine.seed_runs import run_seeds, several_seeds

        if several_seeds(opts):  # --seed 1 2 3 / 10-13 / --count N: one job per seed, models loaded once
            return run_seeds(opts, Models(opts, device, precision, sink), sink, run_jobs, make_job)
        # one job, through the same session the Python API uses (one process: with its resume checkpoint)
        return [Session(prepared, sink).run(opts, checkpoint=group is None)]
    except KeyboardInterrupt:
        # The writers have dropped their partial files by now; say how far the run got and what it kept.
        from framepack_cli.engine.resume import kept_line

        if (kept := kept_line()) is not None:
            sink.message(kept)
        raise Interrupted(sink.interrupted_line()) from None
    finally:
        sink.close()
        remove_created(folder, created)


def save_merged_model(opts, sink: ProgressSink) -> list[str]:
    """`--save_merged_model PATH`: merge the LoRAs into the DiT, save it in the same key layout, and stop."""
    from framepack_cli.engine.loras import lora_specs_from_options
    from framepack_cli.io.writable import resource_error_for, writing_failed
    from framepack_cli.models.lora import merge_dit_file

    try:
        lines = merge_dit_file(opts.dit, lora_specs_from_options(opts), opts.save_merged_model,
                               verbose=opts.verbose, output_flag="--save_merged_model")
    except OSError as e:
        if not writing_failed(e, opts.save_merged_model):
            raise
        raise resource_error_for(e, "--save_merged_model", opts.save_merged_model) from None
    for line in lines:
        sink.message(line)
    sink.result(f"Wrote {opts.save_merged_model}")
    return lines


def _line_options(opts, line: str, where: str, budget: Budget | None = None):
    """Validated options of one batch/interactive line, checked against `budget` (errors name the line)."""
    from framepack_cli.options.prompt_line import job_values, parse_prompt_line
    from framepack_cli.options.validation import OptionsError, validate

    try:
        overrides = parse_prompt_line(line)
    except ValueError as e:
        raise FramepackError(f"{where}: {e}") from None
    base = opts.model_dump(include=opts.model_fields_set - {"keep_models", "resume"})  # run settings, not job ones
    try:
        line_opts = validate(type(opts), job_values(base, overrides, opts.video_size))
    except OptionsError as e:
        raise FramepackError("\n".join(f"{where}: {line_err}" for line_err in e.lines)) from None
    from framepack_cli.engine.preflight import check_images, job_images

    try:
        check_images(job_images(line_opts))
        if budget is not None:
            budget.check(line_opts, job_sections(line_opts))
    except FramepackError as e:
        raise type(e)("\n".join(f"{where}: {m}" for m in e.message.splitlines()), hint=e.hint) from None
    return line_opts


def batch_largest(opts):
    """(label, `memory_plan.Request`) of the `--from_file` job that needs the most memory (lines that do not
    parse are left out: they are reported when the batch runs); None for a file without jobs."""
    from framepack_cli.engine.memory_auto import largest_request

    path = Path(opts.from_file)
    jobs = []
    for no, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            line_opts = _line_options(opts, line, f"{path.name} line {no}")
        except FramepackError:
            continue
        jobs.append((f"{path.name} line {no}", line_opts, job_sections(line_opts)))
    return largest_request(jobs)


def parse_batch(opts, sink: ProgressSink, budget: Budget | None = None, *,
                quiet: bool = False) -> tuple[list, dict[str, FramepackError]]:
    """`--from_file`'s jobs, one per line, and its bad lines (label -> error), each said as `Error: ...` lines
    unless `quiet`. Every check of a line happens here, before any model loads."""
    path = Path(opts.from_file)
    jobs, bad = [], {}
    for no, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name} line {no}"
        try:
            jobs.append(make_job(_line_options(opts, line, where, budget), label=where))
        except FramepackError as e:
            bad[where] = e
            if not quiet:
                for msg in e.message.splitlines():
                    sink.message(f"Error: {msg}")
    if not jobs and not bad:
        raise FramepackError(f"--from_file: {path} holds no prompts (only empty lines and # comments)")
    return jobs, bad


def batch_outcome(failed: list[str], done: int, short: bool, sink: ProgressSink, where: str = "") -> None:
    """Say how many jobs were done; raise the one error line naming the failed jobs (exit 3 when `short`:
    a job failed for lack of memory or disk)."""
    sink.message(f"Batch: {done} of {done + len(failed)} job(s) done{where}")
    if failed:
        error = ResourceError if short else FramepackError
        raise error(f"--from_file: {len(failed)} of {done + len(failed)} job(s) failed: {', '.join(failed)}")


def run_batch(opts, device, precision, sink: ProgressSink, budget: Budget | None = None,
              group=None) -> list[JobResult]:
    """`--from_file`: one job per line; bad lines are reported and skipped; models load once (per process:
    under several processes `group` splits the jobs, `framepack_cli.engine.processes`)."""
    if group is not None:
        return group.run_batch(opts, device, precision, sink, budget)
    from framepack_cli.engine.resume import BatchRecord

    jobs, bad = parse_batch(opts, sink, budget)
    record = BatchRecord(opts, sink)  # checkpoints; --resume: the jobs written before are skipped
    jobs = record.prepare(jobs)
    results = run_jobs(jobs, Models(jobs[0].opts if jobs else opts, device, precision, sink), sink) if jobs else []
    record.finish()
    short = any(isinstance(e, ResourceError) for e in bad.values())
    short |= any(isinstance(r.exc, ResourceError) for r in results)
    failed = list(bad) + [r.label for r in results if r.error]
    batch_outcome(failed, len(results) - sum(1 for r in results if r.error), short, sink)
    return results


def run_interactive(opts, device, precision, sink: ProgressSink, stream=None,
                    budget: Budget | None = None) -> list[JobResult]:
    """`--interactive`: read prompt lines (inline options allowed) until EOF (Ctrl-D).

    The models every prompt needs stay loaded (`INTERACTIVE_KEEP`; all with `--keep_models`); prompt
    encodings are remembered, so the text encoders load again only for a new prompt.
    """
    stream = stream or sys.stdin
    keep = interactive_keep(opts)
    models = Models(opts, device, precision, sink, keep=keep)
    results: list[JobResult] = []
    sink.message(keep_line(keep))
    sink.message("Interactive mode: type a prompt (inline options like --d 42 --vs 2 allowed); Ctrl-D exits.")
    n = 0
    while True:
        if stream.isatty():
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = stream.readline()
        if not line:
            break
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        n += 1
        try:
            job = make_job(_line_options(opts, line, f"prompt {n}", budget), label=f"prompt {n}")
        except FramepackError as e:
            for msg in e.message.splitlines():
                sink.message(f"Error: {msg}")
            continue
        results += run_jobs([job], models, sink)
    return results


def decode_latent_files(opts, sink: ProgressSink) -> list[GenerateResult]:
    """`--latent_path`: decode saved latents (window, fps and seed from their metadata) per `--output_type`."""
    import json

    from framepack_cli.io.outputs import load_latent

    device = resolve_device(opts.device)
    models = Models(opts, device, precision_for(opts, device), sink)
    results = []
    for path in opts.latent_path:
        latent, meta = load_latent(Path(path))
        if latent.ndim == 5 and latent.shape[0] == 1:
            latent = latent[0]
        if latent.ndim != 4 or latent.shape[0] != LATENT_CHANNELS:
            raise FramepackError(f"--latent_path: {path} holds a tensor of shape {list(latent.shape)}, expected "
                                 f"[{LATENT_CHANNELS}, T, H/8, W/8]")
        seed = int(meta.get("seeds", "0") or 0)
        try:
            settings = json.loads(meta.get("framepack", "{}"))
        except json.JSONDecodeError:
            settings = {}
        one_frame = bool(settings.get("one_frame_inference"))
        # Flags given on the command line win; else the file's metadata; else the defaults, said out loud.
        update = {}
        for name in ("latent_window_size", "fps"):
            if name in opts.model_fields_set:
                continue
            if name in meta:
                update[name] = int(meta[name])
            elif latent.shape[1] > 1:
                sink.message(f"Warning: {path} records no {name}; using {getattr(opts, name)} "
                             f"(pass --{name} if it was generated with another)")
        o = opts.model_copy(update=update)
        stem = Path(path).name.removesuffix(".safetensors").removesuffix("_latent")
        with oom_guard(f"in VAE decode of {Path(path).name}", device, advice("decode", device, o)):
            files = write_outputs(o, latent.float(), seed, meta or None, vae=models.vae, sink=sink, base=stem,
                                  one_frame=one_frame, save_latent_file=False, latent_source=str(path))
        results.append(GenerateResult(seed=seed, latent=latent, files=files))
    return results
