"""Turning a finished latent into files: metadata, latent safetensors, streamed MP4 / PNG decode."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from framepack_cli import __version__
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.plan.sections import decode_chunks, frames_per_section


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_metadata(opts, seed: int, latent: torch.Tensor, extra: dict | None = None) -> dict[str, str] | None:
    """The settings of a run as strings: the reference's keys (so its tools read our latents) plus a
    `framepack` JSON with everything else (sections, images and their hashes, model files, LoRAs, version)."""
    if opts.no_metadata:
        return None
    meta = {
        "seeds": str(seed), "prompt": opts.prompt or "", "height": str(latent.shape[-2] * 8),
        "width": str(latent.shape[-1] * 8), "video_seconds": str(opts.video_seconds),
        "infer_steps": str(opts.infer_steps), "guidance_scale": str(opts.guidance_scale),
        "latent_window_size": str(opts.latent_window_size), "embedded_cfg_scale": str(opts.embedded_cfg_scale),
        "guidance_rescale": str(opts.guidance_rescale), "sample_solver": opts.sample_solver, "fps": str(opts.fps),
    }
    if opts.negative_prompt:
        meta["negative_prompt"] = opts.negative_prompt
    from framepack_cli.options.sections import parse_section_values

    images = set(parse_section_values(opts.image_path).values()) if opts.image_path else set()
    images |= {p for p in [opts.end_image_path, *(opts.control_image_path or []),
                           *(opts.control_image_mask_path or [])] if p}
    settings = {
        "framepack_version": __version__, "seed": seed, "f1": opts.f1, "video_size": list(opts.video_size),
        "video_sections": opts.video_sections, "flow_shift": opts.flow_shift, "latent_paddings": opts.latent_paddings,
        "custom_system_prompt": opts.custom_system_prompt, "image_path": opts.image_path,
        "end_image_path": opts.end_image_path,
        "images": {Path(p).name: sha256_file(p) for p in sorted(images) if Path(p).is_file()},
        "models": {k: getattr(opts, k) for k in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")},
        "loras": [[w, m] for w, m in zip(opts.lora_weight or [], _multipliers(opts), strict=False)],
        "rope_scaling_timestep_threshold": opts.rope_scaling_timestep_threshold,
        "rope_scaling_factor": opts.rope_scaling_factor, "dtype": opts.dtype,
        "one_frame_inference": opts.one_frame_inference,
    }
    settings.update(extra or {})
    meta["framepack"] = json.dumps(settings, sort_keys=True)
    return meta


def _multipliers(opts) -> list[float]:
    from framepack_cli.options.base import per_lora

    return per_lora(opts.lora_multiplier, len(opts.lora_weight or []), 1.0)


def timestamp() -> str:
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + f"-{int(t * 1000) % 1000:03d}"


def write_outputs(opts, latent: torch.Tensor, seed: int, meta: dict[str, str] | None, *, vae, sink: ProgressSink,
                  base: str | None = None, one_frame: bool = False, save_latent_file: bool = True) -> list[Path]:
    """Save the latent and/or decode it to MP4 / PNG frames (streamed) per `--output_type`.

    Args:
        vae: a callable returning the loaded VAE (only called when something must be decoded).
        base: default base name (else `--output_name`, else `<timestamp>_<seed>`); a suffix is added when a
            file of that name exists, never overwriting.
        one_frame: one-frame latents: each latent frame decodes to one PNG, written flat as `<base>_000.png`.
    """
    from framepack_cli.io.outputs import PngSequenceWriter, VideoWriter, save_latent, unique_base

    save_dir = Path(opts.save_path)
    save_dir.mkdir(parents=True, exist_ok=True)
    kind = opts.output_type
    want_latent = save_latent_file and kind in ("latent", "both", "latent_images")
    want_video = kind in ("video", "both") and not one_frame
    want_images = kind in ("images", "latent_images") or (one_frame and kind in ("video", "both"))
    suffixes = (["_latent.safetensors"] if want_latent else []) + ([".mp4"] if want_video else []) + (
        ([""] if not one_frame else ["_000.png"]) if want_images else [])
    base = unique_base(save_dir, opts.output_name or base or f"{timestamp()}_{seed}", suffixes)
    files: list[Path] = []
    written: list[str] = []
    if want_latent:
        files.append(save_latent(save_dir / f"{base}_latent.safetensors", latent, meta))
        written.append(str(files[-1]))
    if want_video or want_images:
        sinks = []
        if want_video:
            sinks.append(VideoWriter(save_dir / f"{base}.mp4", fps=opts.fps, crf=opts.crf, metadata=meta))
        if want_images:
            sinks.append(PngSequenceWriter(save_dir, base, metadata=meta, subdir=not one_frame))
        try:
            decode_to(sinks, vae(), latent, opts.latent_window_size, bulk=opts.bulk_decode, per_frame=one_frame,
                      sink=sink)
        except BaseException:
            for w in sinks:
                w.abort()
            raise
        for w in sinks:
            out = w.close()
            if isinstance(out, list):
                files.extend(out)
                written.append(str(out[0]) if len(out) == 1 else f"{len(out)} frames to {out[0].parent}/")
            else:
                files.append(out)
                written.append(str(out))
    sink.message("Wrote " + ", ".join(written))
    return files


def decode_to(sinks, vae, latent: torch.Tensor, window: int, *, bulk: bool = False, per_frame: bool = False,
              sink: ProgressSink | None = None) -> None:
    """Decode a CTHW latent and stream uint8 frames to `sinks` (progressive soft-append unless bulk)."""
    from framepack_cli.engine.progress import NullProgress
    from framepack_cli.io.outputs import ProgressiveBlender, to_uint8
    from framepack_cli.models.vae import vae_decode, vae_decode_per_frame

    sink = sink or NullProgress()
    z = latent.unsqueeze(0)
    if per_frame:
        sink.start_items(z.shape[2], "decode")
        for t in range(z.shape[2]):
            frames = to_uint8(vae_decode_per_frame(vae, z[:, :, t : t + 1])[0].float().cpu())
            for w in sinks:
                w.write(frames)
            sink.advance()
        sink.end_items()
        return
    chunks = [(0, z.shape[2])] if bulk else decode_chunks(z.shape[2], window)
    blender = ProgressiveBlender(frames_per_section(window), sinks)
    sink.start_items(len(chunks), "decode")
    for a, b in chunks:
        blender.add(vae_decode(vae, z[:, :, a:b])[0].float().cpu())
        sink.advance()
    blender.finish()
    sink.end_items()
