"""Samples during `framepack train` (`--sample_prompts`, `--sample_every_n_steps/epochs`, `--sample_at_first`).

Every prompt of the file becomes the options of one `framepack generate` job (`VideoJob`, or `OneFrameJob` with
`--one_frame`) and goes through the same phases as `generate` (`framepack_cli.engine.pipeline`):

- `check()` before training (exit 2): the file parses, every image exists and decodes, the model files are what
  their flags expect, every video prompt is long enough for one section, one-frame prompts have `--of`; the
  sample folder is created and proven writable (exit 3 when not).
- `prepare()` before training: every image is VAE-encoded and SigLIP-embedded and every prompt (and negative
  prompt when real CFG is on) encoded once; the image and text encoders are then freed, the VAE stays (parked on
  the CPU when training on a GPU) for decoding.
- `render(dit, step=, epoch=)`: every prompt sampled with the training DiT itself (never a second DiT), in eval
  mode without gradients, then decoded and written to `<output_dir>/sample/`; the DiT's (and the network's)
  train mode and the torch CPU/CUDA, Python and NumPy RNG states are restored afterwards.

Prompt settings follow the reference trainer (musubi-tuner `fpack_train_network.py`): 256x256 (rounded down to
multiples of 8), 20 steps, `--g` 10.0 (distilled guidance), real CFG only when `--l` is not 1 (its negative is
`--n`, else the empty prompt), a random seed when `--d` is absent, sections of `--latent_window_size`, `--f1`
forward sampling, `--one_frame` one-frame samples with the `--of` options. Files:
`<output_name>_<e%06d (epoch) | %06d (step)>_<prompt index:02d>_<YYYYmmddHHMMSS>[_<seed given>].mp4` (24 fps, as
the reference) or `..._000.png` for one-frame samples.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from pathlib import Path

import torch

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError
from framepack_cli.options.sample_prompts import (
    FLAG,
    SamplePrompt,
    load_sample_prompts,
    should_sample,
)

__all__ = ["SAMPLE_FPS", "SamplePrompt", "TrainingSampler", "load_sample_prompts", "should_sample"]

SAMPLE_FPS = 24  # the reference saves training samples at 24 fps


def _where(p: SamplePrompt) -> str:
    return f"{FLAG} {p.where}"


def min_frames(window: int) -> int:
    """Frames a video sample needs for one section of `window` latent frames: `4W + 1`."""
    return 4 * window + 1


def video_sections(frame_count: int, window: int) -> int:
    """The reference's section count for `frame_count` frames (0: too short for one section)."""
    frames = (frame_count - 1) // 4 * 4 + 1
    latent_frames = (frames - 1) // 4 + 1
    return (latent_frames - 1) // window


class TrainingSampler:
    """Sample generation of one training run.

    Args:
        opts: the validated `TrainOptions` (`sample_prompts`, model paths, `f1`, `one_frame`, `latent_window_size`,
            `bulk_decode` / `decode`, the VAE tiling/chunk options, `output_dir`, `output_name`, `dtype`).
        device: the training device.
        sink: progress and warnings (stderr) and `Wrote <path>` results (stdout).
    """

    def __init__(self, opts, device: torch.device, sink: ProgressSink) -> None:
        from framepack_cli.engine.precision import resolve_precision

        self.opts = opts
        self.device = torch.device(device)
        self.sink = sink
        # The DiT runs in the training DiT's dtype (--dtype); VAE, text and image encoders in the precision
        # table's auto dtype (the reference's float16 on CUDA; --vae_dtype float16 is its no-op).
        self.precision = resolve_precision(self.device, dit=opts.dtype)
        self.sample_dir = Path(opts.output_dir) / "sample"
        self.prompts: list[SamplePrompt] = []
        self.options: list = []  # one GenerateOptions per prompt; the seed is drawn per render when not given
        self.created_dir: Path | None = None  # the top folder check() created (for io.writable.remove_created)
        self.failures: list[str] = []  # one line per sample that failed (reported as warnings; training goes on)
        self.results: list = []  # the JobResults of the last render (latent, files, error per prompt)
        self.models = None
        self._conds: list | None = None

    # ------------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Everything that can be checked before training; all problems at once.

        Raises:
            FramepackError: bad prompt file or prompt settings, missing or unreadable image, wrong model file.
            ResourceError: the sample folder cannot be created or written.
        """
        from framepack_cli.engine.preflight import check_images, check_models, job_images
        from framepack_cli.io.writable import ensure_writable_dir

        self.prompts = load_sample_prompts(self.opts.sample_prompts)
        errors: list[str] = []
        notes: list[str] = []
        options = []
        for p in self.prompts:
            try:
                o = self._job_options(p, notes)
                try:
                    check_images(job_images(o))
                except FramepackError as e:
                    raise FramepackError(f"{_where(p)}: {e.message}") from None
                options.append(o)
            except FramepackError as e:
                errors += e.message.splitlines()
        if errors:
            raise FramepackError("\n".join(errors))
        check_models(self.opts)
        for note in notes:
            self.sink.message(note)
        self.options = options
        self.created_dir = ensure_writable_dir(self.sample_dir, "--output_dir")

    def _resolve(self, p: SamplePrompt, key: str, value: str, errors: list[str]) -> str:
        """A relative path as the reference reads it (the current folder), else beside the prompt file."""
        path = Path(value).expanduser()
        if path.exists():
            return str(path)
        beside = Path(self.opts.sample_prompts).parent / path
        if not path.is_absolute() and beside.exists():
            return str(beside)
        tried = "" if path.is_absolute() else f" (looked in the current folder and in {beside.parent})"
        errors.append(f"{_where(p)}: {p.flag(key)} {value}: file not found{tried}")
        return value

    def _job_options(self, p: SamplePrompt, notes: list[str]):
        """The `GenerateOptions` of prompt `p` (seed left as given); problems raise, notes are collected."""
        from framepack_cli.options.generate import GenerateOptions, parse_one_frame
        from framepack_cli.options.validation import OptionsError, validate

        o = self.opts
        window = o.latent_window_size
        errors: list[str] = []
        where = _where(p)

        # size: the reference rounds down to multiples of 8; the DiT needs multiples of 16 (2x2 latent patches)
        size = {}
        for key in ("width", "height"):
            given = getattr(p, key)
            px = given // 8 * 8
            if px < 16 or px % 16:
                try_px = max(16, given // 16 * 16)
                errors.append(f"{where}: {p.flag(key)} {given}: width and height must be multiples of 16 (the DiT "
                              f"works on 2x2 patches of the 8x smaller latent); use {p.flag(key)} {try_px}")
            size[key] = px

        if p.image_path is None:
            errors.append(f"{where}: every sample prompt needs a start image (FramePack generates from an image; "
                          f"the reference refuses too); add {p.flag('image_path')} path/to/start.png")
            image = None
        else:
            image = self._resolve(p, "image_path", p.image_path, errors)
        controls = [self._resolve(p, "control_image_path", c, errors) for c in p.control_image_paths] \
            if o.one_frame else []  # without --one_frame they are not read (said in a note)

        values = {
            "dit": o.dit, "vae": o.vae, "text_encoder1": o.text_encoder1, "text_encoder2": o.text_encoder2,
            "image_encoder": o.image_encoder, "tokenizer1": o.tokenizer1, "tokenizer2": o.tokenizer2,
            "fp8_llm": o.fp8_llm, "prompt": p.prompt, "negative_prompt": p.negative_prompt, "image_path": image,
            "video_size": (size["height"], size["width"]), "latent_window_size": window, "f1": o.f1,
            "infer_steps": p.sample_steps, "seed": p.seed, "embedded_cfg_scale": p.guidance_scale,
            "guidance_scale": 1.0 if p.cfg_scale is None else p.cfg_scale, "dtype": o.dtype,
            "vae_tiling": o.vae_tiling, "vae_chunk_size": o.vae_chunk_size,
            "vae_spatial_tile_sample_min_size": o.vae_spatial_tile_sample_min_size, "bulk_decode": o.bulk_decode,
            "decode": o.decode,
            "save_path": str(self.sample_dir), "output_type": "video", "fps": SAMPLE_FPS,
        }
        if o.one_frame:
            if p.one_frame is None:
                errors.append(f"{where}: --one_frame samples need the one-frame options of each prompt (the "
                              f"reference fails without them); add {p.flag('one_frame')} default, or e.g. "
                              f"{p.flag('one_frame')} no_2x,no_4x,target_index=1,control_index=0")
            else:
                try:
                    parse_one_frame(p.one_frame)
                except ValueError as e:
                    errors.append(f"{where}: {str(e).replace('--one_frame_inference', p.flag('one_frame'), 1)}")
                values["one_frame_inference"] = p.one_frame
            values["control_image_path"] = controls or None
        else:
            n = video_sections(p.frame_count, window)
            if n < 1:
                need = min_frames(window)
                errors.append(f"{where}: {p.flag('frame_count')} {p.frame_count}: a video sample needs at least "
                              f"{need} frames with --latent_window_size {window} (one section; the reference "
                              f"writes nothing for fewer); use {p.flag('frame_count')} {need} or more, or train "
                              "with --one_frame for single-image samples")
            else:
                values["video_sections"] = n
                frames = 4 * n * window + 1
                if frames != p.frame_count:
                    notes.append(f"{where}: {p.flag('frame_count')} {p.frame_count} makes {frames} frames ({n} "
                                 f"section(s) of {window} latent frames), as the reference")
            for key, why in (("one_frame", "without --one_frame"), ("control_image_path", "without --one_frame")):
                if key in p.given:
                    notes.append(f"Warning: {where}: {p.flag(key)} has no effect {why}")
        for key in ("discrete_flow_shift", "end_image_path", "control_video_path"):
            if key in p.given:
                what = ("FramePack picks its shift from the resolution" if key == "discrete_flow_shift"
                        else "FramePack samples during training do not use it")
                notes.append(f"Warning: {where}: {p.flag(key)} has no effect ({what}, as in the reference)")
        if p.negative_prompt is not None and values["guidance_scale"] == 1.0:
            notes.append(f"Warning: {where}: {p.flag('negative_prompt')} has no effect with CFG scale 1 (real CFG "
                         f"is off); add e.g. {p.flag('cfg_scale')} 5")
        if errors:
            raise FramepackError("\n".join(errors))
        try:
            return validate(GenerateOptions, values)
        except OptionsError as e:
            raise FramepackError("\n".join(f"{where}: {line}" for line in e.lines)) from None

    # ------------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Encode every image and prompt once, then free the image and text encoders (the VAE stays, on the CPU
        when training on a GPU). Call after `check()`, before the training DiT loads.

        Raises:
            FramepackError / ResourceError: an image or prompt could not be encoded (out of memory included).
        """
        from framepack_cli.engine.generate import make_job
        from framepack_cli.engine.models import Models
        from framepack_cli.engine.pipeline import JobResult, condition_jobs, failure_reporter, warn_long_prompts
        from framepack_cli.errors import ResourceError

        if not self.options:
            self.check()
        # Seeds do not matter for the encodings; a fixed one keeps the jobs from drawing one from `random`.
        jobs = [make_job(o.model_copy(update={"seed": 0}), label=p.label(len(self.prompts)))
                for p, o in zip(self.prompts, self.options, strict=True)]
        self.models = Models(self.options[0], self.device, self.precision, self.sink)
        self.sink.message(f"Encoding the {len(jobs)} sample prompt(s) of {self.opts.sample_prompts}")
        warn_long_prompts(jobs, self.models, self.sink)
        results = [JobResult(j.label, j.seed) for j in jobs]
        with torch.no_grad():
            conds, _ = condition_jobs(jobs, self.models, self.sink, results, failure_reporter(self.sink, False))
        failed = [r for r in results if r.exc is not None]
        if failed:
            error = ResourceError if any(isinstance(r.exc, ResourceError) for r in failed) else FramepackError
            raise error("\n".join(f"{r.label}: {line}" for r in failed for line in r.exc.message.splitlines()),
                        hint=failed[0].exc.hint)
        self.models.park_vae()
        self._conds = conds

    # ------------------------------------------------------------------------------------------------------
    def file_base(self, p: SamplePrompt, *, step: int, epoch: int | None) -> str:
        """`<output_name>_<e%06d | %06d>_<index:02d>_<YYYYmmddHHMMSS>[_<seed>]`, the reference's names (the seed
        only when the prompt gives one)."""
        name = f"{self.opts.output_name}_" if self.opts.output_name else ""
        when = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
        seed = "" if p.seed is None else f"_{p.seed}"
        return f"{name}{when}_{p.index:02d}_{time.strftime('%Y%m%d%H%M%S', time.localtime())}{seed}"

    def render(self, dit, *, step: int, epoch: int | None = None, network: torch.nn.Module | None = None) -> list[Path]:
        """Sample every prompt with `dit` (the training DiT, LoRA attached) and write the files.

        Args:
            step: the global optimizer step (names the files unless `epoch` is given).
            epoch: the epoch that just ended (1-based), for epoch-triggered samples: `e%06d` names.
            network: the trained network (LoRA/LoHa/LoKr); put in eval mode too (no dropout in samples) and
                restored afterwards.

        A sample that fails (out of memory, disk full) is reported as a warning and recorded in `failures`; the
        others are still made and training goes on. Returns the files written.
        """
        from framepack_cli.engine.generate import make_job
        from framepack_cli.engine.pipeline import JobResult, sample_jobs, write_jobs

        if self._conds is None or self.models is None:
            raise RuntimeError("TrainingSampler.render() needs prepare() first")
        models, sink = self.models, self.sink
        total = len(self.prompts)
        states = _rng_states()
        roots = [m for m in (dit, network) if m is not None]
        modes = [(m, m.training) for root in roots for m in root.modules()]  # restored module by module
        rope = {k: getattr(dit, k) for k in ("rope_scaling_timestep_threshold", "rope_scaling_factor")
                if hasattr(dit, k)}
        when = f"epoch {epoch}" if epoch is not None else f"step {step}"
        sink.message(f"Generating {total} sample(s) at {when}")
        files: list[Path] = []
        self.results = []

        def fail(result: JobResult, err: FramepackError) -> None:
            result.error, result.exc = err.message, err
            hint = f"; {err.hint}" if err.hint else ""
            for line in err.message.splitlines():
                text = f"{result.label}: {line}{hint}"
                self.failures.append(text)
                sink.message(f"Warning: {text} (no sample written; training goes on)")

        try:
            for root in roots:
                root.eval()
            models.adopt("dit", dit)
            with torch.no_grad():
                for i, (p, o) in enumerate(zip(self.prompts, self.options, strict=True)):
                    seed = p.seed if p.seed is not None else secrets.randbelow(2**32)
                    torch.manual_seed(seed)  # as the reference (the sampler itself uses its own generator)
                    job = make_job(o.model_copy(update={"seed": seed}), label=p.label(total))
                    job.metadata = _with_training(job.metadata, step=step, epoch=epoch,
                                                  network=self.opts.output_name, prompt_file=self.opts.sample_prompts)
                    results, alive = [JobResult(job.label, job.seed)], [0]
                    sample_jobs([job], [self._conds[i]], alive, models, sink, results, fail)
                    write_jobs([job], alive, models, sink, results, fail,
                               bases={0: self.file_base(p, step=step, epoch=epoch)})
                    models.park_vae()
                    files += results[0].files
                    self.results.append(results[0])
        finally:
            models.disown("dit")
            for k, v in rope.items():
                setattr(dit, k, v)
            for m, was in modes:
                m.training = was
            _restore_rng(states)
        return files


def _with_training(metadata, **training):
    """Wrap a job's `metadata(latent)` to add the training context to its `framepack` settings JSON."""

    def meta(latent):
        out = metadata(latent)
        if out and "framepack" in out:
            settings = json.loads(out["framepack"])
            settings["training"] = training
            out = {**out, "framepack": json.dumps(settings, sort_keys=True)}
        return out

    return meta


def _rng_states() -> dict:
    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
