"""One-frame editing: `framepack one-frame`, `framepack kisekae` and `framepack generate --one_frame_inference`.

A single latent frame is sampled, conditioned on the control images' latents (optionally masked) at the
indices of `framepack_cli.plan.one_frame.one_frame_layout`, on prompt 0 and on the SigLIP embedding of the
(section 0) start image. The result is decoded frame by frame and written as a PNG (plus the latent when
asked).
"""

from __future__ import annotations

import json
import random

import torch

from framepack_cli.engine.context import free_memory, resolve_device, resolve_dtype
from framepack_cli.engine.denoiser import make_model_fn
from framepack_cli.engine.generate import (
    LATENT_CHANNELS,
    GenerateResult,
    _default_sink,
    _load_vae,
    _metadata,
    _refuse_unbuilt,
    _to_device,
    _vae_dtype,
    encode_images,
    encode_prompts,
    write_outputs,
)
from framepack_cli.engine.progress import NullProgress, ProgressSink
from framepack_cli.options.sections import parse_section_values
from framepack_cli.plan.one_frame import auto_resize_bucket, one_frame_layout
from framepack_cli.plan.schedules import flow_mu, flow_sigmas, noisy_token_count
from framepack_cli.sampling.unipc import sample_unipc


def run(opts, sink: ProgressSink | None = None) -> GenerateResult:
    """Entry point of `framepack one-frame` (and of `generate --one_frame_inference`)."""
    _refuse_unbuilt(opts)
    sink = sink or _default_sink()
    try:
        return one_frame(opts, sink)
    finally:
        sink.close()


def run_kisekae(opts, sink: ProgressSink | None = None) -> GenerateResult:
    """Entry point of `framepack kisekae`: the options already carry the recipe; masks pair with their images."""
    return run(opts, sink)


def _mask_paths(opts) -> list[str | None]:
    """Explicit mask per control image (None = use the image's alpha channel, if it has one)."""
    controls = opts.control_image_path or []
    if getattr(opts, "start_mask", None) or getattr(opts, "reference_mask", None):
        explicit = [opts.start_mask, opts.reference_mask]
    else:
        explicit = list(opts.control_image_mask_path or [])
    return [explicit[i] if i < len(explicit) else None for i in range(len(controls))]


def one_frame(opts, sink: ProgressSink | None = None) -> GenerateResult:
    """Run one-frame inference from validated options and write the outputs."""
    from framepack_cli.io.images import load_image, load_mask, mask_to_latent

    sink = sink or NullProgress()
    spec = opts.one_frame
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    if opts.end_image_path:
        sink.message("Warning: --end_image_path is ignored in one-frame mode")
    if opts.video_sections or opts.latent_paddings:
        sink.message("Warning: --video_sections / --latent_paddings are ignored in one-frame mode")
    controls: list[str | None] = list(opts.control_image_path or []) or [None]
    height, width = opts.video_size
    if opts.one_frame_auto_resize and controls[0] is not None:
        rgb0, _ = load_image(controls[0])
        width, height = auto_resize_bucket(rgb0.shape[1], rgb0.shape[0], width, height)
        opts = opts.model_copy(update={"video_size": (height, width)})
        sink.message(f"--one_frame_auto_resize: {height}x{width} from {controls[0]}")
    lh, lw = height // 8, width // 8
    window = opts.latent_window_size
    seed = opts.seed if opts.seed is not None else random.randint(0, 2**32 - 1)
    image0 = parse_section_values(opts.image_path)[0] if opts.image_path else None
    prompt0 = parse_section_values(opts.prompt)[0] if opts.prompt is not None else ""
    layout = one_frame_layout(
        window, len(controls), target_index=spec.target_index, control_index=spec.control_index,
        no_post=spec.no_post, no_2x=spec.no_2x, no_4x=spec.no_4x,
    )
    sink.message(f"Seed {seed}, one frame at index {layout.latent_index}, clean latents at "
                 f"{list(layout.clean_indices)}, {height}x{width}, {opts.infer_steps} steps")

    # conditioning: control latents (VAE; a missing control image is a zero latent), SigLIP of image 0, prompt 0
    sink.message(f"Loading VAE {opts.vae}")
    vae = _load_vae(opts, device, _vae_dtype(device, dtype))
    real = [c for c in controls if c is not None]
    latents, embeddings = encode_images(opts, real, vae, device, dtype, siglip_for={image0}, sink=sink)
    if device.type == "cuda":
        vae.to("cpu")
        free_memory(device)
    clean = [latents[c] if c is not None else torch.zeros(1, LATENT_CHANNELS, 1, lh, lw) for c in controls]
    for i, (ctrl, mask_path) in enumerate(zip(controls, _mask_paths(opts), strict=True)):
        if mask_path is not None:
            clean[i] = clean[i] * load_mask(mask_path, width, height)
        elif ctrl is not None:
            alpha = load_image(ctrl)[1]
            if alpha is not None:
                clean[i] = clean[i] * mask_to_latent(alpha, width, height)
    if layout.has_post:
        clean.append(torch.zeros(1, LATENT_CHANNELS, 1, lh, lw))
    conds, negative = encode_prompts(opts, [prompt0], device, dtype, sink)

    from framepack_cli.models.transformer import load_dit

    sink.message(f"Loading DiT {opts.dit}")
    dit = load_dit(opts.dit, device=device, dtype=dtype, attn_mode=opts.attn_mode,
                   rope_scaling_timestep_threshold=opts.rope_scaling_timestep_threshold,
                   rope_scaling_factor=opts.rope_scaling_factor)
    context = {
        "latent_indices": torch.tensor([[layout.latent_index]]),
        "clean_latents": torch.cat(clean, dim=2), "clean_latent_indices": torch.tensor([layout.clean_indices]),
        "clean_latents_2x": None if layout.indices_2x is None else torch.zeros(1, LATENT_CHANNELS, 2, lh, lw),
        "clean_latent_2x_indices": None if layout.indices_2x is None else torch.tensor([layout.indices_2x]),
        "clean_latents_4x": None if layout.indices_4x is None else torch.zeros(1, LATENT_CHANNELS, 16, lh, lw),
        "clean_latent_4x_indices": None if layout.indices_4x is None else torch.tensor([layout.indices_4x]),
    }
    model_fn = make_model_fn(
        dit, positive=_to_device(conds[prompt0], device, dtype),
        negative=_to_device(negative, device, dtype) if negative is not None else None,
        image_embeddings=embeddings[image0], guidance_scale=opts.guidance_scale,
        guidance_rescale=opts.guidance_rescale, embedded_cfg_scale=opts.embedded_cfg_scale, context=context,
        dtype=dtype, device=device,
    )
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, LATENT_CHANNELS, 1, lh, lw), generator=generator, dtype=torch.float32)
    sigmas = flow_sigmas(opts.infer_steps, flow_mu(noisy_token_count(1, lh, lw), opts.flow_shift))
    sink.start_sections(1)
    sink.start_section(0, 1, "one frame")
    out = sample_unipc(model_fn, noise.to(device), sigmas,
                       callback=lambda d: sink.step(d["i"] + 1, opts.infer_steps)).float().cpu()
    sink.end_section()
    del dit
    free_memory(device)
    latent = out[0].contiguous()
    meta = None
    if not opts.no_metadata:
        meta = _metadata(opts, seed, latent, 1, {0: image0})
        settings = json.loads(meta["framepack"])
        settings.update({
            "one_frame_inference": opts.one_frame_inference, "control_image_path": opts.control_image_path,
            "control_image_mask_path": _mask_paths(opts), "target_index": layout.latent_index,
            "clean_indices": list(layout.clean_indices),
        })
        meta["framepack"] = json.dumps(settings, sort_keys=True)
    files = write_outputs(opts, latent, seed, meta, vae=vae, device=device, sink=sink, one_frame=True)
    return GenerateResult(seed=seed, latent=latent, files=files)
