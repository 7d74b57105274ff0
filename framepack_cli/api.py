"""The Python API: load the models once, then generate videos and edit images from a notebook or another tool.

    from framepack_cli import Pipeline

    pipe = Pipeline.from_files(models_dir="models")            # or dit=..., vae=..., text_encoder1=..., ...
    res = pipe.generate("start.png", "a cat walks", seconds=2, seed=42, save_path="out")
    res.files                                                  # [PosixPath('out/..._42.mp4')]
    frames = res.frames()                                      # uint8 array [T, H, W, 3]
    edit = pipe.one_frame("start.png", "a cat, smiling", seed=1)
    dressed = pipe.kisekae("person.png", "clothes.png", "a person in a red coat")

Every keyword is an option of the matching command (`framepack generate --help`), spelled with underscores
(`infer_steps=10`, `video_size=(640, 640)`, `lora_weight=[...]`), validated by the same options models as the
command line: a wrong value raises `FramepackError` whose `.message` is the line the CLI would print. The
command line's single runs go through the same `framepack_cli.engine.session.Session.run` as these calls.

Model settings (the model files, `device`, `dtype`, `fp8*`, `blocks_to_swap`, `memory`, `attn_mode`, `compile`,
VAE chunking/tiling) are fixed when the pipeline is made; the rest is per call. The DiT's LoRAs (`lora_weight`,
`lora_multiplier`, `include_patterns`, `exclude_patterns`) and `f1` (with an F1 DiT known to the pipeline) may
change per call: the DiT then loads again with them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError

__all__ = ["Cancelled", "Event", "Pipeline", "Result"]

# Options the models are loaded with: given to `Pipeline.from_files`, the same for every job (but the DiT's
# LoRAs, `PER_JOB_DIT`).
MODEL_SETTINGS = frozenset({
    "dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizer1", "tokenizer2", "models_dir",
    "disable_numpy_memmap", "lora_weight", "lora_multiplier", "include_patterns", "exclude_patterns", "lycoris",
    "dtype", "vae_dtype", "text_encoder_dtype", "image_encoder_dtype", "force", "device", "attn_mode", "split_attn",
    "fp8", "fp8_scaled", "fp8_fast", "fp8_llm", "blocks_to_swap", "memory", "use_pinned_memory_for_block_swap",
    "compile", "compile_backend", "compile_mode", "compile_dynamic", "compile_fullgraph", "compile_cache_size_limit",
    "vae_tiling", "vae_chunk_size", "vae_spatial_tile_sample_min_size", "verbose", "keep_models",
})
PER_JOB_DIT = frozenset({"lora_weight", "lora_multiplier", "include_patterns", "exclude_patterns", "lycoris"})
# Command-line modes that are not one job: use the command, or a loop over calls.
NOT_A_JOB = {
    "from_file": "loop over pipe.generate(...) calls (the models stay loaded)",
    "interactive": "call pipe.generate(...) for each prompt",
    "latent_path": "decode a saved latent with `framepack generate --latent_path`",
    "save_merged_model": "merge with `framepack generate --save_merged_model` or `framepack lora merge`",
    "count": "loop over seeds (the models stay loaded)",
    "settings_from": "use `framepack generate --settings_from`",
}
# Friendlier names for the API's own arguments -> the command's option names.
RENAMED = {"image": "image_path", "end_image": "end_image_path", "seconds": "video_seconds",
           "sections": "video_sections", "control_images": "control_image_path",
           "control_masks": "control_image_mask_path"}


class Cancelled(Exception):
    """The job was stopped by `Pipeline.cancel()` or by a callback that raised `Cancelled`.

    A video keeps its per-section resume checkpoint (when it writes files): `pipe.generate(..., resume=save_path)`
    continues from the last finished section. `checkpoint` names it (None when there is none).
    """

    def __init__(self, message: str = "cancelled", checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class Event:
    """What a job reports to its `callback` while it runs.

    kind: "message" (a status or warning line, `text`), "section_start" (`section` of `sections` begins,
    `text` its label), "step" (`step` of `steps` sampler steps of `section` are done), "section_end" (the section
    is done: `seconds` it took, `eta_s` for the whole job, `preview` the preview file when `preview=` is set,
    `latent` the video's latent so far, CTHW), "written" (`files`: an output file is in place).
    """

    kind: str
    text: str | None = None
    section: int | None = None
    sections: int | None = None
    step: int | None = None
    steps: int | None = None
    seconds: float | None = None
    eta_s: float | None = None
    preview: str | None = None
    latent: Any = None
    files: list[Path] = field(default_factory=list)


@dataclass
class Result:
    """A finished job: its seed, latent (`[16, T, H/8, W/8]`, CPU float32), the files written (none without a
    `save_path`) and the options it ran with."""

    seed: int
    latent: Any
    files: list[Path]
    options: Any
    _pipe: Pipeline | None = field(default=None, repr=False)
    _frames: Any = field(default=None, repr=False)

    def frames(self):
        """The decoded frames as a uint8 numpy array `[T, H, W, 3]` (decoded once, with the pipeline's VAE and the
        job's `decode` mode: the same pixels its MP4 / PNG files were encoded from)."""
        if self._frames is None:
            if self._pipe is None:
                raise FramepackError("Result.frames(): this result has no pipeline to decode with")
            self._frames = self._pipe.decode(self.latent, self.options)
        return self._frames


class _Collect:
    """A frame writer that keeps the frames in memory."""

    def __init__(self) -> None:
        self.parts: list = []

    def write(self, frames) -> None:
        self.parts.append(frames)


class _Events:
    """The job's `ProgressSink`: passes everything to `inner` and reports `Event`s to `callback`; a cancel asked
    for with `Pipeline.cancel()` stops the job at its next sampler step."""

    def __init__(self, inner, callback: Callable[[Event], Any] | None, cancel: threading.Event) -> None:
        self.inner, self.callback, self.cancel = inner, callback, cancel
        self.section: int | None = None
        self.sections: int | None = None
        self.latent = None

    def _emit(self, event: Event) -> None:
        if self.callback is not None:
            self.callback(event)

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled by Pipeline.cancel()")

    def message(self, text: str) -> None:
        self.inner.message(text)
        self._emit(Event("message", text=text))

    def result(self, text: str) -> None:
        self.inner.result(text)
        if text.startswith("Wrote "):
            self._emit(Event("written", text=text, files=[Path(text[len("Wrote "):])]))

    def start_sections(self, total: int) -> None:
        self.sections = total
        self.inner.start_sections(total)

    def start_section(self, index: int, total: int, label: str) -> None:
        self._check()
        self.section, self.sections = index, total
        self.inner.start_section(index, total, label)
        self._emit(Event("section_start", text=label, section=index, sections=total))

    def step(self, done: int, total: int) -> None:
        self.inner.step(done, total)
        self._emit(Event("step", section=self.section, sections=self.sections, step=done, steps=total))
        if done < total:  # the last step finishes the section: its checkpoint is written before the next check
            self._check()

    def section_output(self, latent) -> None:
        self.latent = latent
        self.inner.section_output(latent)

    def end_section(self, info: dict | None = None) -> None:
        self.inner.end_section(info)
        info = info or {}
        self._emit(Event("section_end", section=self.section, sections=self.sections, seconds=info.get("seconds"),
                         eta_s=info.get("eta_s"), preview=info.get("preview"), latent=self.latent,
                         steps=info.get("steps")))

    def __getattr__(self, name: str):  # items / training calls: the inner sink's
        return getattr(self.inner, name)


def _quiet_sink():
    from framepack_cli.engine.progress import NullProgress

    return NullProgress()


def section_text(value, name: str):
    """`{0: "a", -1: "b"}` -> `0:a;;;-1:b`: the per-section form of `--prompt` / `--image_path` (a plain value is
    returned as it is, a `Path` as text). `name` names the argument in the error for a key that is no integer."""
    if not isinstance(value, dict):
        return str(value) if isinstance(value, Path) else value
    parts = []
    for k, v in value.items():
        try:
            index = int(k)
        except (TypeError, ValueError):
            raise FramepackError(f"{name}: section keys must be integers (got {k!r})") from None
        parts.append(f"{index}:{v}")
    return ";;;".join(parts)


def _as_str(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)) and any(isinstance(x, Path) for x in v):
        return [str(x) for x in v]
    return v


class Pipeline:
    """FramePack models loaded once, for many jobs. Make one with `Pipeline.from_files`; not thread-safe (one job
    at a time; `cancel()` may be called from another thread)."""

    def __init__(self, session, base: dict[str, Any], save_path: str | None, progress, *,
                 dits: dict[bool, str | None] | None = None, models_dir: str | None = None) -> None:
        self._session = session
        self._base = base
        # The DiT of each variant (False: vanilla, True: F1); None: looked up in the models folders when needed.
        self._dits = dict(dits or {bool(base.get("f1")): base.get("dit")})
        self._models_dir = models_dir
        self._save_path = save_path
        self._progress = progress
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    # -- making one ----------------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, dit: str | Path | None = None, vae: str | Path | None = None,
                   text_encoder1: str | Path | None = None, text_encoder2: str | Path | None = None,
                   image_encoder: str | Path | None = None, *, models_dir: str | Path | None = None,
                   device: str | None = None, memory: str | None = None, f1: bool = False,
                   f1_dit: str | Path | None = None, keep_text_encoders: bool = False,
                   save_path: str | Path | None = None, progress: bool = False,
                   **settings: Any) -> Pipeline:
        """Check the model files and plan the memory; the models load at the first job and stay loaded.

        Args:
            dit, vae, text_encoder1, text_encoder2, image_encoder: model files or folders; one left out is found
                like the command line finds it (`models_dir`, `$FRAMEPACK_HOME/models`, the Hugging Face cache).
            models_dir: the first folder searched for models (`framepack download --models_dir`).
            device: "cuda", "cuda:1", "cpu" (default: CUDA when available).
            memory: "auto" (default on CUDA) picks fp8 / block swap / VAE chunking from the free GPU memory for
                the `video_size` and `video_seconds` given here; "none" leaves them as given.
            f1: find the FramePack-F1 DiT (and make F1 the default of `generate`).
            f1_dit: the F1 DiT for `generate(f1=True)` jobs of a pipeline made with the vanilla `dit` (without
                it, and with `dit` not given, the F1 DiT is looked up in the models folders when a job needs it;
                with `dit` given, F1 jobs use that file, as `framepack generate --f1 --dit FILE` does).
            keep_text_encoders: keep the text encoders loaded between jobs too (about 16 GB more RAM with the
                real LLaMA); by default they load again only for a prompt not encoded before.
            save_path: default output folder of every job (None: write nothing, results in memory only).
            progress: show the command line's progress bars and messages on stderr.
            settings: any other generate option (`fp8_scaled=True`, `blocks_to_swap=20`, `lora_weight=[...]`,
                `attn_mode="sdpa"`, ...); job options given here become every job's default.

        Raises:
            FramepackError: a wrong value or model file (the command line's message).
            ResourceError: the models cannot fit in this machine's memory.
        """
        from framepack_cli.cli.models import validate_with_models
        from framepack_cli.engine.models import ALL_MODELS, INTERACTIVE_KEEP
        from framepack_cli.engine.session import Session, prepare
        from framepack_cli.options.generate import GenerateOptions
        from framepack_cli.options.validation import validate

        given = {"dit": dit, "vae": vae, "text_encoder1": text_encoder1, "text_encoder2": text_encoder2,
                 "image_encoder": image_encoder, "models_dir": models_dir, "device": device, "memory": memory,
                 "f1": f1 or None, **settings}
        for name in given:
            if name in NOT_A_JOB:
                raise FramepackError(f"{name}: not a Pipeline setting; {NOT_A_JOB[name]}")
        given = {k: _as_str(v) for k, v in given.items() if v is not None}
        folder = str(save_path) if save_path is not None else None
        # The options model needs a prompt and an output folder; the pipeline's own options are its jobs' defaults.
        opts = validate_with_models(GenerateOptions, {"prompt": "", "save_path": folder or ".", **given}, validate)
        base = {k: getattr(opts, k) for k in given if k in GenerateOptions.model_fields}
        for k in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder"):  # as found
            base[k] = getattr(opts, k)
        sink = cls._sink_for(progress)
        # the DiT, VAE and image encoder stay loaded; the text encoders too when asked
        keep = ALL_MODELS if keep_text_encoders else INTERACTIVE_KEEP
        prepared = prepare(opts, sink, keep=keep)
        # The memory plan's choices (fp8_scaled, blocks_to_swap, VAE chunking) are model settings of every job.
        for k in MODEL_SETTINGS:
            if k in prepared.opts.model_fields_set or getattr(prepared.opts, k) != getattr(opts, k):
                base[k] = getattr(prepared.opts, k)
        import torch

        from framepack_cli.engine.precision import FP16_DIT_WARNING

        if prepared.precision.dit == torch.float16:
            sink.message(FP16_DIT_WARNING)
        dits: dict[bool, str | None] = {bool(f1): opts.dit}
        if f1_dit is not None:
            dits[True] = str(f1_dit)
        if dit is not None:  # the given file serves both variants unless the other was given too
            dits.setdefault(not f1, str(dit))
        return cls(Session(prepared, sink, keep=keep), base, folder, progress, dits=dits,
                   models_dir=None if models_dir is None else str(models_dir))

    @staticmethod
    def _sink_for(progress):
        if progress is True:
            from framepack_cli.cli.render import RichProgress

            return RichProgress()
        if progress:
            return progress  # a ProgressSink of the caller's
        return _quiet_sink()

    # -- jobs ----------------------------------------------------------------------------------------------
    def generate(self, image: str | Path | dict | None = None, prompt: str | dict | None = None, *,
                 seconds: float | None = None, sections: int | None = None, f1: bool | None = None,
                 end_image: str | Path | None = None,
                 seed: int | None = None, callback: Callable[[Event], Any] | None = None,
                 save_path: str | Path | None = None, output_name: str | None = None, **options: Any) -> Result:
        """Generate a video from a start image (a black start without one).

        Args:
            image: the start image; `{section: path}` gives sections their own image (`-1`: the last).
            prompt: the prompt; `{section: text}` gives sections their own prompt (required, as on the command
                line, but with `resume=`: the checkpoint's settings are used).
            seconds: length (default 5); sections: the number of sections instead.
            f1: FramePack-F1 forward sampling (default: the pipeline's `f1`).
            end_image: the last frame (vanilla only).
            seed: the seed (default: a random one, returned in `Result.seed`).
            callback: called with an `Event` for each message, section and step; may raise `Cancelled`.
            save_path: output folder (default: the pipeline's; None for both: nothing is written).
            output_name: base name of the files (default `<timestamp>_<seed>`).
            options: any other `framepack generate` option (`infer_steps`, `video_size`, `latent_window_size`,
                `guidance_scale`, `negative_prompt`, `teacache_thresh`, `output_type`, `preview`, `resume`, ...).
        """
        values = {"image": image, "prompt": prompt,
                  "seconds": seconds, "sections": sections, "f1": f1, "end_image": end_image,
                  "output_name": output_name, **options}
        return self._job("generate", values, seed, callback, save_path)

    def one_frame(self, image: str | Path | None = None, prompt: str | None = None, *,
                  control_images: list | None = None, control_masks: list | None = None, seed: int | None = None,
                  callback: Callable[[Event], Any] | None = None, save_path: str | Path | None = None,
                  **options: Any) -> Result:
        """Edit one image (one-frame inference): `framepack one-frame`.

        Args:
            image: the image the image encoder sees (default: the first control image).
            control_images: the images sampled from (default: `[image]`); control_masks: a mask per control image
                (255 keep, 0 drop; default: each image's alpha channel).
            options: any other `framepack one-frame` option (`one_frame_inference="target_index=1,no_post"`, ...).
        """
        if control_images is None and image is not None:
            control_images = [image]
        values = {"image": image, "prompt": prompt, "control_images": control_images,
                  "control_masks": control_masks, **options}
        return self._job("one-frame", values, seed, callback, save_path)

    def kisekae(self, start: str | Path, reference: str | Path, prompt: str | None = None, *,
                start_mask: str | Path | None = None, reference_mask: str | Path | None = None,
                seed: int | None = None, callback: Callable[[Event], Any] | None = None,
                save_path: str | Path | None = None, **options: Any) -> Result:
        """Kisekaeichi: the person of `start` wearing what `reference` shows: `framepack kisekae`.

        Args:
            start_mask / reference_mask: masks of the two images (255 keep, 0 drop; default: their alpha).
            options: any other `framepack kisekae` option.
        """
        values = {"start": start, "reference": reference, "prompt": prompt, "start_mask": start_mask,
                  "reference_mask": reference_mask, **options}
        return self._job("kisekae", values, seed, callback, save_path)

    def close(self) -> None:
        """Let every model go (GPU and CPU memory); the pipeline loads them again if it is used after this."""
        from framepack_cli.engine.context import free_memory

        models = self._session.models
        for name in list(models._loaded):
            if name not in models._adopted:
                del models._loaded[name]
        models.text_cache.clear()
        free_memory(models.device)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cancel(self) -> None:
        """Stop the running job at its next sampler step (it raises `Cancelled`); safe from another thread."""
        self._cancel.set()

    def decode(self, latent, options) -> Any:
        """Decode a CTHW latent to uint8 frames `[T, H, W, 3]` with the pipeline's VAE (`options`: a job's)."""
        import numpy as np

        from framepack_cli.engine.resources import advice, oom_guard
        from framepack_cli.engine.writing import decode_to
        from framepack_cli.options.base import decode_mode

        models = self._session.models
        collect = _Collect()
        with self._one_job():
            try:
                with oom_guard("in VAE decode", models.device, advice("decode", models.device, options)):
                    decode_to([collect], models.vae, latent.float(), options.latent_window_size,
                              mode=decode_mode(options), per_frame=options.one_frame_inference is not None)
            finally:
                models.park_vae()
        return np.concatenate(collect.parts, axis=0)

    def _one_job(self):
        """Hold the pipeline for one job (or decode); a second one at the same time is one line."""
        import contextlib

        if not self._lock.acquire(blocking=False):
            raise FramepackError("Pipeline: another job is running; a Pipeline runs one job at a time")

        @contextlib.contextmanager
        def held():
            try:
                yield
            finally:
                self._lock.release()

        return held()

    # -- the one path every job takes ----------------------------------------------------------------------
    def options(self, command: str, **values: Any):
        """The validated options of a job (`command`: "generate", "one-frame" or "kisekae"), as the CLI would make
        them from the same values on top of the pipeline's settings (the API's names, `{section: value}` forms)."""
        from framepack_cli.cli.commands import COMMANDS, load_options
        from framepack_cli.options.validation import validate

        cls = load_options(next(s for s in COMMANDS if s.path == (command,)))
        for name, value in values.items():
            if value is not None and name in NOT_A_JOB:
                raise FramepackError(f"{name}: not an option of a Pipeline job; {NOT_A_JOB[name]}")
        given = {RENAMED.get(k, k): _as_str(v) for k, v in values.items() if v is not None}
        for name in ("prompt", "image_path"):  # {section: value} -> the command's `0:a;;;1:b` form
            if isinstance(given.get(name), dict):
                given[name] = section_text(given[name], name)
        unknown = sorted(k for k in given if k not in cls.model_fields)
        if unknown:
            raise FramepackError(f"{unknown[0]}: not an option of framepack {command} (see `framepack {command} "
                                 "--help`; options are spelled with underscores)")
        base = {k: v for k, v in self._base.items() if k in cls.model_fields}
        if command != "generate":
            base.pop("f1", None)
        base["dit"] = self._dit_path(bool(given.get("f1", base.get("f1", False))))
        opts = validate(cls, {**base, **given})
        fixed = self._session.opts
        for name in sorted(set(given) & MODEL_SETTINGS - PER_JOB_DIT - {"dit"}):
            if getattr(opts, name) != getattr(fixed, name):
                raise FramepackError(f"{name}: a model setting, fixed when the Pipeline was made "
                                     f"({getattr(fixed, name)!r}); pass it to Pipeline.from_files")
        if "dit" in given and opts.dit != base["dit"]:
            raise FramepackError(f"dit: fixed when the Pipeline was made ({base['dit']!r}); pass it to "
                                 "Pipeline.from_files (f1_dit= for the F1 DiT)")
        if isinstance(opts.seed, list):
            raise FramepackError("seed: one seed per call; loop over the seeds (the models stay loaded)")
        return opts

    def _dit_path(self, f1: bool) -> str:
        """The DiT file of a job of this variant: the pipeline's, or the other variant's found in the models
        folders (one line with the download command when it is in none)."""
        if self._dits.get(f1) is None:
            from framepack_cli.models.store import resolve_models

            res = resolve_models(["--dit"], f1=f1, models_dir=self._models_dir)
            if res.missing:
                raise FramepackError(f"f1={f1}: {res.missing_message()}")
            self._dits[f1] = str(res.found["--dit"].path)
        return self._dits[f1]

    def _job(self, command: str, values: dict, seed, callback, save_path) -> Result:
        folder = str(save_path) if save_path is not None else self._save_path
        if seed is not None:
            values["seed"] = list(seed) if isinstance(seed, tuple) else seed  # a list is refused after validation
        write = folder is not None
        values["save_path"] = folder if write else "."
        if not write:
            for name in ("preview", "resume"):
                if values.get(name) not in (None, False):
                    raise FramepackError(f"{name}: needs a save_path (the job writes no files without one)")
        opts = self.options(command, **values)
        with self._one_job():
            return self._run(opts, callback, write)

    def _run(self, opts, callback, write: bool) -> Result:
        from framepack_cli.errors import ResourceError
        from framepack_cli.io.writable import ensure_writable_dir, remove_created

        self._cancel.clear()
        session = self._session
        inner = self._sink_for(self._progress)  # a fresh progress display per job (progress=True)
        sink = _Events(inner, callback, self._cancel)
        cancelled = None
        try:
            try:
                session.check(opts)
            except ResourceError as e:  # the flags it names are model settings here
                raise ResourceError(e.message, hint=f"{e.hint}; with the Python API these are Pipeline.from_files "
                                    "settings (give it the video_size / video_seconds of your largest job so that "
                                    "memory='auto' plans for it)" if e.hint else None) from None
            session.use_dit_settings(opts)  # another DiT file (F1) or other LoRAs: the DiT loads again
            created = ensure_writable_dir(Path(opts.save_path), "--save_path") if write else None
            try:
                result = session.run(opts, sink, write=write)
            except Cancelled as e:
                cancelled = str(e)  # raised below, without this traceback (it holds the sampler's tensors)
            finally:
                if write:
                    remove_created(Path(opts.save_path), created)
        finally:
            if self._progress is True:
                inner.close()
        if cancelled is not None:
            ck = getattr(getattr(session.last_job, "checkpoint", None), "path", None)
            kept = str(ck) if ck is not None and ck.exists() else None
            if kept is not None:
                sink.message(f"Checkpoint kept: {kept}; continue with pipe.generate(..., resume={kept!r})")
            raise Cancelled(cancelled, checkpoint=kept)
        return Result(seed=result.seed, latent=result.latent, files=list(result.files), options=opts, _pipe=self)

