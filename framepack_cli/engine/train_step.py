"""One training micro-step: noise, timesteps, the DiT call and the flow-matching loss.

RNG draws (the only random numbers of the objective; dropout inside the network uses torch's global RNG,
which a state saves and a resume restores):

for every sample of a micro-batch, a CPU `torch.Generator` is seeded from
`sha256(f"{seed}:{step}:{item_key}:{k}")` (`step` = optimizer steps done before this one, so every
micro-batch of one gradient-accumulation group shares it; `item_key` = the sample's dataset index and latent
cache file name; `k` = how many earlier samples of the same micro-batch had the same key) and draws, in this
order,
1. the noise, `randn` of the sample's latent shape;
2. the timestep draws of `framepack_cli.sampling.train_timesteps.sample_timesteps` for a batch of one
   (their order is listed there; with `--num_timestep_buckets` the pre-drawn bucket value is used).

So the objective of a sample depends only on the seed, the micro-step and the sample itself: not on the
batch it shares, the process it runs in or whether the run was resumed: two processes with one sample each,
or two accumulated micro-batches of one sample, see exactly what one process sees with both samples in one
batch.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from framepack_cli.sampling.train_timesteps import TimestepSettings, loss_weighting, noisy_input_at, sample_timesteps

LATENT_CHANNELS = 16
HISTORY_FRAMES = {"2x": 2, "4x": 16}  # frames of the 2x / 4x clean latents the DiT expects


def sample_seed(seed: int, step: int, item_key: str, occurrence: int) -> int:
    """The per-sample generator seed (see the module doc)."""
    digest = hashlib.sha256(f"{seed}:{step}:{item_key}:{occurrence}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, float32, with grad
    timesteps: torch.Tensor  # (B,) fed to the DiT


def draw_noise_and_timesteps(latents: torch.Tensor, item_keys: list[str], *, seed: int, step: int,
                             settings: TimestepSettings, pool: list[float] | None,
                             on_warning: Callable[[str], None] | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise shaped like `latents` in float32 on the CPU, timesteps (B,) float32 on the CPU)."""
    seen: Counter[str] = Counter()
    noises, timesteps = [], []
    shape = tuple(latents.shape[1:])
    for i, key in enumerate(item_keys):
        g = torch.Generator(device="cpu").manual_seed(sample_seed(seed, step, key, seen[key]))
        seen[key] += 1
        noises.append(torch.randn(shape, generator=g, dtype=torch.float32))
        uniform = None if pool is None else torch.tensor([float(pool[i])], dtype=torch.float32)
        ts, _ = sample_timesteps((1, *shape), settings, uniform_values=uniform, generator=g, device="cpu",
                                 draw_device="cpu", on_warning=on_warning)
        timesteps.append(ts.reshape(1))
    return torch.stack(noises), torch.cat(timesteps)


def dit_kwargs(batch: dict[str, Any], noisy: torch.Tensor, device: torch.device, dtype: torch.dtype
               ) -> dict[str, Any]:
    """The DiT's conditioning from a batch: clean latents and indices from the cache; where a one-frame cache
    has 2x/4x indices but no latents, zeros of the expected frame count (as the reference)."""
    b, _, _, h, w = noisy.shape

    def on(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, dtype) if x.is_floating_point() else x.to(device)

    out: dict[str, Any] = {
        "encoder_hidden_states": on(batch["llama_vec"]),
        "encoder_attention_mask": batch["llama_attention_mask"].to(device),
        "pooled_projections": on(batch["clip_l_pooler"]),
        "latent_indices": batch["latent_indices"].to(device),
        "clean_latents": on(batch["latents_clean"]),
        "clean_latent_indices": batch["clean_latent_indices"].to(device),
        "image_embeddings": on(batch["image_embeddings"]),
    }
    for scale, frames in HISTORY_FRAMES.items():
        idx = batch.get(f"clean_latent_{scale}_indices")
        lat = batch.get(f"latents_clean_{scale}")
        if idx is None:
            out[f"clean_latents_{scale}"], out[f"clean_latent_{scale}_indices"] = None, None
            continue
        if lat is None:
            lat = torch.zeros((b, LATENT_CHANNELS, frames, h, w), dtype=dtype)
        out[f"clean_latents_{scale}"] = on(lat)
        out[f"clean_latent_{scale}_indices"] = idx.to(device)
    return out


def training_step(dit, batch: dict[str, Any], *, seed: int, step: int, settings: TimestepSettings,
                  guidance_scale: float, device: torch.device, dtype: torch.dtype,
                  autocast_dtype: torch.dtype | None, on_warning: Callable[[str], None] | None = None
                  ) -> StepOutput:
    """The loss of one micro-batch (backward is the caller's).

    `dtype`: the DiT's input dtype (float32 on the CPU, the DiT's dtype otherwise); `autocast_dtype`: the
    mixed precision (None = off). Loss = mean(weight * (pred.float() - (noise - x0))**2) in float32.
    """
    x0 = batch["latents"].float()
    noise, timesteps = draw_noise_and_timesteps(
        x0, list(batch["item_keys"]), seed=seed, step=step, settings=settings,
        pool=batch.get("timesteps"), on_warning=on_warning)
    sigma_mode = settings.sigma_mode
    x0, noise = x0.to(device), noise.to(device)
    noisy = noisy_input_at(x0, noise, timesteps, sigma_mode=sigma_mode)
    b = x0.shape[0]
    guidance = torch.full((b,), float(guidance_scale) * 1000.0, device=device, dtype=dtype)
    kwargs = dit_kwargs(batch, noisy, device, dtype)
    ts = timesteps.to(device, dtype)
    if autocast_dtype is not None:
        with torch.autocast(device.type, dtype=autocast_dtype):
            pred = dit(hidden_states=noisy.to(dtype), timestep=ts, guidance=guidance, **kwargs)
    else:
        pred = dit(hidden_states=noisy.to(dtype), timestep=ts, guidance=guidance, **kwargs)
    if isinstance(pred, (tuple, list)):
        pred = pred[0]
    target = noise - x0
    err = (pred.float() - target) ** 2
    weight = loss_weighting(settings.weighting_scheme, timesteps.to(device), n_dim=err.ndim,
                            shift=settings.schedule_shift)
    if weight is not None:
        err = err * weight
    return StepOutput(err.mean(), timesteps)
