"""Flow-matching UniPC sampler, variant bh1, data prediction in lambda = -log(sigma).

A pure function of a model callable (k-diffusion shape): `model_fn(x, sigma) -> x0` (the denoised estimate).
It reproduces the reference's sampler (FramePack's `sample_hunyuan` with its flow UniPC): order
min(3, steps-1), one model call per step, the final sigma = 0 is never evaluated and the result is the last
x0 prediction. Reference: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models" (2023), Algorithm 2 (B(h) = h for bh1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

ModelFn = Callable[[torch.Tensor, float], torch.Tensor]


def _coefficients(rs: list[float], h: float, order: int) -> tuple[list[float], list[float], float, float]:
    """(rho_predictor, rho_corrector, phi_1, B) for one step; `rs` has order-1 entries."""
    hh = -h
    phi_1 = math.expm1(hh)
    b_h = hh  # bh1
    r = [*rs, 1.0]
    h_phi_k = phi_1 / hh - 1.0
    fact = 1.0
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append([ri ** (k - 1) for ri in r])
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    rho_p: list[float] = []
    if order == 2:
        rho_p = [0.5]
    elif order > 2:
        a = torch.tensor([row[:-1] for row in rows[:-1]], dtype=torch.float64)
        rho_p = torch.linalg.solve(a, torch.tensor(b[:-1], dtype=torch.float64)).tolist()
    if order == 1:
        rho_c = [0.5]
    else:
        rho_c = torch.linalg.solve(
            torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        ).tolist()
    return rho_p, rho_c, phi_1, b_h


@torch.no_grad()
def sample_unipc(
    model_fn: ModelFn,
    x: torch.Tensor,
    sigmas: Sequence[float],
    *,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Sample with flow UniPC (bh1).

    Args:
        model_fn: `(x, sigma) -> x0`, the denoised estimate at noise level `sigma`.
        x: initial noise (the state at `sigmas[0]`, normally 1.0).
        sigmas: `steps + 1` decreasing values ending in 0.
        callback: called after each model evaluation with `{"i", "sigma", "x", "denoised"}`.

    Returns:
        The x0 prediction of the last evaluated step (sigma = sigmas[-2]).
    """
    sig = [float(s) for s in sigmas]
    steps = len(sig) - 1
    if steps < 1:
        raise ValueError(f"need at least 2 sigmas, got {len(sig)}")
    max_order = min(3, steps - 1)
    m = model_fn(x, sig[0])
    if callback is not None:
        callback({"i": 0, "sigma": sig[0], "x": x, "denoised": m})
    hist_m: list[torch.Tensor] = [m]
    hist_s: list[float] = [sig[0]]
    for i in range(1, steps):
        order = min(i, max_order)
        t = sig[i]
        s0, m0 = hist_s[-1], hist_m[-1]
        h = math.log(s0) - math.log(t)
        rs, ds = [], []
        for j in range(1, order):
            r_j = (math.log(s0) - math.log(hist_s[-(j + 1)])) / h
            rs.append(r_j)
            ds.append((hist_m[-(j + 1)] - m0) / r_j)
        rho_p, rho_c, phi_1, b_h = _coefficients(rs, h, order)
        x_lin = (t / s0) * x - phi_1 * m0
        x_pred = x_lin
        if ds:
            x_pred = x_lin - b_h * sum(rp * d for rp, d in zip(rho_p, ds, strict=False))
        m_t = model_fn(x_pred, t)
        corr = rho_c[-1] * (m_t - m0)
        if ds:
            corr = corr + sum(rc * d for rc, d in zip(rho_c[:-1], ds, strict=True))
        x = x_lin - b_h * corr
        if callback is not None:
            callback({"i": i, "sigma": t, "x": x_pred, "denoised": m_t})
        hist_m.append(m_t)
        hist_s.append(t)
        hist_m, hist_s = hist_m[-max_order:], hist_s[-max_order:]
    return hist_m[-1]
