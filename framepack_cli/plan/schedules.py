"""Flow-matching sigma schedules (pure).

FramePack samples with the time-shifted flow schedule of the reference: `t = linspace(1, 0, steps+1)`,
`sigma = e^mu / (e^mu + (1/t - 1))` (= `s*t / (1 + (s-1)*t)` with shift `s = e^mu`). `mu` is `ln(flow_shift)`
when a shift is given, else it grows with the number of noisy tokens, capped at `ln 7`.
"""

from __future__ import annotations

import math

# Resolution-dependent shift of the reference: mu is linear in the noisy token count between
# (256 tokens, 0.5) and (4096 tokens, 1.15), capped at ln(7).
_SEQ_LO, _MU_LO, _SEQ_HI, _MU_HI = 256, 0.5, 4096, 1.15
_MU_MAX = math.log(7.0)


def noisy_token_count(latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Tokens of the noisy latent after the 1x2x2 patch embedding."""
    return latent_frames * latent_height * latent_width // 4


def flow_mu(seq_len: int, flow_shift: float | None = None) -> float:
    """`ln(flow_shift)` if given, else the reference's resolution-dependent value."""
    if flow_shift is not None:
        return math.log(flow_shift)
    k = (_MU_HI - _MU_LO) / (_SEQ_HI - _SEQ_LO)
    b = _MU_LO - _SEQ_LO * k
    return min(k * seq_len + b, _MU_MAX)


def flow_sigmas(num_steps: int, mu: float) -> list[float]:
    """`num_steps + 1` sigmas from 1 down to exactly 0 (the last one is never evaluated by the sampler)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    e_mu = math.exp(mu)
    out = []
    for i in range(num_steps + 1):
        t = 1.0 - i / num_steps
        out.append(0.0 if t <= 0.0 else e_mu / (e_mu + (1.0 / t - 1.0)))
    return out
