"""Turning a finished latent into files: metadata, latent safetensors, streamed MP4 / PNG decode."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from framepack_cli import __version__
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.io.hashing import sha256_file
from framepack_cli.options.base import DECODE_MODES, decode_mode
from framepack_cli.plan.sections import decode_chunks, frames_per_section, stream_chunks


def run_metadata(opts, seed: int, latent: torch.Tensor, extra: dict | None = None) -> dict[str, str] | None:
    """The settings of a run as strings: the reference's keys (so its tools read our latents) plus a
    `framepack` JSON with everything else (sections, images and their hashes, model files, LoRAs, version)."""
    if opts.no_metadata:
        return None
    one_frame = opts.one_frame_inference is not None
    meta = {
        "seeds": str(seed), "prompt": opts.prompt or "", "height": str(latent.shape[-2] * 8),
        "width": str(latent.shape[-1] * 8), "infer_steps": str(opts.infer_steps),
        "guidance_scale": str(opts.guidance_scale), "latent_window_size": str(opts.latent_window_size),
        "embedded_cfg_scale": str(opts.embedded_cfg_scale), "guidance_rescale": str(opts.guidance_rescale),
        "sample_solver": opts.sample_solver,
    }
    if not one_frame:  # a still image has no frame rate or length
        meta["video_seconds"] = str(video_seconds(latent.shape[1], opts.fps))
        meta["fps"] = str(opts.fps)
    if opts.negative_prompt:
        meta["negative_prompt"] = opts.negative_prompt
    from framepack_cli.options.sections import parse_section_values

    images = set(parse_section_values(opts.image_path).values()) if opts.image_path else set()
    images |= {p for p in [opts.end_image_path, *(opts.control_image_path or []),
                           *(opts.control_image_mask_path or [])] if p}
    settings = {
        "framepack_version": __version__, "seed": seed, "f1": opts.f1, "video_size": list(opts.video_size),
        "flow_shift": opts.flow_shift, "latent_paddings": opts.latent_paddings,
        "custom_system_prompt": opts.custom_system_prompt, "image_path": opts.image_path,
        "end_image_path": opts.end_image_path,
        "images": {Path(p).name: sha256_file(p) for p in sorted(images) if Path(p).is_file()},
        "models": {k: getattr(opts, k) for k in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")},
        "loras": [[w, m] for w, m in zip(opts.lora_weight or [], _multipliers(opts), strict=False)],
        "rope_scaling_timestep_threshold": opts.rope_scaling_timestep_threshold,
        "rope_scaling_factor": opts.rope_scaling_factor, "dtype": opts.dtype,
        "one_frame_inference": opts.one_frame_inference,
    }
    settings.update(rerun_settings(opts))
    if not one_frame:
        settings["video_sections"] = opts.video_sections
    if getattr(opts, "teacache_thresh", None) is not None:  # a step cache changes the output: say which
        settings["teacache_thresh"] = opts.teacache_thresh
    elif getattr(opts, "magcache_mag_ratios", None) is not None:
        settings["magcache"] = {k: getattr(opts, "magcache_" + k) for k in ("mag_ratios", "threshold", "k",
                                                                              "retention_ratio")}
    settings.update(extra or {})
    meta["framepack"] = json.dumps(settings, sort_keys=True)
    return meta


def rerun_settings(opts) -> dict:
    """What `--settings_from` needs to re-create the run (`framepack_cli.options.rerun`): the subcommand, every
    option not at its default, and the sha256 of every input image by absolute path."""
    from framepack_cli.options.rerun import command_of, image_paths, stored_options

    options = stored_options(opts)
    hashes = {}
    for _, p in image_paths(options):
        path = Path(p)
        if path.is_file() and str(path.resolve()) not in hashes:
            hashes[str(path.resolve())] = sha256_file(str(path))
    return {"command": command_of(opts), "options": options, "image_sha256": hashes}


def video_seconds(latent_frames: int, fps: int) -> float:
    """Length of the video a latent of `latent_frames` frames decodes to: `1 + 4·(T - 1)` frames at `fps`
    (what the reference computes from `--video_sections`), rounded to the millisecond."""
    return round((1 + 4 * (latent_frames - 1)) / fps, 3)


def _multipliers(opts) -> list[float]:
    from framepack_cli.options.base import per_lora

    return per_lora(opts.lora_multiplier, len(opts.lora_weight or []), 1.0)


def timestamp() -> str:
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + f"-{int(t * 1000) % 1000:03d}"


def output_suffixes(opts, one_frame: bool = False, save_latent_file: bool = True) -> list[str]:
    """What each output of a job appends to its base name, per `--output_type`: `_latent.safetensors`, `.mp4`,
    `""` (the PNG frames' folder) or `_000.png` (a one-frame image)."""
    kind = opts.output_type
    want_latent = save_latent_file and kind in ("latent", "both", "latent_images")
    want_video = kind in ("video", "both") and not one_frame
    want_images = kind in ("images", "latent_images") or (one_frame and kind in ("video", "both"))
    return (["_latent.safetensors"] if want_latent else []) + ([".mp4"] if want_video else []) + (
        ([""] if not one_frame else ["_000.png"]) if want_images else [])


def write_outputs(opts, latent: torch.Tensor, seed: int, meta: dict[str, str] | None, *, vae, sink: ProgressSink,
                  base: str | None = None, one_frame: bool = False, save_latent_file: bool = True,
                  latent_source: str | None = None) -> list[Path]:
    """Save the latent and/or decode it to MP4 / PNG frames (streamed) per `--output_type`.

    Every file is announced as a `Wrote <path>` result (stdout) as soon as it is in place. A failed write (disk
    full, folder gone) leaves no partial file and raises one `ResourceError` naming `--save_path`, the file and
    the errno text; the latent is saved first to a fallback folder (the temp folder, else home, else the
    current folder), so the sampling is not lost.

    Args:
        vae: a callable returning the loaded VAE (only called when something must be decoded).
        base: default base name (else `--output_name`, else `<timestamp>_<seed>`); a suffix is added when a
            file of that name exists, never overwriting.
        one_frame: one-frame latents: each latent frame decodes to one PNG, written flat as `<base>_000.png`.
        latent_source: the file the latent was read from (`--latent_path`), named instead of a fallback copy.
    """
    from framepack_cli.io.outputs import PngSequenceWriter, VideoWriter, save_latent, unique_base

    save_dir = Path(opts.save_path)
    suffixes = output_suffixes(opts, one_frame, save_latent_file)
    want_latent, want_video = "_latent.safetensors" in suffixes, ".mp4" in suffixes
    want_images = "" in suffixes or "_000.png" in suffixes
    base = unique_base(save_dir, opts.output_name or base or f"{timestamp()}_{seed}", suffixes)
    files: list[Path] = []
    saved_latent: Path | None = None
    try:
        _named(save_dir, lambda: save_dir.mkdir(parents=True, exist_ok=True))
        if want_latent:
            target = save_dir / f"{base}_latent.safetensors"
            saved_latent = _named(target, lambda: save_latent(target, latent, meta))
            files.append(saved_latent)
            sink.result(f"Wrote {saved_latent}")
        if want_video or want_images:
            writers: list[_Named] = []
            if want_video:
                writers.append(_Named(VideoWriter(save_dir / f"{base}.mp4", fps=opts.fps, crf=opts.crf,
                                                  metadata=meta), save_dir / f"{base}.mp4"))
            if want_images:
                where = save_dir / (f"{base}_000.png" if one_frame else base)  # the frame, or the frames' folder
                writers.append(_Named(PngSequenceWriter(save_dir, base, metadata=meta, subdir=not one_frame), where))
            try:
                decode_to(writers, vae, latent, opts.latent_window_size, mode=decode_mode(opts),
                          per_frame=one_frame, sink=sink)
                outs = [w.close() for w in writers]
            except BaseException:
                for w in writers:
                    w.abort()
                raise
            for out in outs:
                for path in out if isinstance(out, list) else [out]:
                    files.append(path)
                    sink.result(f"Wrote {path}")
    except _WriteFailed as e:
        raise _write_error(e.error, e.path, opts, latent, meta, base, saved_latent, latent_source) from None
    return files


def _named(path: Path, write):
    """Run `write()`; an `OSError` becomes `_WriteFailed` naming `path`."""
    try:
        return write()
    except OSError as e:
        raise _WriteFailed(path, e) from e


class _WriteFailed(Exception):
    """An `OSError` while writing one output file, with the file's final name."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(str(error))
        self.path, self.error = path, error


class _Named:
    """A frame writer whose write errors name its final file (the writer itself works on a temp name)."""

    def __init__(self, writer, path: Path) -> None:
        self.writer, self.path = writer, path

    def write(self, frames) -> None:
        try:
            self.writer.write(frames)
        except OSError as e:
            raise _WriteFailed(self.path, e) from e

    def close(self):
        try:
            return self.writer.close()
        except OSError as e:
            raise _WriteFailed(self.path, e) from e

    def abort(self) -> None:
        self.writer.abort()


def fallback_dirs() -> list[Path]:
    """Where a latent goes when `--save_path` cannot take it: the temp folder, home, the current folder."""
    import tempfile

    return list(dict.fromkeys([Path(tempfile.gettempdir()), Path.home(), Path.cwd()]))


def save_fallback_latent(latent: torch.Tensor, meta: dict[str, str] | None, base: str) -> Path | None:
    """Save the latent in the first fallback folder that takes it; None when none does."""
    from framepack_cli.io.outputs import save_latent, unique_base

    for d in fallback_dirs():
        try:
            name = unique_base(d, base, ["_latent.safetensors"])
            return save_latent(d / f"{name}_latent.safetensors", latent, meta)
        except OSError:
            continue
    return None


def _write_error(exc: OSError, path: Path, opts, latent, meta, base: str, saved_latent: Path | None,
                 latent_source: str | None):
    """The one-line error of a failed write, after making sure the latent is kept somewhere."""
    from framepack_cli.io.writable import resource_error_for

    err = resource_error_for(exc, "--save_path", path)
    if latent_source is not None:
        keep = f"the latent is unchanged in {latent_source}"
    else:
        kept = saved_latent or save_fallback_latent(latent, meta, base)
        if kept is None:
            tried = ", ".join(str(d) for d in fallback_dirs())
            return type(err)(err.message, hint=f"{err.hint}; the latent could not be saved anywhere either "
                                               f"(tried {tried})")
        vae = opts.vae or "VAE"
        keep = (f"the latent was saved to {kept} (decode it with `framepack generate --latent_path {kept} "
                f"--vae {vae} --save_path <folder>`)")
    return type(err)(err.message, hint=keep)


def decode_to(sinks, load_vae, latent: torch.Tensor, window: int, *, mode: str = "blend", per_frame: bool = False,
              sink: ProgressSink | None = None) -> None:
    """Decode a CTHW latent and stream uint8 frames to `sinks` as each chunk finishes.

    `mode` (`--decode`): "stream" decodes consecutive time chunks with no overlap, each latent once, carrying the
    causal state across chunks (`vae_decode_stream`); "blend" is the reference's progressive decode of overlapping
    chunks blended linearly; "bulk" decodes the whole latent in one pass. `load_vae()` returns the VAE; it is
    called once the decode has begun (so loading it counts as decoding).
    """
    from contextlib import closing

    from framepack_cli.engine.progress import NullProgress
    from framepack_cli.io.outputs import ProgressiveBlender, to_uint8
    from framepack_cli.models.vae import vae_decode, vae_decode_per_frame, vae_decode_stream

    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    sink = sink or NullProgress()
    z = latent.unsqueeze(0)
    if per_frame:
        sink.start_items(z.shape[2], "decode")
        vae = load_vae()
        for t in range(z.shape[2]):
            frames = to_uint8(vae_decode_per_frame(vae, z[:, :, t : t + 1])[0].float().cpu())
            for w in sinks:
                w.write(frames)
            sink.advance()
        sink.end_items()
        return
    if mode == "stream":
        sink.start_items(z.shape[2], "decode")  # counted in latents: the chunk length is known once the VAE is loaded
        vae = load_vae()
        bounds = stream_chunks(z.shape[2], window, _stream_chunk(vae, z, window))
        with closing(vae_decode_stream(vae, z, bounds)) as pieces:
            for (a, b), pixels in zip(bounds, pieces, strict=True):
                frames = to_uint8(pixels[0].float().cpu())
                for w in sinks:
                    w.write(frames)
                sink.advance(b - a)
        sink.end_items()
        return
    chunks = [(0, z.shape[2])] if mode == "bulk" else decode_chunks(z.shape[2], window)
    blender = ProgressiveBlender(frames_per_section(window), sinks)
    sink.start_items(len(chunks), "decode")
    vae = load_vae()
    for a, b in chunks:
        blender.add(vae_decode(vae, z[:, :, a:b])[0].float().cpu())
        sink.advance()
    blender.finish()
    sink.end_items()


def _stream_chunk(vae, z: torch.Tensor, window: int) -> int:
    """First-chunk latents of a streamed decode: from the free GPU memory now (the DiT is released by then), the
    default `2W + 1` on the CPU (`memory_plan.stream_chunk_latents`)."""
    from framepack_cli.engine.memory_plan import stream_chunk_latents

    device = vae.device
    free = None
    if device.type == "cuda":
        free_now, _ = torch.cuda.mem_get_info(device)
        free = free_now + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return stream_chunk_latents(z.shape[2], window, z.shape[-2] * 8, z.shape[-1] * 8, vae.dtype.itemsize, free,
                                chunk=vae.chunk_size, tile=vae.tile_sample_size)
