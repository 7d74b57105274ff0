"""The Gradio Blocks app of `framepack ui`: a Generate tab and a Queue tab over one JobQueue and one Worker.

Every event has an `api_name`, so `gradio_client` can drive the app as the page does:
`/submit_generate`, `/job_status`, `/poll`, `/queue_list`, `/cancel_job`, `/move_job_up`, `/move_job_down`,
`/resume_job`. A bad input is one readable line in the status next to the button (and a toast), never a
traceback. Uploads are copied to the app folder under generated names (`ui.files`) before a job sees them.
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.ui.files import resolve_allowed, store_upload
from framepack_cli.ui.form import (
    MAX_SEED,  # noqa: F401 - part of this module's names
    SEED_MODES,
    list_loras,
    lora_options,
    parse_seed,
    parse_seeds,
    section_count,
    timeline_options,
    timeline_rows,
)
from framepack_cli.ui.queue import JobQueue
from framepack_cli.ui.worker import Worker, error_line, progress_text

UPLOADS = "uploads"
RESOLUTIONS = ("640x640", "544x704", "704x544", "512x768", "768x512", "480x832", "832x480", "416x960", "960x416",
               "384x512", "512x384", "256x256")
CACHES = ("off", "TeaCache", "MagCache")
TEACACHE_THRESH = 0.15
QUEUE_COLUMNS = ["id", "kind", "state", "message", "prompt", "files"]
POLL_SECONDS = 1.0


@dataclass
class AppState:
    """Everything the handlers share: where files go, the queue and the worker."""

    save_path: Path
    app_dir: Path
    queue: JobQueue
    worker: Worker
    lora_dir: Path | None = None  # the folder the LoRA picker lists (--lora_dir)
    f1_note: str = "F1 jobs use the DiT the app was started with."  # shown next to the F1 toggle

    @property
    def uploads(self) -> Path:
        return self.app_dir / UPLOADS

    @classmethod
    def create(cls, opts: Any, make_pipeline: Any = None) -> AppState:
        from framepack_cli.ui.launch import app_dir_of

        save_path = Path(opts.save_path).resolve()
        app_dir = app_dir_of(save_path)
        queue = JobQueue(app_dir)
        worker = Worker(queue, make_pipeline or functools.partial(pipeline_from_options, opts), save_path, app_dir)
        return cls(save_path=save_path, app_dir=app_dir, queue=queue, worker=worker,
                   lora_dir=Path(opts.lora_folder).resolve(), f1_note=f1_note(opts))

    def loras(self) -> list[str]:
        return list_loras(self.lora_dir)

    def roots(self) -> list[Path]:
        return [self.uploads, self.save_path]


def lora_label(state: AppState, found: list[str]) -> str:
    """The LoRA picker's label: the folder, and what to do when it holds none."""
    if state.lora_dir is None:
        return "LoRAs (start the app with --lora_dir DIR)"
    if not found:
        return f"LoRAs: none in {state.lora_dir} yet (put *.safetensors files there, then Refresh)"
    return f"LoRAs in {state.lora_dir} (several allowed; a multiplier each)"


def f1_note(opts: Any) -> str:
    """Which DiT an F1 job of the app uses (shown next to the F1 toggle)."""
    if getattr(opts, "f1_dit", None):
        return f"F1 jobs use the F1 DiT {Path(opts.f1_dit).name} (--f1_dit)."
    if opts.dit:
        return (f"F1 jobs use --dit {Path(opts.dit).name} too; start the app with --f1_dit FILE to give them the "
                "FramePack-F1 DiT.")
    return ("F1 jobs use the FramePack-F1 DiT found in the models folders (`framepack download dit-f1` when there "
            "is none), or start the app with --f1_dit FILE.")


def pipeline_from_options(opts: Any) -> Any:
    """The one Pipeline of the app, from the `framepack ui` model flags (models load at the first job)."""
    from framepack_cli.api import Pipeline

    settings = {k: getattr(opts, k) for k in ("tokenizer1", "tokenizer2") if getattr(opts, k)}
    kwargs: dict[str, Any] = {"models_dir": opts.models_dir, "device": opts.device}
    if opts.memory is not None:
        kwargs["memory"] = opts.memory
    if getattr(opts, "f1_dit", None):
        kwargs["f1_dit"] = opts.f1_dit
    return Pipeline.from_files(dit=opts.dit, vae=opts.vae, text_encoder1=opts.text_encoder1,
                               text_encoder2=opts.text_encoder2, image_encoder=opts.image_encoder,
                               **kwargs, **settings)


# --- turning the form into job options (no Gradio needed: unit-tested on its own)
def parse_resolution(text: str) -> tuple[int, int]:
    """`"640x640"` / `"512 768"` -> (height, width), both positive multiples of 16."""
    cleaned = str(text or "").lower().replace("×", "x").replace("*", "x").replace(" ", "x")
    parts = [p for p in cleaned.split("x") if p]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise FramepackError(f"Resolution: {text!r} is not HEIGHTxWIDTH", hint="e.g. 640x640") from None
    bad = [x for x in (h, w) if x <= 0 or x % 16]
    if bad:
        sug = "x".join(str(max(16, round(x / 16) * 16)) for x in (h, w))
        raise FramepackError(f"Resolution: height and width must be positive multiples of 16, got {h}x{w}",
                             hint=f"try {sug}")
    return h, w


def _positive_int(value: Any, label: str) -> int:
    try:
        n = int(float(value))
    except (TypeError, ValueError):
        raise FramepackError(f"{label}: {value!r} is not a number") from None
    if n < 1 or n != float(value):
        raise FramepackError(f"{label}: {value!r} must be a whole number of at least 1")
    return n


def generate_options(state: AppState, *, image: str | None, prompt: str, negative_prompt: str, length_unit: str,
                     seconds: Any, sections: Any, f1: bool, end_image: str | None, seed: Any, steps: Any,
                     guidance: Any, window: Any, resolution: str, cache: str, seed_mode: str = "fixed",
                     seed_list: str = "", loras: Any = None, lora_multipliers: Any = None,
                     timeline: Any = None) -> list[dict[str, Any]]:
    """The Pipeline.generate options of the Generate form, one dict per seed (uploads stored under generated names
    first): the same job for each seed of a seed list."""
    seeds = parse_seeds(seed_mode, seed, seed_list)
    opts: dict[str, Any] = {"prompt": prompt or "", "f1": bool(f1)}
    if image:
        opts["image"] = str(store_upload(image, state.uploads, "Start image"))
    if end_image and not f1:
        opts["end_image"] = str(store_upload(end_image, state.uploads, "End image"))
    if negative_prompt:
        opts["negative_prompt"] = negative_prompt
    if length_unit == "sections":
        opts["sections"] = _positive_int(sections, "Sections")
    else:
        try:
            secs = float(seconds)
        except (TypeError, ValueError):
            raise FramepackError(f"Seconds: {seconds!r} is not a number") from None
        if secs <= 0:
            raise FramepackError(f"Seconds: {seconds!r} must be more than 0")
        opts["seconds"] = secs
    opts["infer_steps"] = _positive_int(steps, "Steps")
    try:
        opts["embedded_cfg_scale"] = float(guidance)  # the distilled guidance (--embedded_cfg_scale); CFG stays off
    except (TypeError, ValueError):
        raise FramepackError(f"Guidance: {guidance!r} is not a number") from None
    opts["latent_window_size"] = _positive_int(window, "Window")
    opts["video_size"] = parse_resolution(resolution)
    if cache == "TeaCache":
        opts["teacache_thresh"] = TEACACHE_THRESH
    elif cache == "MagCache":
        opts["magcache_mag_ratios"] = "0"
    elif cache not in CACHES:
        raise FramepackError(f"Step cache: {cache!r} is not one of {', '.join(CACHES)}")
    n = section_count(length_unit, seconds, sections, window)
    opts["prompt"], section_images = timeline_options(timeline, n, opts["prompt"], opts.get("image"), state.uploads)
    if section_images is not None:
        opts["image"] = section_images
    opts.update(lora_options(state.lora_dir, loras, lora_multipliers))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return [{**opts, "seed": s, "output_name": f"{stamp}_{s}_{uuid.uuid4().hex[:6]}"} for s in seeds]


ONE_FRAME_PRESETS = {
    "One-frame": "default",
    "Kisekaeichi": "target_index=1,control_index=0;10,no_post,no_2x,no_4x",
    "1f-mc": "target_index=9,control_index=0;1,no_2x,no_4x",
}


def editor_parts(value: Any) -> tuple[str | None, list[str]]:
    """(background image path, painted layer paths) of an ImageEditor value (a dict, or a plain path)."""
    if not value:
        return None, []
    if isinstance(value, (str, Path)):
        return str(value), []
    layers = [str(x) for x in (value.get("layers") or []) if x]
    return (str(value["background"]) if value.get("background") else None), layers


def mask_from_layers(layers: list[str], size: tuple[int, int], uploads: Path) -> str | None:
    """An L-mode mask (255 where anything was painted on any layer, 0 elsewhere) stored under a generated name, or
    None when nothing was painted (the whole image is kept)."""
    if not layers:
        return None
    import numpy as np
    from PIL import Image

    painted = np.zeros((size[1], size[0]), bool)
    for layer in layers:
        with Image.open(layer) as im:
            alpha = np.asarray(im.convert("RGBA").resize(size, Image.NEAREST))[..., 3]
        painted |= alpha > 0
    if not painted.any():
        return None
    uploads.mkdir(parents=True, exist_ok=True)
    dest = uploads / f"{uuid.uuid4().hex}.png"
    tmp = uploads / f".{dest.name}.part"
    Image.fromarray(painted.astype(np.uint8) * 255, "L").save(tmp, format="PNG")
    tmp.replace(dest)
    return str(dest)


def one_frame_options(state: AppState, *, recipe: str, start: Any, control: Any, prompt: str, inference: str,
                      seed: Any, steps: Any, resolution: str) -> tuple[str, dict[str, Any]]:
    """(job kind, options) of the One-frame form: Kisekaeichi goes to `Pipeline.kisekae` (start + reference, each
    with its painted mask), One-frame and 1f-mc to `Pipeline.one_frame` (control images start [+ second])."""
    from PIL import Image

    if recipe not in ONE_FRAME_PRESETS:
        raise FramepackError(f"Recipe: {recipe!r} is not one of {', '.join(ONE_FRAME_PRESETS)}")
    start_bg, start_layers = editor_parts(start)
    ctrl_bg, ctrl_layers = editor_parts(control)
    if start_bg is None:
        raise FramepackError("Start image: upload an image first")
    images, masks = [], []
    for label, bg, layers in (("Start image", start_bg, start_layers), ("Second image", ctrl_bg, ctrl_layers)):
        if bg is None:
            continue
        stored = store_upload(bg, state.uploads, label)
        with Image.open(stored) as im:
            size = im.size
        images.append(str(stored))
        masks.append(mask_from_layers(layers, size, state.uploads))
    opts: dict[str, Any] = {"prompt": prompt or "", "seed": parse_seed(seed),
                            "infer_steps": _positive_int(steps, "Steps"), "video_size": parse_resolution(resolution),
                            "one_frame_inference": (inference or "").strip() or ONE_FRAME_PRESETS[recipe],
                            "output_name": f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}"}
    if recipe == "Kisekaeichi":
        if len(images) < 2:
            raise FramepackError("Second image: Kisekaeichi needs the reference image (the clothes)")
        opts.update(start=images[0], reference=images[1])
        if masks[0]:
            opts["start_mask"] = masks[0]
        if masks[1]:
            opts["reference_mask"] = masks[1]
        return "kisekae", opts
    if recipe == "1f-mc" and len(images) < 2:
        raise FramepackError("Second image: 1f-mc needs a second control image")
    opts.update(image=images[0], control_images=images)
    if any(masks):
        for i, m in enumerate(masks):  # masks pair with images in order: an unpainted one keeps everything
            if m is None:
                with Image.open(images[i]) as im:
                    full = state.uploads / f"{uuid.uuid4().hex}.png"
                    Image.new("L", im.size, 255).save(full, format="PNG")
                masks[i] = str(full)
        opts["control_masks"] = masks
    return "one_frame", opts


def result_image(state: AppState, job_id: str) -> tuple[str, str | None]:
    """(status line, the edited image) of a one-frame or kisekae job."""
    line, preview, _ = job_status(state, job_id)
    job = state.queue.get(job_id)
    image = next((f for f in job.files if f.lower().endswith(".png") and Path(f).exists()), None)
    if image is not None:
        resolve_allowed(image, state.roots())
    return line, image or preview


OUTPUT_SUFFIXES = (".mp4", ".png")
MAX_OUTPUTS = 100
SHOWN_SETTINGS = ("prompt", "negative_prompt", "seed", "video_size", "video_sections", "video_seconds", "f1",
                  "infer_steps", "embedded_cfg_scale", "guidance_scale", "latent_window_size", "teacache_thresh",
                  "magcache_mag_ratios", "one_frame_inference", "lora_weight", "lora_multiplier")


def output_files(state: AppState) -> list[str]:
    """The videos and images under --save_path (not the app folder, previews or hidden files), newest first."""
    found = [p for p in state.save_path.iterdir() if p.is_file() and p.suffix.lower() in OUTPUT_SUFFIXES
             and not p.name.startswith(".") and ".preview." not in p.name]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in found[:MAX_OUTPUTS]]


def output_values(state: AppState, path: str) -> tuple[str, dict[str, Any]]:
    """(command, the options it ran with: stored values over the defaults) of an output under --save_path."""
    from framepack_cli.cli.rerun import stored_run
    from framepack_cli.options.generate import GenerateOptions
    from framepack_cli.options.rerun import run_values

    real = resolve_allowed(path, [state.save_path])
    settings = stored_run(str(real))
    defaults = {k: f.default for k, f in GenerateOptions.model_fields.items() if not f.is_required()}
    return settings.get("command", "generate"), {**defaults, **run_values(settings)}


def settings_text(state: AppState, path: str) -> str:
    if not path:
        return "Pick an output."
    command, values = output_values(state, path)
    lines = [f"**{Path(path).name}** (`framepack {command}`)", ""]
    for key in SHOWN_SETTINGS:
        v = values.get(key)
        if key == "video_seconds" and values.get("video_sections"):
            continue
        if v not in (None, "", [], False) or key == "seed":
            lines.append(f"- {key}: `{' x '.join(map(str, v)) if key == 'video_size' else v}`")
    return "\n".join(lines)


GENERATE_FORM = ("image", "prompt", "negative_prompt", "length_unit", "seconds", "sections", "f1", "end_image", "seed",
                 "steps", "guidance", "window", "resolution", "cache", "seed_mode", "seed_list", "loras",
                 "lora_multipliers", "timeline", "timeline_version")


def _sections_of(value: Any) -> dict[int, str]:
    """`{section: value}` of a job option (a dict, JSON keys as text) or a stored `0:a;;;1:b` / `a|b` string."""
    from framepack_cli.options.sections import parse_section_values

    if isinstance(value, dict):
        return {int(k): str(v) for k, v in value.items() if v is not None}
    if not value:
        return {}
    try:
        return parse_section_values(str(value))
    except ValueError:
        return {0: str(value)}


def form_from_options(state: AppState, v: dict[str, Any]) -> tuple[Any, ...]:
    """The Generate form's values (`GENERATE_FORM`) that re-create a generate job, from its options (the job's own,
    in the API's names, or an output's stored ones, in the command's names). Files no longer there, and section
    images or LoRAs outside the app's folders, are left out."""
    get = lambda *names: next((v[n] for n in names if v.get(n) is not None), None)  # noqa: E731
    window = int(get("latent_window_size") or 9)
    length = get("sections", "video_sections")
    seconds = get("seconds", "video_seconds") or 5.0
    n = section_count("sections" if length else "seconds", seconds, length, window)

    def in_time(entries: dict[int, str]) -> dict[int, str]:
        return {(i + n if i < 0 else i): x for i, x in entries.items() if -n <= i < n}

    prompts = in_time(_sections_of(get("prompt")))
    images = in_time(_sections_of(get("image", "image_path")))
    start = images.pop(0, None)
    start = start if start and Path(start).is_file() else None
    kept_images = {}
    for i, path in images.items():
        try:
            if resolve_allowed(path, [state.uploads]).is_file():
                kept_images[str(i)] = path
        except FramepackError:
            continue
    end = get("end_image", "end_image_path")
    end = end if end and Path(end).is_file() else None
    timeline = {"prompts": {str(i): t for i, t in prompts.items() if i != 0}, "images": kept_images}
    loras, mults = [], {}
    weights = list(get("lora_weight") or [])
    given = list(get("lora_multiplier") or [])
    for k, w in enumerate(weights):
        try:
            real = resolve_allowed(w, [state.lora_dir]) if state.lora_dir is not None else None
        except FramepackError:
            real = None
        if real is None or not real.is_file():
            continue
        name = real.relative_to(state.lora_dir.resolve()).as_posix()
        loras.append(name)
        mults[name] = float(given[k] if k < len(given) else given[0] if len(given) == 1 else 1.0)
    h, w = get("video_size") or (640, 640)
    seed = get("seed")
    seed = seed[0] if isinstance(seed, list) else seed
    cache = "TeaCache" if get("teacache_thresh") else "MagCache" if get("magcache_mag_ratios") else "off"
    return (start, prompts.get(0, ""), get("negative_prompt") or "", "sections" if length else "seconds", seconds,
            length or 2, bool(get("f1")), end, -1 if seed is None else seed, get("infer_steps") or 25,
            get("embedded_cfg_scale") or 10.0, window, f"{h}x{w}", cache, "random" if seed is None else "fixed",
            "", loras, mults, timeline, time.time())


def form_from_output(state: AppState, path: str) -> tuple[Any, ...]:
    """The Generate form's values (`GENERATE_FORM`) that re-create a generate output (read from its metadata)."""
    command, v = output_values(state, path)
    if command != "generate":
        raise FramepackError(f"{Path(path).name} was made by `framepack {command}`: only video outputs load into "
                             "the Generate tab")
    return form_from_options(state, v)


ONE_FRAME_FORM = ("recipe", "start", "control", "prompt", "inference", "seed", "steps", "resolution", "loras",
                  "lora_multipliers")


def one_frame_form_from_job(state: AppState, kind: str, v: dict[str, Any]) -> tuple[Any, ...]:
    """The One-frame form's values (`ONE_FRAME_FORM`) of a one-frame or kisekae job (its stored uploads; masks are
    not painted back: paint them again)."""
    def there(p: Any) -> str | None:
        return str(p) if p and Path(str(p)).is_file() else None

    if kind == "kisekae":
        recipe, start, control = "Kisekaeichi", there(v.get("start")), there(v.get("reference"))
    else:
        images = list(v.get("control_images") or [v.get("image")])
        inference = str(v.get("one_frame_inference") or "")
        recipe = "1f-mc" if inference == ONE_FRAME_PRESETS["1f-mc"] else "One-frame"
        start, control = there(images[0] if images else None), there(images[1] if len(images) > 1 else None)
    generate_like = form_from_options(state, {k: x for k, x in v.items() if k in ("lora_weight", "lora_multiplier")})
    h, w = v.get("video_size") or (640, 640)
    return (recipe, start, control, v.get("prompt") or "", v.get("one_frame_inference") or ONE_FRAME_PRESETS[recipe],
            v.get("seed", -1), v.get("infer_steps") or 25, f"{h}x{w}", generate_like[16], generate_like[17])


def job_details(state: AppState, job_id: str) -> str:
    """A job's state, its whole message (a failed job's error line) and its settings, as Markdown."""
    if not str(job_id or "").strip():
        return "Pick a job (click a row)."
    job = state.queue.get(str(job_id).strip())
    lines = [f"**Job {job.id}** ({job.kind}): **{job.state}**"]
    if job.message:
        lines.append(f"\n{'Error' if job.state == 'failed' else 'Message'}: {job.message}")
    lines.append("")
    for key in ("prompt", "negative_prompt", "seed", "seconds", "sections", "f1", "infer_steps", "embedded_cfg_scale",
                "latent_window_size", "video_size", "one_frame_inference", "lora_weight", "lora_multiplier"):
        value = job.options.get(key)
        if value in (None, "", [], False):
            continue
        if key == "video_size":
            value = "x".join(map(str, value))
        elif key == "lora_weight":
            value = ", ".join(Path(x).name for x in value)
        elif isinstance(value, dict):
            value = "; ".join(f"section {int(k) + 1}: {x}" for k, x in value.items())
        lines.append(f"- {key}: `{value}`")
    for f in job.files:
        lines.append(f"- file: `{Path(f).name}`")
    return "\n".join(lines)


def queue_rows(state: AppState) -> list[list[str]]:
    rows = []
    for job in state.queue.jobs():
        message = job.message
        progress = state.worker.progress
        if job.state == "running" and progress is not None and progress.job_id == job.id:
            message = progress_text(progress)
        prompt = str(job.options.get("prompt", ""))
        rows.append([job.id, job.kind, job.state, message, prompt[:60], ", ".join(Path(f).name for f in job.files)])
    return rows


def job_status(state: AppState, job_id: str) -> tuple[str, str | None, str | None]:
    """(status line, latest preview file, finished video) of one job."""
    if not job_id:
        return "No job yet.", None, None
    job = state.queue.get(job_id)
    progress = state.worker.progress
    preview = state.worker.last_preview.get(job.id)
    if job.state == "running" and progress is not None and progress.job_id == job.id:
        line = f"Job {job.id}: running, {progress_text(progress)}"
    else:
        line = f"Job {job.id}: {job.state}" + (f" ({job.message})" if job.message else "")
    video = next((f for f in job.files if f.endswith(".mp4") and Path(f).exists()), None)
    if preview is not None and not Path(preview).exists():
        preview = None
    for path in (preview, video):
        if path is not None:
            resolve_allowed(path, state.roots())
    return line, preview, video


# --- the Gradio app
def build_app(state: AppState) -> Any:
    import gradio as gr

    def guarded(fn, n_out: int, status_index: int | None = None):
        """Run a handler; a FramepackError (or a bug) becomes one line in the status output and a toast."""

        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - shown as one line, never a traceback
                line = error_line(e)
                gr.Warning(line)
                out = [gr.update()] * n_out
                if status_index is not None:
                    out[status_index] = f"**Error:** {line}"
                return tuple(out) if n_out > 1 else out[0]

        return run

    def submit(image, prompt, negative_prompt, length_unit, seconds, sections, f1, end_image, seed, steps, guidance,
               window, resolution, cache, seed_mode, seed_list, loras, lora_multipliers, timeline):
        jobs = generate_options(state, image=image, prompt=prompt, negative_prompt=negative_prompt,
                                length_unit=length_unit, seconds=seconds, sections=sections, f1=f1,
                                end_image=end_image, seed=seed, steps=steps, guidance=guidance, window=window,
                                resolution=resolution, cache=cache, seed_mode=seed_mode, seed_list=seed_list,
                                loras=loras, lora_multipliers=lora_multipliers, timeline=timeline)
        state.worker.check("generate", jobs[0])
        ahead = len(state.queue.queued_ids()) + (state.worker.progress is not None)
        added = [state.queue.add("generate", opts) for opts in jobs]
        if len(added) == 1:
            return added[0].id, f"Queued job {added[0].id} (seed {jobs[0]['seed']}; {ahead} ahead of it)"
        seeds = ", ".join(str(o["seed"]) for o in jobs)
        return added[0].id, (f"Queued {len(added)} jobs (seeds {seeds}; {ahead} ahead of the first): "
                             + ", ".join(j.id for j in added))

    def timeline_prompt(index):
        def run(text, value):
            value = dict(value or {})
            prompts = {k: v for k, v in (value.get("prompts") or {}).items() if k != str(index)}
            if text and text.strip():
                prompts[str(index)] = text
            return {**value, "prompts": prompts}

        return run

    def timeline_image(index):
        def run(path, value):
            value = dict(value or {})
            images = {k: v for k, v in (value.get("images") or {}).items() if k != str(index)}
            if path:
                try:
                    stored = resolve_allowed(path, [state.uploads])  # shown again after a re-render: ours already
                except FramepackError:
                    stored = store_upload(path, state.uploads, f"Image of section {index + 1}")
                images[str(index)] = str(stored)
            return {**value, "images": images}

        return run

    def lora_multiplier(name):
        def run(m, value):
            return {**(value or {}), name: m}

        return run

    def refresh_loras(picked):
        found = state.loras()
        keep = [p for p in (picked or []) if p in found]
        return gr.update(choices=found, value=keep, label=lora_label(state, found))

    def status(job_id):
        return job_status(state, job_id)

    def submit_one_frame(recipe, start, control, prompt, inference, seed, steps, resolution, loras,
                         lora_multipliers):
        kind, opts = one_frame_options(state, recipe=recipe, start=start, control=control, prompt=prompt,
                                       inference=inference, seed=seed, steps=steps, resolution=resolution)
        opts.update(lora_options(state.lora_dir, loras, lora_multipliers))
        state.worker.check(kind, opts)
        job = state.queue.add(kind, opts)
        return job.id, f"Queued job {job.id} ({recipe}, seed {opts['seed']})"

    def one_frame_status(job_id):
        return result_image(state, job_id) if job_id else ("No job yet.", None)

    def one_frame_poll(job_id, shown):
        shown = dict(shown or {})
        line, image = one_frame_status(job_id)
        key = f"{image}:{Path(image).stat().st_mtime_ns}" if image else None
        out = gr.update(value=image) if key != shown.get("image") else gr.update()
        shown["image"] = key
        return line, out, shown

    def poll(job_id, shown):
        """The timer's refresh: status line, and the preview / video only when they changed (no flicker)."""
        shown = dict(shown or {})
        line, preview, video = job_status(state, job_id) if job_id else ("No job yet.", None, None)
        key = f"{preview}:{Path(preview).stat().st_mtime_ns}" if preview else None
        preview_out = gr.update(value=preview) if key != shown.get("preview") else gr.update()
        video_out = gr.update(value=video) if video != shown.get("video") else gr.update()
        files = output_files(state)
        gallery_out = (files, files) if files != shown.get("outputs") else (gr.update(), gr.update())
        shown.update(preview=key, video=video, outputs=files)
        return line, preview_out, video_out, shown, queue_rows(state), *gallery_out

    def listing():
        return queue_rows(state)

    def outputs_list():
        files = output_files(state)
        return files, files

    def pick_output(files, evt):
        try:
            return files[evt.index if isinstance(evt.index, int) else evt.index[0]]
        except (IndexError, TypeError):
            return gr.update()

    def load_settings(path):
        values = form_from_output(state, path)
        return (*values, gr.Tabs(selected="generate"), f"Loaded the settings of {Path(path).name}")

    def load_job(job_id):
        """Fill the Generate form (a video job) or the One-frame form (an image job) from a job's options."""
        job = state.queue.get(str(job_id).strip())
        keep_generate = [gr.update()] * len(GENERATE_FORM)
        keep_one_frame = [gr.update()] * len(ONE_FRAME_FORM)
        if job.kind == "generate":
            return (*form_from_options(state, job.options), *keep_one_frame, gr.Tabs(selected="generate"),
                    f"Loaded the settings of job {job.id} into the Generate tab")
        values = one_frame_form_from_job(state, job.kind, job.options)
        return (*keep_generate, *values, gr.Tabs(selected="one-frame"),
                f"Loaded the settings of job {job.id} into the One-frame tab (paint the masks again)")

    def cancel(job_id):
        return state.worker.cancel(str(job_id).strip()), queue_rows(state)

    def move(delta):
        def run(job_id):
            state.queue.move(str(job_id).strip(), delta)
            return f"Moved job {job_id} {'up' if delta < 0 else 'down'}", queue_rows(state)

        return run

    def resume(job_id):
        job = state.queue.resume(str(job_id).strip())
        return f"Job {job.id}: {job.message}", queue_rows(state)

    def pick(rows, evt):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
        except (IndexError, KeyError, TypeError):
            return gr.update()

    pick.__annotations__ = {"rows": Any, "evt": gr.SelectData}  # Gradio finds the event argument by its type
    pick_output.__annotations__ = {"files": Any, "evt": gr.SelectData}

    def lora_picker(suffix: str):
        """A LoRA picker (several LoRAs of --lora_dir, a multiplier each, a Refresh button): (dropdown, multipliers)."""
        found = state.loras()
        with gr.Accordion("LoRAs", open=False, elem_id=f"lora-box{suffix}"):
            with gr.Row():
                picked = gr.Dropdown(found, value=[], multiselect=True, label=lora_label(state, found), scale=4,
                                     elem_id=f"loras{suffix}")
                refresh = gr.Button("Refresh", scale=0, min_width=90, elem_id=f"lora-refresh{suffix}")
            mults = gr.JSON(value={}, visible=False)

            @gr.render(inputs=[picked, mults], triggers=[picked.change])
            def multiplier_rows(names, values):
                values = values or {}
                for name in names or []:
                    m = gr.Slider(-2.0, 2.0, value=float(values.get(name, 1.0)), step=0.05,
                                  label=f"Multiplier of {name}", elem_classes=["lora-multiplier"], interactive=True)
                    m.change(lora_multiplier(name), [m, mults], mults, api_name=False, show_progress="hidden",
                             concurrency_id=f"lora{suffix}", concurrency_limit=1)

        refresh.click(guarded(refresh_loras, 1), picked, picked,
                      api_name="refresh_loras" if not suffix else False)
        return picked, mults

    # Gradio's copies of uploads (ours are in uploads/ already) are deleted after a day, checked hourly.
    with gr.Blocks(title="framepack", delete_cache=(3600, 86400)) as demo:
        gr.Markdown("## framepack")
        shown = gr.State({})
        with gr.Tabs(selected="generate") as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(label="Start image", type="filepath", sources=["upload", "clipboard"],
                                         height=240, elem_id="start-image")
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                            placeholder="A cat walks on the grass.")
                        negative_prompt = gr.Textbox(label="Negative prompt", lines=1)
                        with gr.Row():
                            length_unit = gr.Radio(["seconds", "sections"], value="seconds", label="Length in",
                                                   elem_id="length-unit")
                            seconds = gr.Number(value=5.0, label="Seconds", minimum=0.1)
                            sections = gr.Number(value=2, label="Sections", precision=0, minimum=1, visible=False,
                                                 elem_id="sections")
                        with gr.Row():
                            f1 = gr.Checkbox(value=False, label="F1 (forward sampling)", elem_id="f1")
                            gr.Markdown(state.f1_note, elem_id="f1-note")
                        with gr.Row():
                            seed_mode = gr.Radio(list(SEED_MODES), value="random", label="Seed", elem_id="seed-mode")
                            seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed",
                                             visible=False)
                            seed_list = gr.Textbox(label="Seeds (one job each: 1 2 3 or 10-13)", visible=False,
                                                   max_lines=1, elem_id="seed-list")
                        end_image = gr.Image(label="End image (not with F1)", type="filepath",
                                             sources=["upload", "clipboard"], height=160, elem_id="end-image")
                        with gr.Row():
                            steps = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="steps")
                            guidance = gr.Slider(1.0, 32.0, value=10.0, step=0.5, label="Guidance (distilled)")
                            window = gr.Slider(1, 33, value=9, step=1, label="Window (latent frames)")
                        with gr.Row():
                            resolution = gr.Dropdown(list(RESOLUTIONS), value="640x640", allow_custom_value=True,
                                                     label="Resolution (HxW, multiples of 16)", elem_id="resolution")
                            cache = gr.Radio(list(CACHES), value="off", label="Step cache")
                        loras, lora_mults = lora_picker("")
                        with gr.Accordion("Sections: a prompt and an image per section (optional)", open=False,
                                          elem_id="timeline"):
                            gr.Markdown("One row per section of the video, in time order. An empty row uses the "
                                        "main prompt and the start image.")
                            timeline = gr.JSON(value={}, visible=False, elem_id="timeline-value")
                            timeline_version = gr.Number(value=0, visible=False)

                            @gr.render(inputs=[length_unit, seconds, sections, window, timeline],
                                       triggers=[demo.load, length_unit.change, seconds.change, sections.change,
                                                 window.change, timeline_version.change])
                            def timeline_rows_ui(unit, secs, n_sections, win, value):
                                value = value or {}
                                prompts, images = value.get("prompts") or {}, value.get("images") or {}
                                for i, t0, t1 in timeline_rows(unit, secs, n_sections, win):
                                    with gr.Row(elem_classes=["timeline-row"], equal_height=True):
                                        gr.Markdown(f"**{i + 1}** &nbsp; {t0:g}–{t1:g} s", elem_id=f"section-time-{i}")
                                        row_prompt = gr.Textbox(value=prompts.get(str(i), ""), show_label=False,
                                                                placeholder="(the main prompt)", scale=4,
                                                                max_lines=2, elem_id=f"section-prompt-{i}",
                                                                interactive=True)
                                        row_image = gr.Image(value=images.get(str(i)), type="filepath",
                                                             show_label=False, sources=["upload", "clipboard"],
                                                             height=90, scale=1, elem_id=f"section-image-{i}",
                                                             interactive=True)
                                    row_prompt.change(guarded(timeline_prompt(i), 1), [row_prompt, timeline],
                                                      timeline, api_name=False, show_progress="hidden",
                                                      concurrency_id="timeline", concurrency_limit=1)
                                    row_image.change(guarded(timeline_image(i), 1), [row_image, timeline], timeline,
                                                     api_name=False, show_progress="hidden",
                                                     concurrency_id="timeline", concurrency_limit=1)
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        status_md = gr.Markdown("", elem_id="status")
                    with gr.Column():
                        job_id = gr.Textbox(label="Job", interactive=False, elem_id="job-id")
                        progress_md = gr.Markdown("No job yet.", elem_id="progress")
                        preview = gr.Image(label="Live preview (one tile per section)", type="filepath",
                                           interactive=False, elem_id="preview", height=200)
                        video = gr.Video(label="Video", interactive=False, elem_id="video")
            with gr.Tab("One-frame", id="one-frame"):
                shown_1f = gr.State({})
                with gr.Row():
                    with gr.Column():
                        recipe = gr.Radio(list(ONE_FRAME_PRESETS), value="One-frame", label="Recipe", elem_id="recipe")
                        brush = gr.Brush(colors=["#ff0000"], default_size=24)
                        start_1f = gr.ImageEditor(label="Start image (paint what to keep; no paint keeps all)",
                                                  type="filepath", brush=brush, eraser=gr.Eraser(), height=300,
                                                  elem_id="start-1f")
                        control_1f = gr.ImageEditor(label="Second image: the reference (Kisekaeichi) or 2nd control "
                                                    "image (1f-mc); paint what to keep", type="filepath", brush=brush,
                                                    eraser=gr.Eraser(), height=300, elem_id="control-1f")
                        prompt_1f = gr.Textbox(label="Prompt", lines=2, elem_id="prompt-1f")
                        inference_1f = gr.Textbox(value=ONE_FRAME_PRESETS["One-frame"], elem_id="inference-1f",
                                                  label="One-frame options (target_index=N, control_index=a;b, "
                                                        "no_2x, no_4x, no_post)")
                        with gr.Row():
                            seed_1f = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed-1f")
                            steps_1f = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="steps-1f")
                            resolution_1f = gr.Dropdown(list(RESOLUTIONS), value="640x640", allow_custom_value=True,
                                                        label="Resolution (HxW)", elem_id="resolution-1f")
                        loras_1f, lora_mults_1f = lora_picker("-1f")
                        go_1f = gr.Button("Edit", variant="primary", elem_id="generate-1f")
                        status_1f = gr.Markdown("", elem_id="status-1f")
                    with gr.Column():
                        job_1f = gr.Textbox(label="Job", interactive=False, elem_id="job-id-1f")
                        progress_1f = gr.Markdown("No job yet.", elem_id="progress-1f")
                        result_1f = gr.Image(label="Result", type="filepath", interactive=False, elem_id="result-1f",
                                             height=300)
            with gr.Tab("Queue and outputs", id="queue"):
                table = gr.Dataframe(headers=QUEUE_COLUMNS, value=queue_rows(state) or None, interactive=False,
                                     wrap=True, elem_id="queue-table")
                with gr.Row():
                    picked = gr.Textbox(label="Job id (click a row)", elem_id="picked")
                    cancel_b = gr.Button("Cancel")
                    up_b = gr.Button("Up")
                    down_b = gr.Button("Down")
                    resume_b = gr.Button("Resume")
                    load_job_b = gr.Button("Load these settings", elem_id="load-job")
                    refresh_b = gr.Button("Refresh")
                queue_md = gr.Markdown("", elem_id="queue-status")
                job_md = gr.Markdown("Pick a job (click a row).", elem_id="job-details")
                with gr.Accordion("Outputs", open=True):
                    outputs_state = gr.State([])
                    gallery = gr.Gallery(label="Outputs in --save_path (newest first)", columns=6, height=260,
                                         allow_preview=False, elem_id="outputs")
                    with gr.Row():
                        picked_output = gr.Textbox(label="Output (click one)", elem_id="picked-output", scale=3)
                        outputs_b = gr.Button("Refresh outputs")
                        load_b = gr.Button("Load these settings", variant="primary", elem_id="load-settings")
                    settings_md = gr.Markdown("Pick an output.", elem_id="output-settings")

        length_unit.change(lambda u: (gr.update(visible=u == "seconds"), gr.update(visible=u == "sections")),
                           length_unit, [seconds, sections], api_name=False)
        f1.change(lambda on: gr.update(interactive=not on, value=None) if on else gr.update(interactive=True),
                  f1, end_image, api_name=False)
        seed_mode.change(lambda m: (gr.update(visible=m == "fixed"), gr.update(visible=m == "list")), seed_mode,
                         [seed, seed_list], api_name=False)
        go.click(guarded(submit, 2, 1), [image, prompt, negative_prompt, length_unit, seconds, sections, f1,
                                         end_image, seed, steps, guidance, window, resolution, cache, seed_mode,
                                         seed_list, loras, lora_mults, timeline],
                 [job_id, status_md], api_name="submit_generate")
        job_id.change(guarded(status, 3, 0), job_id, [progress_md, preview, video], api_name="job_status")
        timer = gr.Timer(POLL_SECONDS)
        timer.tick(guarded(poll, 7, 0), [job_id, shown],
                   [progress_md, preview, video, shown, table, gallery, outputs_state], api_name="poll",
                   show_progress="hidden")
        recipe.input(lambda r: ONE_FRAME_PRESETS[r], recipe, inference_1f, api_name=False)  # not on a load
        go_1f.click(guarded(submit_one_frame, 2, 1), [recipe, start_1f, control_1f, prompt_1f, inference_1f, seed_1f,
                                                     steps_1f, resolution_1f, loras_1f, lora_mults_1f],
                    [job_1f, status_1f],
                    api_name="submit_one_frame")
        job_1f.change(guarded(one_frame_status, 2, 0), job_1f, [progress_1f, result_1f], api_name="one_frame_status")
        timer.tick(guarded(one_frame_poll, 3, 0), [job_1f, shown_1f], [progress_1f, result_1f, shown_1f],
                   api_name="one_frame_poll", show_progress="hidden")
        refresh_b.click(guarded(listing, 1), None, table, api_name="queue_list")
        table.select(pick, table, picked, api_name=False)
        cancel_b.click(guarded(cancel, 2, 0), picked, [queue_md, table], api_name="cancel_job")
        up_b.click(guarded(move(-1), 2, 0), picked, [queue_md, table], api_name="move_job_up")
        down_b.click(guarded(move(+1), 2, 0), picked, [queue_md, table], api_name="move_job_down")
        resume_b.click(guarded(resume, 2, 0), picked, [queue_md, table], api_name="resume_job")
        demo.load(guarded(listing, 1), None, table, api_name=False)  # the queue as it is when the page opens
        outputs_b.click(guarded(outputs_list, 2), None, [gallery, outputs_state], api_name="outputs_list")
        demo.load(guarded(outputs_list, 2), None, [gallery, outputs_state], api_name=False)
        gallery.select(pick_output, outputs_state, picked_output, api_name=False)
        picked_output.change(guarded(lambda p: settings_text(state, p), 1, 0), picked_output, settings_md,
                             api_name="output_settings")
        form = [image, prompt, negative_prompt, length_unit, seconds, sections, f1, end_image, seed, steps, guidance,
                window, resolution, cache, seed_mode, seed_list, loras, lora_mults, timeline, timeline_version]
        form_1f = [recipe, start_1f, control_1f, prompt_1f, inference_1f, seed_1f, steps_1f, resolution_1f, loras_1f,
                   lora_mults_1f]
        assert len(form) == len(GENERATE_FORM) and len(form_1f) == len(ONE_FRAME_FORM)
        load_b.click(guarded(load_settings, len(form) + 2, len(form) + 1), picked_output,
                     [*form, tabs, settings_md], api_name="load_settings")
        picked.change(guarded(lambda j: job_details(state, j), 1, 0), picked, job_md, api_name="job_details")
        n_load = len(form) + len(form_1f) + 2
        load_job_b.click(guarded(load_job, n_load, n_load - 1), picked, [*form, *form_1f, tabs, queue_md],
                         api_name="load_job_settings")
    return demo
