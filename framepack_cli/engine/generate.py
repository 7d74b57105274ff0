"""`framepack generate`: progressive image-to-video (vanilla inverted anti-drifting and F1).

Order of work (each model is freed before the next one loads, so peak memory is one model at a time):
images -> VAE encode -> SigLIP -> text encoders -> DiT sampling, section by section -> VAE decode, streamed
to the writers. The section plan and index layouts come from `framepack_cli.plan.sections`; this module
only follows them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from framepack_cli import __version__
from framepack_cli.engine.context import free_memory, resolve_device, resolve_dtype
from framepack_cli.engine.denoiser import TextCond, make_model_fn
from framepack_cli.engine.progress import NullProgress, ProgressSink
from framepack_cli.errors import FramepackError, NotBuiltError
from framepack_cli.options.sections import is_pipe_form, parse_section_values, value_for_section
from framepack_cli.plan.schedules import flow_mu, flow_sigmas, noisy_token_count
from framepack_cli.plan.sections import (
    HISTORY_1X,
    HISTORY_2X,
    HISTORY_4X,
    HISTORY_LEN,
    decode_chunks,
    f1_layout,
    frames_per_section,
    num_sections,
    plan_f1,
    plan_vanilla,
    vanilla_layout,
)
from framepack_cli.sampling.unipc import sample_unipc

LATENT_CHANNELS = 16


@dataclass
class GenerateResult:
    """What a generation produced: files written, the seed used and the final latent (CTHW, CPU)."""

    seed: int
    latent: torch.Tensor
    files: list[Path] = field(default_factory=list)


def _default_sink() -> ProgressSink:
    from framepack_cli.cli.render import RichProgress

    return RichProgress()


def run(opts, sink: ProgressSink | None = None) -> GenerateResult | list[GenerateResult]:
    """Entry point of `framepack generate` (validated `GenerateOptions`)."""
    if opts.one_frame_inference is not None:
        from framepack_cli.engine.one_frame import run as run_one_frame

        return run_one_frame(opts)
    _refuse_unbuilt(opts)
    sink = sink or _default_sink()
    try:
        if opts.latent_path:
            return decode_latent_files(opts, sink)
        return generate(opts, sink)
    finally:
        sink.close()


def _refuse_unbuilt(opts) -> None:
    """Options whose machinery is not built yet are refused, never silently ignored."""
    unbuilt = {
        "from_file": "--from_file", "interactive": "--interactive", "lora_weight": "--lora_weight",
        "save_merged_model": "--save_merged_model", "fp8": "--fp8", "fp8_scaled": "--fp8_scaled",
        "compile": "--compile", "magcache_mag_ratios": "--magcache_mag_ratios",
        "magcache_calibration": "--magcache_calibration", "lycoris": "--lycoris",
    }
    given = [flag for name, flag in unbuilt.items() if getattr(opts, name)]
    if opts.blocks_to_swap:
        given.append("--blocks_to_swap")
    if given:
        raise NotBuiltError(
            f"{', '.join(given)}: not built yet in framepack {__version__}; run without "
            f"{'it' if len(given) == 1 else 'them'} (see CHANGELOG.md)"
        )


# --------------------------------------------------------------------------------------------------------
# conditioning
# --------------------------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _section_values(text: str | None, n: int, flag: str) -> dict[int, str] | None:
    if text is None:
        return None
    values = parse_section_values(text)
    if is_pipe_form(text) and len(values) != n:
        raise FramepackError(f"{flag}: {len(values)} entries separated by '|' for {n} sections; give one per section "
                             "(in time order) or use the indexed form '0:...;;;-1:...'")
    return values


def _vae_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The reference runs the VAE in float16 on GPUs; float32 stays float32."""
    return torch.float16 if (device.type == "cuda" and dtype != torch.float32) else dtype


def _load_vae(opts, device, dtype):
    from framepack_cli.models.vae import load_vae

    return load_vae(
        opts.vae, device=device, dtype=dtype, chunk_size=opts.vae_chunk_size,
        spatial_tile_sample_min_size=opts.vae_spatial_tile_sample_min_size, tiling=opts.vae_tiling,
    )


def encode_images(opts, paths: list[str | None], vae, device, dtype, *, siglip_for: set[str | None], sink):
    """Bucket-resize and VAE-encode every distinct image of `paths`; SigLIP-embed the images of `siglip_for`
    (start/section images only: never control or end images, as the reference).

    `None` stands for "no image": a zero pixel frame for the VAE and a black image for SigLIP, as the reference.
    Returns `(latents, embeddings)` keyed by path, tensors on the CPU in float32.
    """
    import numpy as np

    from framepack_cli.io.images import load_image, resize_to_bucket, to_pixels
    from framepack_cli.models.vae import vae_encode

    height, width = opts.video_size
    rgb: dict[str | None, np.ndarray] = {}
    for p in dict.fromkeys([*paths, *siglip_for]):
        rgb[p] = np.zeros((height, width, 3), np.uint8) if p is None else resize_to_bucket(load_image(p)[0], width,
                                                                                            height)
    latents: dict[str | None, torch.Tensor] = {}
    for p in dict.fromkeys(paths):
        pixels = torch.zeros(1, 3, 1, height, width) if p is None else to_pixels(rgb[p])
        latents[p] = vae_encode(vae, pixels).float().cpu()
    embeddings: dict[str | None, torch.Tensor] = {}
    if siglip_for:
        from framepack_cli.models.image_encoder import encode_image, load_image_encoder

        sink.message(f"Loading image encoder {opts.image_encoder}")
        enc = load_image_encoder(opts.image_encoder, device=device, dtype=dtype)
        for p in siglip_for:
            embeddings[p] = encode_image(enc, rgb[p]).float().cpu()
        del enc
        free_memory(device)
    return latents, embeddings


def encode_prompts(opts, prompts: list[str], device, dtype, sink) -> tuple[dict[str, TextCond], TextCond | None]:
    """Encode each distinct prompt once (and the negative prompt when real CFG is on), then free the encoders."""
    from framepack_cli.models.text_encoders import (
        encode_prompt,
        load_text_encoder1,
        load_text_encoder2,
        load_tokenizers,
    )

    sink.message(f"Loading text encoders {opts.text_encoder1}, {opts.text_encoder2}")
    tok1, tok2 = load_tokenizers(opts.text_encoder1, opts.text_encoder2, opts.tokenizer1, opts.tokenizer2)
    te1 = load_text_encoder1(opts.text_encoder1, device=device, dtype=dtype, fp8=opts.fp8_llm)
    te2 = load_text_encoder2(opts.text_encoder2, device=device, dtype=dtype)

    wanted = list(dict.fromkeys(prompts)) + ([opts.negative_prompt or ""] if opts.guidance_scale != 1.0 else [])
    encoded: dict[str, TextCond] = {}
    for p in wanted:
        if p not in encoded:
            vec, mask, pooler = encode_prompt(p, te1, tok1, te2, tok2, custom_system_prompt=opts.custom_system_prompt)
            encoded[p] = TextCond(vec.float(), mask, pooler.float())
    del te1, te2
    free_memory(device)
    conds = {p: encoded[p] for p in prompts}
    negative = encoded[opts.negative_prompt or ""] if opts.guidance_scale != 1.0 else None
    return conds, negative


def _to_device(c: TextCond, device, dtype) -> TextCond:
    return TextCond(c.llama_vec.to(device, dtype), c.llama_mask.to(device), c.clip_pooler.to(device, dtype))


# --------------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------------


def generate(opts, sink: ProgressSink | None = None) -> GenerateResult:
    """Generate one video from validated options and write the requested outputs."""
    sink = sink or NullProgress()
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    height, width = opts.video_size
    lh, lw = height // 8, width // 8
    window = opts.latent_window_size
    n = num_sections(opts.video_seconds, window, opts.video_sections)
    seed = opts.seed if opts.seed is not None else random.randint(0, 2**32 - 1)
    sink.message(f"Seed {seed}, {n} section(s) of {window} latent frames, {height}x{width}, {opts.infer_steps} steps")

    prompts = _section_values(opts.prompt, n, "--prompt")
    images = _section_values(opts.image_path, n, "--image_path") or {0: None}
    plan = plan_f1(n) if opts.f1 else plan_vanilla(n, opts.paddings)
    section_image = {s.index: value_for_section(images, s.index, n) for s in plan}
    section_prompt = {s.index: value_for_section(prompts, s.index, n) for s in plan}

    # 1. images: VAE latents (start/section/end) and SigLIP embeddings (start/section only)
    vae_dtype = _vae_dtype(device, dtype)
    sink.message(f"Loading VAE {opts.vae}")
    vae = _load_vae(opts, device, vae_dtype)
    img_paths = list(section_image.values()) + ([opts.end_image_path] if opts.end_image_path else [])
    latents, embeddings = encode_images(opts, img_paths, vae, device, dtype, siglip_for=set(section_image.values()),
                                        sink=sink)
    if device.type == "cuda":
        vae.to("cpu")
        free_memory(device)

    # 2. text
    conds, negative = encode_prompts(opts, list(section_prompt.values()), device, dtype, sink)

    # 3. DiT, section by section
    from framepack_cli.models.transformer import load_dit

    sink.message(f"Loading DiT {opts.dit}")
    dit = load_dit(opts.dit, device=device, dtype=dtype, attn_mode=opts.attn_mode,
                   rope_scaling_timestep_threshold=opts.rope_scaling_timestep_threshold,
                   rope_scaling_factor=opts.rope_scaling_factor)
    generator = torch.Generator("cpu").manual_seed(seed)
    latent_frames = (frames_per_section(window) + 3) // 4
    sigmas = flow_sigmas(opts.infer_steps, flow_mu(noisy_token_count(latent_frames, lh, lw), opts.flow_shift))
    zeros_ctx = torch.zeros(1, LATENT_CHANNELS, HISTORY_LEN, lh, lw)
    if opts.f1:
        history = torch.cat([zeros_ctx, latents[section_image[0]]], dim=2)
    else:
        history = zeros_ctx.clone()
        if opts.end_image_path:
            history[:, :, 0:1] = latents[opts.end_image_path]
    total = 1 if opts.f1 else 0
    sink.start_sections(n)
    for s in plan:
        sink.start_section(s.loop, n, f"section {s.index + 1}/{n}")
        start_latent = latents[section_image[s.index]]
        if opts.f1:
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
            dit, positive=_to_device(conds[section_prompt[s.index]], device, dtype),
            negative=_to_device(negative, device, dtype) if negative is not None else None,
            image_embeddings=embeddings[section_image[s.index]], guidance_scale=opts.guidance_scale,
            guidance_rescale=opts.guidance_rescale, embedded_cfg_scale=opts.embedded_cfg_scale, context=context,
            dtype=dtype, device=device,
        )
        noise = torch.randn((1, LATENT_CHANNELS, latent_frames, lh, lw), generator=generator, dtype=torch.float32)
        out = sample_unipc(model_fn, noise.to(device), sigmas,
                           callback=lambda d: sink.step(d["i"] + 1, opts.infer_steps)).float().cpu()
        if opts.f1:
            history = torch.cat([history, out], dim=2)
            total += out.shape[2]
        else:
            if s.is_last:
                out = torch.cat([start_latent, out], dim=2)
            history = torch.cat([out, history], dim=2)
            total += out.shape[2]
        sink.end_section()
    del dit
    free_memory(device)
    final = history[:, :, -total:] if opts.f1 else history[:, :, :total]
    latent = final[0].contiguous()  # CTHW, as the reference saves it

    meta = None if opts.no_metadata else _metadata(opts, seed, latent, n, images)
    files = write_outputs(opts, latent, seed, meta, vae=vae, device=device, sink=sink)
    return GenerateResult(seed=seed, latent=latent, files=files)


def _metadata(opts, seed: int, latent: torch.Tensor, n: int, images: dict[int, str | None]) -> dict[str, str]:
    """The settings of a run, as strings: the reference's keys plus ours (files, hashes, version)."""
    meta = {
        "seeds": str(seed), "prompt": opts.prompt or "", "height": str(latent.shape[-2] * 8),
        "width": str(latent.shape[-1] * 8), "video_seconds": str(opts.video_seconds),
        "infer_steps": str(opts.infer_steps), "guidance_scale": str(opts.guidance_scale),
        "latent_window_size": str(opts.latent_window_size), "embedded_cfg_scale": str(opts.embedded_cfg_scale),
        "guidance_rescale": str(opts.guidance_rescale), "sample_solver": opts.sample_solver, "fps": str(opts.fps),
    }
    if opts.negative_prompt:
        meta["negative_prompt"] = opts.negative_prompt
    imgs = {p for p in images.values() if p} | ({opts.end_image_path} if opts.end_image_path else set())
    settings = {
        "framepack_version": __version__, "seed": seed, "video_sections": n, "f1": opts.f1,
        "video_size": list(opts.video_size), "flow_shift": opts.flow_shift, "latent_paddings": opts.latent_paddings,
        "custom_system_prompt": opts.custom_system_prompt, "image_path": opts.image_path,
        "end_image_path": opts.end_image_path,
        "images": {Path(p).name: _sha256(p) for p in sorted(imgs)},
        "models": {k: getattr(opts, k) for k in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")},
        "loras": list(zip(opts.lora_weight or [], opts.lora_multiplier or [], strict=False)),
        "rope_scaling_timestep_threshold": opts.rope_scaling_timestep_threshold,
        "rope_scaling_factor": opts.rope_scaling_factor, "dtype": opts.dtype,
    }
    meta["framepack"] = json.dumps(settings, sort_keys=True)
    return meta


# --------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------


def _timestamp() -> str:
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + f"-{int(t * 1000) % 1000:03d}"


def write_outputs(opts, latent: torch.Tensor, seed: int, meta: dict[str, str] | None, *, vae=None, device=None,
                  sink: ProgressSink, base: str | None = None, one_frame: bool = False) -> list[Path]:
    """Save the latent and/or decode it to MP4 / PNG frames, streamed, per `--output_type`."""
    from framepack_cli.io.outputs import PngSequenceWriter, VideoWriter, save_latent, unique_base

    save_dir = Path(opts.save_path)
    save_dir.mkdir(parents=True, exist_ok=True)
    kind = opts.output_type
    want_latent = kind in ("latent", "both", "latent_images")
    want_video = kind in ("video", "both") and not one_frame
    want_images = kind in ("images", "latent_images") or (one_frame and kind in ("video", "both"))
    suffixes = (["_latent.safetensors"] if want_latent else []) + ([".mp4"] if want_video else []) + (
        ([""] if not one_frame else ["_000.png"]) if want_images else [])
    base = unique_base(save_dir, opts.output_name or base or f"{_timestamp()}_{seed}", suffixes)
    files: list[Path] = []
    if want_latent:
        files.append(save_latent(save_dir / f"{base}_latent.safetensors", latent, meta))
    if want_video or want_images:
        if vae is None:
            device = device or resolve_device(opts.device)
            dtype = resolve_dtype(opts.dtype, device)
            vae = _load_vae(opts, device, _vae_dtype(device, dtype))
        elif device is not None:
            vae.to(device)
        sinks = []
        if want_video:
            sinks.append(VideoWriter(save_dir / f"{base}.mp4", fps=opts.fps, crf=opts.crf, metadata=meta))
        if want_images:
            sinks.append(PngSequenceWriter(save_dir, base, metadata=meta, subdir=not one_frame))
        try:
            decode_to(sinks, vae, latent, opts.latent_window_size, bulk=opts.bulk_decode, per_frame=one_frame)
        except BaseException:
            for w in sinks:
                w.abort()
            raise
        for w in sinks:
            out = w.close()
            files.extend(out if isinstance(out, list) else [out])
    for f in files:
        sink.message(f"Wrote {f}")
    return files


def decode_to(sinks, vae, latent: torch.Tensor, window: int, *, bulk: bool = False, per_frame: bool = False) -> None:
    """Decode a CTHW latent and stream uint8 frames to `sinks` (progressive soft-append unless bulk)."""
    from framepack_cli.io.outputs import ProgressiveBlender, to_uint8
    from framepack_cli.models.vae import vae_decode, vae_decode_per_frame

    z = latent.unsqueeze(0)
    if per_frame:
        for t in range(z.shape[2]):
            frames = to_uint8(vae_decode_per_frame(vae, z[:, :, t : t + 1])[0].float().cpu())
            for w in sinks:
                w.write(frames)
        return
    chunks = [(0, z.shape[2])] if bulk else decode_chunks(z.shape[2], window)
    blender = ProgressiveBlender(frames_per_section(window), sinks)
    for a, b in chunks:
        blender.add(vae_decode(vae, z[:, :, a:b])[0].float().cpu())
    blender.finish()


def decode_latent_files(opts, sink: ProgressSink) -> list[GenerateResult]:
    """`--latent_path`: decode saved latents (settings from their metadata) per `--output_type`."""
    from framepack_cli.io.outputs import load_latent

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    vae = _load_vae(opts, device, _vae_dtype(device, dtype))
    results = []
    for path in opts.latent_path:
        latent, meta = load_latent(Path(path))
        if latent.ndim == 5:
            latent = latent[0]
        if latent.ndim != 4 or latent.shape[0] != LATENT_CHANNELS:
            raise FramepackError(f"--latent_path: {path} holds a tensor of shape {list(latent.shape)}, expected "
                                 f"[{LATENT_CHANNELS}, T, H/8, W/8]")
        seed = int(meta.get("seeds", "0") or 0)
        window = int(meta.get("latent_window_size", opts.latent_window_size))
        fps = int(meta.get("fps", opts.fps))
        o = opts.model_copy(update={"latent_window_size": window, "fps": fps,
                                    "output_type": "video" if opts.output_type in ("latent", "both")
                                    else ("images" if opts.output_type == "latent_images" else opts.output_type)})
        stem = Path(path).name.removesuffix(".safetensors").removesuffix("_latent")
        files = write_outputs(o, latent.float(), seed, meta or None, vae=vae, device=device, sink=sink, base=stem,
                              one_frame=latent.shape[1] == 1 and "one_frame" in meta.get("framepack", ""))
        results.append(GenerateResult(seed=seed, latent=latent, files=files))
    return results
