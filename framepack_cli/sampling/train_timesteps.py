"""Training timesteps and noisy inputs for flow-matching LoRA training (musubi's `--timestep_sampling`).

Pure tensor functions, parity with the reference trainer (`get_noisy_model_input_and_timesteps`,
`compute_density_for_timestep_sampling`, `compute_loss_weighting_for_sd3`). Convention: `x_t = (1-t)*x0 +
t*noise`, t = 1 is pure noise, the model predicts `noise - x0`.

Two families of modes:

- `sigma` (the reference's default): a discrete 1000-step schedule. `u` comes from the weighting scheme's
  density (`logit_normal`: sigmoid(N(logit_mean, logit_std)); `mode`: the SD3 mode density with
  `mode_scale`; anything else: U(0,1)); `idx = floor(u*(max-min)+min)` with min/max_timestep defaulting to
  0/1000 (they bound the *index*, so `min_timestep=500` selects timesteps 1..500);
  `timestep = float32(1000*sigmas[idx])` with `sigmas = linspace(1, 0, 1001)` (not exactly integral in
  float32, e.g. 544.99994); `x_t = sigma*noise + (1-sigma)*x0` with sigma in `dtype`.
  `discrete_flow_shift` k: the reference never applies it in this mode (its scheduler shifts only when
  sampling), so `--discrete_flow_shift` silently did nothing with the default sampling. Here k != 1 uses the
  shifted schedule `sigmas' = k*s / (1 + (k-1)*s)` of the same `s = linspace(1, 0, 1001)` (what the
  reference's scheduler holds once shifted); k == 1 is bit-identical to the reference.
- every other mode draws a continuous t in (0, 1), rescales `t <- t*(max-min)/1000 + min/1000` and feeds
  `timestep = 1000*t + 1`.

RNG draws, in this order, all of shape (B,) (B = latents.shape[0]); with `generator=None` they use torch's
global RNG exactly like the reference, so a trainer seeding the global RNG reproduces its timesteps:

- sigma: one draw: `torch.normal(logit_mean, logit_std)` for weighting `logit_normal`, else `torch.rand`.
  The reference makes this draw on the CPU.
- uniform, ideogram4_shift: `torch.rand`.  logsnr: `torch.normal(logit_mean, logit_std)`.
- sigmoid, shift, flux_shift, flux2_shift, qwen_shift, krea2_shift: `torch.randn`.
- qinglong_flux / qinglong_qwen: `torch.rand` (the per-sample choice d), then, each only if it selects at
  least one sample and with that many values: `torch.randn` (shift part, d < 0.79 resp. d < 0.95),
  `torch.normal(logit_mean, logit_std)` (flux only, 0.79 <= d < 0.90), `torch.normal(5.36, 1.0)`
  (d >= 0.90 resp. d >= 0.95).
- with `uniform_values` (dataset timestep buckets) only the qinglong choice d is drawn; with
  `preserve_distribution_shape` the mode's draws repeat once per rejection round (see `sample_timesteps`).

Draws happen on `draw_device` (default: the generator's device, or the CPU for `sigma` and the latents'
device otherwise, as the reference does: on a GPU the continuous modes use that device's RNG).
The noise itself is not drawn here (the reference draws it before, with `randn_like(latents)`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000

TIMESTEP_SAMPLING_MODES = (
    "sigma",
    "uniform",
    "sigmoid",
    "shift",
    "flux_shift",
    "flux2_shift",
    "qwen_shift",
    "krea2_shift",
    "ideogram4_shift",
    "logsnr",
    "qinglong_flux",
    "qinglong_qwen",
)
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "cosmap", "sigma_sqrt")

# Qinglong mixtures: the second log-SNR component's fixed mean/std.
_QINGLONG_LOGSNR2 = (5.36, 1.0)
_PRESERVE_MAX_ROUNDS = 1000


@dataclass(frozen=True)
class TimestepSettings:
    """The run's timestep options (`--timestep_sampling` and friends), plain values; the engine builds it from
    the options. Per-batch inputs (bucket values, RNG, devices) stay arguments of the functions."""

    timestep_sampling: str = "sigma"
    discrete_flow_shift: float = 1.0
    sigmoid_scale: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    min_timestep: float | None = None
    max_timestep: float | None = None
    preserve_distribution_shape: bool = False

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLING_MODES:
            raise ValueError(
                f"unknown timestep sampling {self.timestep_sampling!r}; "
                f"choose one of {', '.join(TIMESTEP_SAMPLING_MODES)}"
            )
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"unknown weighting scheme {self.weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}"
            )

    @property
    def sigma_mode(self) -> bool:
        return self.timestep_sampling == "sigma"

    @property
    def schedule_shift(self) -> float:
        """The shift of the discrete schedule: `discrete_flow_shift` in `sigma` mode, else 1 (unshifted)."""
        return self.discrete_flow_shift if self.sigma_mode else 1.0


class TimestepBucketPool:
    """The reference trainer's `--num_timestep_buckets` pool: K equal intervals of [0, 1), shuffled; each value
    pops one interval and draws uniformly inside it; refilled (and reshuffled) when empty. Python's `random`
    (the reference's global one by default), so a seeded trainer reproduces the reference's values."""

    def __init__(self, num_buckets: int, rng: random.Random | None = None) -> None:
        if num_buckets < 2:
            raise ValueError(f"num_buckets must be at least 2, got {num_buckets}")
        self.num_buckets = num_buckets
        self._rng = rng if rng is not None else random  # the module's functions use its global generator
        self._pool: list[tuple[float, float]] = []

    def draw(self) -> float:
        if not self._pool:
            size = 1.0 / self.num_buckets
            self._pool = [(i * size, (i + 1) * size) for i in range(self.num_buckets)]
            self._rng.shuffle(self._pool)
        a, b = self._pool.pop()
        return self._rng.uniform(a, b)

    def values(self, n: int) -> torch.Tensor:
        """`n` draws as a float32 tensor (B,): the `uniform_values` / `bucket_values` of the functions below."""
        return torch.tensor([self.draw() for _ in range(n)], dtype=torch.float32)


@dataclass(frozen=True)
class NoisyInput:
    """One batch: the DiT input, the timestep values fed to the DiT (B,) and the interpolation weight (B,)."""

    noisy_model_input: torch.Tensor
    timesteps: torch.Tensor
    t: torch.Tensor  # sigma in `sigma` mode, t = (timestep-1)/1000 otherwise


def _lin(x1: float, y1: float, x2: float, y2: float, x: float) -> float:
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return m * x + b


def shift_mu(mode: str, latent_h: int, latent_w: int) -> float:
    """The resolution-dependent mu of flux/flux2/qwen/krea2 shift (shift = e^mu) from the latent h, w."""
    packed = (latent_h // 2) * (latent_w // 2)
    if mode in ("flux_shift", "qinglong_flux"):
        return _lin(256, 0.5, 4096, 1.15, packed)
    if mode == "flux2_shift":
        return _lin(256, 0.5, 4096, 1.15, latent_h * latent_w)
    if mode in ("qwen_shift", "qinglong_qwen"):
        return _lin(256, 0.5, 8192, 0.9, packed)
    if mode == "krea2_shift":
        return _lin(256, 0.5, 6400, 1.15, packed)
    raise ValueError(f"timestep sampling {mode!r} has no resolution-dependent shift")


def _shifted_sigmoid(z: torch.Tensor, sigmoid_scale: float, shift: float) -> torch.Tensor:
    t = (z * sigmoid_scale).sigmoid()
    return (t * shift) / (1 + (shift - 1) * t)


def schedule(shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [1001], timesteps [1000] = float32(1000*sigmas[:-1])): the training schedule.

    sigmas = linspace(1, 0, 1001), shifted by `shift` (k*s/(1+(k-1)*s), float32) when it is not 1.
    """
    sigmas = torch.linspace(1, 0, NUM_TRAIN_TIMESTEPS + 1)
    if shift != 1.0:
        sigmas = (shift * sigmas) / (1 + (shift - 1) * sigmas)
    return sigmas, (sigmas[:-1] * NUM_TRAIN_TIMESTEPS).to(torch.float32)


def _uniform_to_normal(u: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Inverse normal CDF of a pre-drawn uniform value (clamped to [1e-7, 1-1e-7]), as the reference does."""
    u = torch.clamp(u, 1e-7, 1.0 - 1e-7)
    return mean + std * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def _ideogram4_t(u: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """Ideogram 4's resolution-aware logit-normal t (float64 inside, clamped), from uniform values."""
    uu = torch.clamp(u.to(torch.float64), 1e-7, 1.0 - 1e-7)
    mean = 0.5 * math.log((latent_h * 16 * latent_w * 16) / (512 * 512))
    t = torch.special.expit(mean + 1.5 * torch.special.ndtri(uu))
    t_min = 1.0 / (1 + math.exp(0.5 * 18.0))
    t_max = 1.0 / (1 + math.exp(0.5 * -15.0))
    return t.clamp(1.0 - t_max, 1.0 - t_min).to(dtype=u.dtype)


def sample_continuous_t(
    mode: str,
    batch_size: int,
    latent_hw: tuple[int, int],
    *,
    discrete_flow_shift: float = 1.0,
    sigmoid_scale: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    uniform_values: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """t in (0, 1) of shape (B,) for a continuous mode, before the min/max_timestep rescale (see module doc).

    `uniform_values` (B,) replace the draws (the dataset's timestep buckets): used as u directly, or mapped to
    normal values by the inverse CDF; the qinglong per-sample choice is still drawn from the RNG.
    """
    kw = {"generator": generator, "device": device}

    def rand(n: int, org: torch.Tensor | None) -> torch.Tensor:
        return torch.rand((n,), **kw) if org is None else org

    def randn(n: int, org: torch.Tensor | None) -> torch.Tensor:
        return torch.randn((n,), **kw) if org is None else _uniform_to_normal(org)

    def normal(mean: float, std: float, n: int, org: torch.Tensor | None) -> torch.Tensor:
        if org is not None:
            return _uniform_to_normal(org, mean, std)
        return torch.normal(mean=mean, std=std, size=(n,), **kw)

    org = uniform_values
    if mode == "uniform":
        return rand(batch_size, org)
    if mode == "sigmoid":
        return torch.sigmoid(sigmoid_scale * randn(batch_size, org))
    if mode == "ideogram4_shift":
        return _ideogram4_t(rand(batch_size, org), *latent_hw)
    if mode == "shift":
        return _shifted_sigmoid(randn(batch_size, org), sigmoid_scale, discrete_flow_shift)
    if mode in ("flux_shift", "flux2_shift", "qwen_shift", "krea2_shift"):
        shift = math.exp(shift_mu(mode, *latent_hw))
        return _shifted_sigmoid(randn(batch_size, org), sigmoid_scale, shift)
    if mode == "logsnr":
        return torch.sigmoid(-normal(logit_mean, logit_std, batch_size, org) / 2)
    if mode in ("qinglong_flux", "qinglong_qwen"):
        flux = mode == "qinglong_flux"
        d = torch.rand((batch_size,), **kw)
        mid = d < (0.79 if flux else 0.95)
        logsnr1 = (d >= 0.79) & (d < 0.9) if flux else torch.zeros_like(mid)
        logsnr2 = d >= (0.9 if flux else 0.95)
        t = torch.zeros((batch_size,), device=device)

        def part(mask: torch.Tensor) -> tuple[int, torch.Tensor | None]:
            return int(mask.sum().item()), (org[mask.to(org.device)] if org is not None else None)

        if mid.any():
            shift = math.exp(shift_mu(mode, *latent_hw))
            t[mid] = _shifted_sigmoid(randn(*part(mid)), sigmoid_scale, shift).to(t)
        if logsnr1.any():
            t[logsnr1] = torch.sigmoid(-normal(logit_mean, logit_std, *part(logsnr1)) / 2).to(t)
        if logsnr2.any():
            t[logsnr2] = torch.sigmoid(-normal(*_QINGLONG_LOGSNR2, *part(logsnr2)) / 2).to(t)
        return t
    raise ValueError(f"unknown timestep sampling {mode!r}; choose one of {', '.join(TIMESTEP_SAMPLING_MODES)}")


def sample_sigma_density(
    weighting_scheme: str,
    batch_size: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """u of shape (B,) for `sigma` mode: the SD3 density selected by the weighting scheme (see module doc)."""
    if weighting_scheme == "logit_normal":
        u = torch.normal(mean=logit_mean, std=logit_std, size=(batch_size,), generator=generator, device=device)
        return torch.sigmoid(u)
    u = torch.rand((batch_size,), generator=generator, device=device)
    if weighting_scheme == "mode":
        u = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def _view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def sample_timesteps(
    latent_shape: tuple[int, ...] | torch.Size,
    settings: TimestepSettings = TimestepSettings(),
    *,
    uniform_values: torch.Tensor | None = None,
    bucket_values: Callable[[int], torch.Tensor] | None = None,
    on_warning: Callable[[str], None] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    draw_device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps fed to the DiT, t) for a batch of latents shaped `latent_shape` (B, ..., h, w), both (B,) float32
    on `device`. t is sigma in `sigma` mode (timestep = 1000*sigma), else timestep = 1000*t + 1.
    The RNG draws and their order are listed in the module doc; `settings` are the run's timestep options.

    Continuous modes only (`sigma` ignores these three, like the reference):
    - `uniform_values` (B,): the batch's pre-drawn timestep-bucket values, used instead of the draws.
    - `settings.preserve_distribution_shape`: instead of rescaling into [min, max]/1000, rejection sampling: up to
      1000 rounds, each drawing a fresh batch (from `bucket_values(B)` when given, the trainer's own bucket
      pool, else the RNG) and keeping values with min <= t <= max until B are collected. If that fails, the
      reference warns (`on_warning`), makes one more draw it discards (with `uniform_values`) and keeps the
      last round's unfiltered t; kept for parity.
    """
    st = settings
    min_timestep, max_timestep = st.min_timestep, st.max_timestep
    batch_size = int(latent_shape[0])
    if st.sigma_mode:
        if draw_device is None:
            draw_device = generator.device if generator is not None else "cpu"
        u = sample_sigma_density(
            st.weighting_scheme,
            batch_size,
            logit_mean=st.logit_mean,
            logit_std=st.logit_std,
            mode_scale=st.mode_scale,
            generator=generator,
            device=draw_device,
        )
        t_min = min_timestep if min_timestep is not None else 0
        t_max = max_timestep if max_timestep is not None else NUM_TRAIN_TIMESTEPS
        # The reference would raise IndexError on idx 1000 (u == 1 exactly: mode density at u0 == 0).
        indices = (u * (t_max - t_min) + t_min).long().clamp(0, NUM_TRAIN_TIMESTEPS - 1).cpu()
        sigmas_all, timesteps_all = schedule(st.schedule_shift)
        return timesteps_all[indices].to(device), sigmas_all[indices].to(device)

    if draw_device is None:
        draw_device = generator.device if generator is not None else device

    def draw(org: torch.Tensor | None) -> torch.Tensor:
        return sample_continuous_t(
            st.timestep_sampling,
            batch_size,
            (int(latent_shape[-2]), int(latent_shape[-1])),
            discrete_flow_shift=st.discrete_flow_shift,
            sigmoid_scale=st.sigmoid_scale,
            logit_mean=st.logit_mean,
            logit_std=st.logit_std,
            uniform_values=None if org is None else org.to(draw_device, torch.float32),
            generator=generator,
            device=draw_device,
        ).to(device)

    t_min = (min_timestep if min_timestep is not None else 0) / 1000.0
    t_max = (max_timestep if max_timestep is not None else 1000.0) / 1000.0
    if not st.preserve_distribution_shape:
        t = draw(uniform_values)
        t = t * (t_max - t_min) + t_min
    else:
        kept: list[torch.Tensor] = []
        for _ in range(_PRESERVE_MAX_ROUNDS):
            t = draw(bucket_values(batch_size) if bucket_values is not None else None)
            for t_i in t:
                if t_min <= t_i <= t_max:
                    kept.append(t_i)
                if len(kept) == batch_size:
                    break
            if len(kept) == batch_size:
                break
        if len(kept) < batch_size:
            if on_warning is not None:
                on_warning(
                    f"Could not sample {batch_size} valid timesteps in {_PRESERVE_MAX_ROUNDS} loops "
                    f"(min_timestep {min_timestep}, max_timestep {max_timestep}); using unfiltered timesteps"
                )
            draw(uniform_values)  # the reference's discarded extra draw (keeps the RNG state in step)
        else:
            t = torch.stack(kept, dim=0)
    return t * 1000.0 + 1, t


def noisy_input_and_timesteps(
    latents: torch.Tensor,
    noise: torch.Tensor,
    settings: TimestepSettings = TimestepSettings(),
    *,
    uniform_values: torch.Tensor | None = None,
    bucket_values: Callable[[int], torch.Tensor] | None = None,
    on_warning: Callable[[str], None] | None = None,
    generator: torch.Generator | None = None,
    draw_device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> NoisyInput:
    """Draw timesteps for the batch `latents` (B, ..., h, w) (`sample_timesteps`) and mix `noise` in.

    `dtype` is the precision of sigma in `sigma` mode (the reference uses the DiT's dtype, e.g. bf16):
    `sigma*noise + (1-sigma)*x0`; continuous modes mix `(1-t)*x0 + t*noise` with t in float32.
    """
    timesteps, t = sample_timesteps(
        latents.shape,
        settings,
        uniform_values=uniform_values,
        bucket_values=bucket_values,
        on_warning=on_warning,
        generator=generator,
        device=latents.device,
        draw_device=draw_device,
    )
    if settings.sigma_mode:
        s = _view(t.to(dtype), latents.ndim)
        return NoisyInput(s * noise + (1.0 - s) * latents, timesteps, t)
    tv = _view(t, latents.ndim)
    return NoisyInput((1 - tv) * latents + tv * noise, timesteps, t)


def noisy_input_at(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, *, sigma_mode: bool
) -> torch.Tensor:
    """The DiT input for given timestep values: sigma = timestep/1000 in `sigma` mode, else t = (timestep-1)/1000."""
    t = timesteps.float() / 1000.0 if sigma_mode else (timesteps.float() - 1) / 1000.0
    tv = _view(t.to(latents.device), latents.ndim)
    if sigma_mode:
        return tv * noise + (1.0 - tv) * latents
    return (1 - tv) * latents + tv * noise


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching training target `noise - x0`."""
    return noise - latents


def timesteps_off_schedule(timesteps: torch.Tensor, *, shift: float = 1.0) -> bool:
    """True when some timestep is not on the 1000-step schedule (continuous modes): the reference then warns
    "Some timesteps are not in the schedule" every step with sigma_sqrt/cosmap and uses the nearest entry.
    `shift`: the schedule's shift (`TimestepSettings.schedule_shift`; 1 = the reference's unshifted one)."""
    _, sched = schedule(shift)
    ts = timesteps.detach().float().cpu().flatten()
    return bool((sched[None, :] == ts[:, None]).sum(dim=1).eq(0).any())


def loss_weighting(
    weighting_scheme: str,
    timesteps: torch.Tensor,
    *,
    n_dim: int = 5,
    dtype: torch.dtype = torch.float32,
    shift: float = 1.0,
) -> torch.Tensor | None:
    """Per-sample loss weight shaped (B, 1, ...) with `n_dim` dims, or None (no weighting).

    sigma is the schedule's sigma at the nearest schedule timestep (exact in `sigma` mode); the schedule is
    the *unshifted* one (as the reference) unless `shift` (`TimestepSettings.schedule_shift`) says otherwise:
    `sigma_sqrt`: sigma**-2; `cosmap`: 2/(pi*(1 - 2 sigma + 2 sigma^2)); none/logit_normal/mode: None.
    """
    if weighting_scheme not in ("sigma_sqrt", "cosmap"):
        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"unknown weighting scheme {weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}"
            )
        return None
    sigmas_all, sched = schedule(shift)
    ts = timesteps.detach().float().cpu().flatten()
    idx = torch.argmin((sched[None, :] - ts[:, None]).abs(), dim=1)
    sigma = sigmas_all.to(dtype)[idx].to(timesteps.device)
    sigma = sigma.view(-1, *([1] * (n_dim - 1)))
    if weighting_scheme == "sigma_sqrt":
        return (sigma**-2.0).float()
    return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
