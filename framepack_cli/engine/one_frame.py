"""One-frame editing: `framepack one-frame`, `framepack kisekae` and `framepack generate --one_frame_inference`.

A single latent frame is sampled, conditioned on the control images' latents (optionally masked) at the
indices of `framepack_cli.plan.one_frame.one_frame_layout`, on prompt 0 and on the SigLIP embedding of the
(section 0) start image. The result is decoded frame by frame and written as a PNG (plus the latent when
asked).
"""

from __future__ import annotations

import random

import torch

from framepack_cli.engine.denoiser import make_model_fn, to_device
from framepack_cli.engine.input_notes import BLACK_SIGLIP, image_notes
from framepack_cli.engine.pipeline import Conditioning
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.engine.resources import advice, oom_guard
from framepack_cli.engine.step_caching import JobStepCache
from framepack_cli.engine.writing import run_metadata
from framepack_cli.models.text_encoders import positive_prompt
from framepack_cli.options.sections import parse_section_values
from framepack_cli.plan.one_frame import auto_resize_bucket, one_frame_layout
from framepack_cli.plan.schedules import flow_mu, flow_sigmas, noisy_token_count
from framepack_cli.plan.sections import LATENT_CHANNELS
from framepack_cli.sampling.unipc import sample_unipc


def mask_paths(opts) -> list[str | None]:
    """Explicit mask per control image (None: use the image's alpha channel, if it has one)."""
    controls = opts.control_image_path or []
    if getattr(opts, "start_mask", None) or getattr(opts, "reference_mask", None):
        explicit = [opts.start_mask, opts.reference_mask]
    else:
        explicit = list(opts.control_image_mask_path or [])
    return [explicit[i] if i < len(explicit) else None for i in range(len(controls))]


class OneFrameJob:
    """One one-frame edit: control latents at their indices, one sampled frame."""

    one_frame = True

    def __init__(self, opts, label: str = "") -> None:
        from framepack_cli.io.images import load_image

        self.label = label
        self.seed = opts.seed if opts.seed is not None else random.randint(0, 2**32 - 1)
        self.controls: list[str | None] = list(opts.control_image_path or []) or [None]
        self._notes: list[str] = []
        if opts.one_frame_auto_resize and self.controls[0] is not None:
            rgb0, _ = load_image(self.controls[0])
            height, width = opts.video_size
            width, height = auto_resize_bucket(rgb0.shape[1], rgb0.shape[0], width, height)
            opts = opts.model_copy(update={"video_size": (height, width)})
            self._notes.append(f"--one_frame_auto_resize: {height}x{width} from {self.controls[0]}")
        ignored = [flag for flag, given in (
            ("--end_image_path", opts.end_image_path), ("--f1", opts.f1), ("--video_sections", opts.video_sections),
            ("--latent_paddings", opts.latent_paddings), ("--bulk_decode", opts.bulk_decode), ("--decode", opts.decode),
            ("--video_seconds", "video_seconds" in opts.model_fields_set)) if given]
        if ignored:
            self._notes.append(f"Warning: {', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored in "
                              "one-frame mode (one frame is sampled from the control images)")
        self.opts = opts
        spec = opts.one_frame
        self.layout = one_frame_layout(
            opts.latent_window_size, len(self.controls), target_index=spec.target_index,
            control_index=spec.control_index, no_post=spec.no_post, no_2x=spec.no_2x, no_4x=spec.no_4x,
        )
        self.image0 = parse_section_values(opts.image_path)[0] if opts.image_path else None
        # An empty prompt is encoded as " ", as the reference does.
        self.prompt0 = positive_prompt(parse_section_values(opts.prompt)[0] if opts.prompt is not None else None)

    def notes(self) -> list[str]:
        """Ignored settings and odd inputs (black SigLIP image, unused alpha, tiny images)."""
        o, out = self.opts, list(self._notes)
        height, width = o.video_size
        kisekae = bool(getattr(o, "start", None) and o.control_image_path == [o.start, o.reference])
        masks = mask_paths(o)
        for i, (ctrl, mask) in enumerate(zip(self.controls, masks, strict=False)):
            if ctrl is None:
                continue
            flag = ("--start", "--reference")[i] if kisekae else "--control_image_path"
            if mask is None:
                alpha = "mask"  # the alpha channel is this control image's mask
            else:
                mask_flag = ("--start-mask", "--reference-mask")[i] if kisekae and not o.control_image_mask_path \
                    else "--control_image_mask_path"
                alpha = f"it is not used, {mask_flag} {mask} is this image's mask"
            out += image_notes(flag, ctrl, width, height, alpha=alpha)
        if self.image0 is None:
            out.append(BLACK_SIGLIP)
        elif self.image0 not in self.controls:  # else said above for the control image
            out += image_notes("--image_path", self.image0, width, height)
        return out

    def vae_images(self) -> list[str | None]:
        return [c for c in self.controls if c is not None]

    def siglip_images(self) -> list[str | None]:
        return [self.image0]

    def prompts(self) -> list[str]:
        return [self.prompt0]

    def metadata(self, latent: torch.Tensor) -> dict[str, str] | None:
        return run_metadata(self.opts, self.seed, latent, {
            "control_image_mask_path": mask_paths(self.opts), "target_index": self.layout.latent_index,
            "clean_indices": list(self.layout.clean_indices),
        })

    def clean_latents(self, cond: Conditioning) -> torch.Tensor:
        """Control latents times their masks (mask file, else alpha channel), then the zero post latent."""
        from framepack_cli.io.images import load_image, load_mask, mask_to_latent

        height, width = self.opts.video_size
        lh, lw = height // 8, width // 8
        clean = [cond.latents[c] if c is not None else torch.zeros(1, LATENT_CHANNELS, 1, lh, lw)
                 for c in self.controls]
        for i, (ctrl, mask) in enumerate(zip(self.controls, mask_paths(self.opts) or [None], strict=False)):
            if mask is not None:
                clean[i] = clean[i] * load_mask(mask, width, height)
            elif ctrl is not None:
                alpha = load_image(ctrl)[1]
                if alpha is not None:
                    clean[i] = clean[i] * mask_to_latent(alpha, width, height)
        if self.layout.has_post:
            clean.append(torch.zeros(1, LATENT_CHANNELS, 1, lh, lw))
        return torch.cat(clean, dim=2)

    def sample(self, dit, cond: Conditioning, device, dtype, sink: ProgressSink) -> torch.Tensor:
        o, lay = self.opts, self.layout
        height, width = o.video_size
        lh, lw = height // 8, width // 8
        sink.message(f"Seed {self.seed}, one frame at index {lay.latent_index}, clean latents at "
                     f"{list(lay.clean_indices)}, {height}x{width}, {o.infer_steps} steps")
        caches = JobStepCache(o, self.seed)
        caches.start(sink)
        context = {
            "latent_indices": torch.tensor([[lay.latent_index]]),
            "clean_latents": self.clean_latents(cond), "clean_latent_indices": torch.tensor([lay.clean_indices]),
            "clean_latents_2x": None if lay.indices_2x is None else torch.zeros(1, LATENT_CHANNELS, 2, lh, lw),
            "clean_latent_2x_indices": None if lay.indices_2x is None else torch.tensor([lay.indices_2x]),
            "clean_latents_4x": None if lay.indices_4x is None else torch.zeros(1, LATENT_CHANNELS, 16, lh, lw),
            "clean_latent_4x_indices": None if lay.indices_4x is None else torch.tensor([lay.indices_4x]),
        }
        model_fn = make_model_fn(
            dit, positive=to_device(cond.texts[self.prompt0], device, dtype),
            negative=to_device(cond.negative, device, dtype) if cond.negative is not None else None,
            image_embeddings=cond.embeddings[self.image0], guidance_scale=o.guidance_scale,
            guidance_rescale=o.guidance_rescale, embedded_cfg_scale=o.embedded_cfg_scale, context=context,
            dtype=dtype, device=device, step_cache=(step_cache := caches.section()),
        )
        generator = torch.Generator("cpu").manual_seed(self.seed)
        noise = torch.randn((1, LATENT_CHANNELS, 1, lh, lw), generator=generator, dtype=torch.float32)
        sigmas = flow_sigmas(o.infer_steps, flow_mu(noisy_token_count(1, lh, lw), o.flow_shift))
        sink.start_sections(1)
        sink.start_section(0, 1, "one frame")
        with oom_guard(f"sampling the frame at {height}x{width}", device, advice("sampling", device, o)):
            out = sample_unipc(model_fn, noise.to(device), sigmas,
                               callback=lambda d: sink.step(d["i"] + 1, o.infer_steps)).float().cpu()
        sink.section_output(out[0])  # --preview
        sink.end_section()
        caches.end_section(step_cache, sink, "one frame")
        caches.finish(sink)
        return out[0].contiguous()
