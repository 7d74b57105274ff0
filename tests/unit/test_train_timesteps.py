"""Training timestep sampling / noisy input against the golden statistics and steps (golden README 9.1-9.3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from framepack_cli.sampling.train_timesteps import (
    TIMESTEP_SAMPLING_MODES,
    TimestepSettings,
    loss_weighting,
    noisy_input_and_timesteps,
    noisy_input_at,
    sample_timesteps,
    schedule,
    shift_mu,
    timesteps_off_schedule,
    velocity_target,
)

TRAIN = Path("/work/shared/golden/train")
pytestmark = pytest.mark.skipif(not (TRAIN / "timesteps.json").is_file(), reason="golden train/ not available")


def _golden(name: str):
    from safetensors.torch import load_file

    return json.loads((TRAIN / f"{name}.json").read_text()), load_file(str(TRAIN / f"{name}.safetensors"))


def _params(m: dict) -> TimestepSettings:
    keys = ("discrete_flow_shift", "sigmoid_scale", "weighting_scheme", "logit_mean", "logit_std", "mode_scale")
    return TimestepSettings(
        timestep_sampling=m["timestep_sampling"],
        **{k: m[k] for k in keys},
        min_timestep=m["min_timestep"],
        max_timestep=m["max_timestep"],
    )


@pytest.fixture(scope="module")
def golden_timesteps():
    return _golden("timesteps")


def _draw_golden_mode(meta: dict, m: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """20000 draws in chunks of 1000 with the global RNG seeded once, as the golden was made."""
    shape = meta["latent_shape_for_draws"]
    chunk = meta["draw_chunk"]
    torch.manual_seed(m["global_torch_seed"])
    ts, tt = [], []
    for _ in range(meta["n_draws"] // chunk):
        timesteps, t = sample_timesteps((chunk, *shape[1:]), _params(m))
        ts.append(timesteps)
        tt.append(t)
    return torch.cat(ts), torch.cat(tt)


def test_every_golden_mode_reproduces_quantiles_and_first_draws(golden_timesteps):
    meta, gold = golden_timesteps
    levels = torch.linspace(0, 1, 101, dtype=torch.float64)
    modes_seen = set()
    for name, m in meta["modes"].items():
        modes_seen.add(m["timestep_sampling"])
        ts, tt = _draw_golden_mode(meta, m)
        assert ts.shape == (meta["n_draws"],)
        # Same torch RNG call order as the reference: the first draws are bit-identical.
        assert torch.equal(ts[:16], gold[f"{name}.first16_timesteps"]), name
        q = torch.quantile(ts.double(), levels).float()
        qt = torch.quantile(tt.double(), levels).float()
        gq, gqt = gold[f"{name}.timestep_quantiles"], gold[f"{name}.t_quantiles"]
        # README tolerance at interior levels, and in fact far tighter everywhere (same draws).
        assert (q[1:-1] - gq[1:-1]).abs().max().item() < 0.02 * 1000, name
        assert (q - gq).abs().max().item() < 1e-2, name
        assert (qt - gqt).abs().max().item() < 1e-5, name
        assert ts.double().mean().item() == pytest.approx(m["mean_timestep"], abs=1e-3), name
        assert ts.min().item() == pytest.approx(m.get("min_timestep_drawn", ts.min().item()), abs=1e-3), name
    # every mode the README table lists is covered (krea2_shift and ideogram4_shift are not in the golden)
    assert modes_seen == set(TIMESTEP_SAMPLING_MODES) - {"krea2_shift", "ideogram4_shift"}


def test_golden_mu_from_latent_shape(golden_timesteps):
    meta, _ = golden_timesteps
    h, w = meta["latent_shape_for_draws"][-2:]
    checked = 0
    for m in meta["modes"].values():
        if "mu" in m:
            mu = shift_mu(m["timestep_sampling"], h, w)
            assert mu == pytest.approx(m["mu"], rel=1e-12)
            assert math.exp(mu) == pytest.approx(m["shift_e_mu"], rel=1e-12)
            checked += 1
    assert checked == 5
    with pytest.raises(ValueError, match="no resolution-dependent shift"):
        shift_mu("shift", h, w)


@pytest.mark.parametrize("name", ["step_vanilla", "step_one_frame"])
def test_golden_training_step_noisy_input_and_target(name):
    meta, d = _golden(name)
    ts = meta["timestep_sampling"]
    x0, noise = d["in.latents"], d["in.noise"]
    sigma_mode = ts["timestep_sampling"] == "sigma"
    # the timestep drawn from the seeded global RNG is the golden's, and the noisy input is bit-identical
    torch.manual_seed(meta["global_torch_seed_before_timestep_draw"])
    r = noisy_input_and_timesteps(x0, noise, _params(ts))
    assert torch.equal(r.timesteps, d["in.timesteps"])
    assert r.timesteps.item() == pytest.approx(meta["timestep_value_fed_to_dit"], abs=1e-4)
    assert r.t.item() == pytest.approx(meta["t_or_sigma"], abs=1e-6)
    assert torch.equal(r.noisy_model_input, d["out.noisy_model_input"])
    # from the stored timestep value alone
    noisy = noisy_input_at(x0, noise, d["in.timesteps"], sigma_mode=sigma_mode)
    torch.testing.assert_close(noisy, d["out.noisy_model_input"], atol=1e-6, rtol=0)
    torch.testing.assert_close(velocity_target(x0, noise), d["out.target"], atol=1e-6, rtol=0)


def test_generator_is_deterministic_and_leaves_global_rng_alone():
    x0 = torch.zeros(8, 16, 1, 6, 8)
    for mode in TIMESTEP_SAMPLING_MODES:
        torch.manual_seed(0)
        before = torch.get_rng_state()
        a = noisy_input_and_timesteps(x0, x0, TimestepSettings(mode), generator=torch.Generator().manual_seed(7))
        b = noisy_input_and_timesteps(x0, x0, TimestepSettings(mode), generator=torch.Generator().manual_seed(7))
        assert torch.equal(torch.get_rng_state(), before), mode
        assert torch.equal(a.timesteps, b.timesteps), mode
        assert a.noisy_model_input.shape == x0.shape
        assert a.timesteps.shape == a.t.shape == (8,)


def test_sigma_mode_min_max_bound_the_index():
    x0 = torch.zeros(4000, 1)
    torch.manual_seed(3)
    r = noisy_input_and_timesteps(x0, x0, TimestepSettings(min_timestep=500))
    # the index is in [500, 1000) -> timesteps 1..500 (the reference's quirk)
    assert r.timesteps.max().item() <= 500 and r.timesteps.min().item() >= 1
    sigmas, sched = schedule()
    assert sched.shape == (1000,) and sched[0].item() == 1000 and sched[-1].item() == pytest.approx(1.0)
    assert set(r.timesteps.tolist()) <= set(sched.tolist())
    torch.testing.assert_close(r.timesteps, r.t * 1000, atol=1e-3, rtol=0)


def test_sigma_mode_applies_discrete_flow_shift():
    """The reference ignores --discrete_flow_shift in sigma mode (quirk 8.1); here k != 1 shifts the schedule."""
    x0, noise = torch.zeros(4000, 1), torch.ones(4000, 1)
    torch.manual_seed(3)
    r1 = noisy_input_and_timesteps(x0, noise, TimestepSettings(min_timestep=500))
    torch.manual_seed(3)
    r3 = noisy_input_and_timesteps(x0, noise, TimestepSettings(min_timestep=500, discrete_flow_shift=3.0))
    # the same index draws, then sigma' = k s / (1 + (k-1) s) of the same schedule entry
    s = r1.t
    expect = 3.0 * s / (1 + 2.0 * s)
    assert torch.equal(r3.t, expect)
    assert torch.equal(r3.timesteps, (expect * 1000).float())
    assert not torch.equal(r3.timesteps, r1.timesteps) and r3.t.mean() > r1.t.mean() + 0.1
    torch.testing.assert_close(r3.noisy_model_input.flatten(), r3.t)  # x_t = sigma' * noise + (1 - sigma') * x0
    # the shifted schedule itself: endpoints kept, monotone, sigma(0.5) = 0.75 for k = 3
    sig, ts = schedule(3.0)
    assert sig[0].item() == 1.0 and sig[-1].item() == 0.0 and sig[500].item() == pytest.approx(0.75)
    assert bool((sig[1:] < sig[:-1]).all()) and torch.equal(ts, (sig[:-1] * 1000).float())
    # k == 1 is the reference's unshifted schedule, bit for bit
    base = torch.linspace(1, 0, 1001)
    assert torch.equal(schedule(1.0)[0], base) and torch.equal(schedule()[1], (base[:-1] * 1000).float())
    # loss weighting finds the shifted sigmas exactly on the shifted schedule
    w = loss_weighting("sigma_sqrt", r3.timesteps[:8], shift=3.0)
    torch.testing.assert_close(w.flatten(), r3.t[:8] ** -2.0, rtol=1e-6, atol=0)
    assert not timesteps_off_schedule(r3.timesteps, shift=3.0) and timesteps_off_schedule(r3.timesteps)
    assert TimestepSettings(discrete_flow_shift=3.0).schedule_shift == 3.0
    assert TimestepSettings("shift", discrete_flow_shift=3.0).schedule_shift == 1.0  # continuous: own shift


def test_timestep_bucket_pool_matches_the_reference_pool():
    import random

    from framepack_cli.sampling.train_timesteps import TimestepBucketPool

    pool = TimestepBucketPool(4, random.Random(5))
    got = [pool.draw() for _ in range(8)]
    rng = random.Random(5)
    expect = []
    for _ in range(2):
        ranges = [(i * 0.25, (i + 1) * 0.25) for i in range(4)]
        rng.shuffle(ranges)
        for _ in range(4):
            a, b = ranges.pop()
            expect.append(rng.uniform(a, b))
    assert got == expect
    # every interval once per round of 4
    assert sorted(int(v * 4) for v in got[:4]) == [0, 1, 2, 3]
    v = TimestepBucketPool(3, random.Random(1)).values(5)
    assert v.shape == (5,) and v.dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2"):
        TimestepBucketPool(1)


def test_sigma_mode_mode_density_never_leaves_the_schedule(monkeypatch):
    # u0 == 0 gives u == 1 (index 1000), which the reference would crash on; clamped to the last entry.
    zeros = torch.zeros

    monkeypatch.setattr(torch, "rand", lambda size, **kw: zeros(size))
    timesteps, sigma = sample_timesteps((2, 1), TimestepSettings(weighting_scheme="mode", mode_scale=1.29))
    assert timesteps.tolist() == pytest.approx([1.0, 1.0]) and sigma.tolist() == pytest.approx([0.001, 0.001])


def test_continuous_min_max_rescale():
    x0 = torch.zeros(5000, 1)
    torch.manual_seed(1)
    r = noisy_input_and_timesteps(x0, x0, TimestepSettings("uniform", min_timestep=200, max_timestep=800))
    assert r.t.min().item() >= 0.2 and r.t.max().item() <= 0.8
    torch.testing.assert_close(r.timesteps, r.t * 1000 + 1)


def test_unknown_mode_and_scheme_are_refused():
    x0 = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="unknown timestep sampling 'foo'; choose one of sigma, uniform"):
        noisy_input_and_timesteps(x0, x0, TimestepSettings(timestep_sampling="foo"))
    with pytest.raises(ValueError, match="unknown weighting scheme 'baz'"):
        TimestepSettings(weighting_scheme="baz")
    with pytest.raises(ValueError, match="unknown weighting scheme 'bar'"):
        loss_weighting("bar", torch.tensor([500.0]))


def test_loss_weighting_schemes():
    ts = torch.tensor([1000.0, 545.0, 1.0])
    sigma = torch.tensor([1.0, 0.545, 0.001])
    for scheme in ("none", "logit_normal", "mode"):
        assert loss_weighting(scheme, ts) is None
    w = loss_weighting("sigma_sqrt", ts)
    assert w.shape == (3, 1, 1, 1, 1) and w.dtype == torch.float32
    torch.testing.assert_close(w.flatten(), sigma**-2.0, rtol=1e-4, atol=0)
    c = loss_weighting("cosmap", ts, n_dim=4)
    assert c.shape == (3, 1, 1, 1)
    torch.testing.assert_close(c.flatten(), 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)), rtol=1e-5, atol=0)
    # continuous-mode timesteps (1000 t + 1) use the nearest schedule entry, and are reported off-schedule
    off = torch.tensor([545.4, 1000.9])
    assert timesteps_off_schedule(off) and not timesteps_off_schedule(schedule()[1][[0, 455, 999]])
    torch.testing.assert_close(
        loss_weighting("sigma_sqrt", off).flatten(), torch.tensor([0.545, 1.0]) ** -2.0, rtol=1e-4, atol=0
    )


def test_bucket_uniform_values_replace_the_draws():
    x0 = torch.zeros(3, 16, 1, 32, 32)
    u = torch.tensor([0.25, 0.5, float(torch.special.ndtr(torch.tensor(1.0)))])
    before = torch.get_rng_state()
    ts, t = sample_timesteps(x0.shape, TimestepSettings("uniform"), uniform_values=u)
    torch.testing.assert_close(t, u)
    _, t = sample_timesteps(x0.shape, TimestepSettings("sigmoid", sigmoid_scale=2.0), uniform_values=u)
    z = torch.special.ndtri(u)
    torch.testing.assert_close(t, torch.sigmoid(2.0 * z), atol=1e-5, rtol=0)
    _, t = sample_timesteps(x0.shape, TimestepSettings("logsnr", logit_mean=-6, logit_std=2), uniform_values=u)
    torch.testing.assert_close(t, torch.sigmoid(-(-6 + 2 * z) / 2), atol=1e-5, rtol=0)
    _, t = sample_timesteps(x0.shape, TimestepSettings("shift", discrete_flow_shift=3.0), uniform_values=u)
    s = torch.sigmoid(z)
    torch.testing.assert_close(t, 3 * s / (1 + 2 * s), atol=1e-5, rtol=0)
    # ideogram4_shift: 32x32 latents = 512x512 pixels -> mean 0, t = sigmoid(1.5 * z)
    _, t = sample_timesteps(x0.shape, TimestepSettings("ideogram4_shift"), uniform_values=u)
    torch.testing.assert_close(t, torch.sigmoid(1.5 * z), atol=1e-5, rtol=0)
    assert torch.equal(torch.get_rng_state(), before)  # no draw made
    # sigma mode ignores them (it draws its own u on the CPU)
    torch.manual_seed(4)
    a, _ = sample_timesteps(x0.shape, uniform_values=u)
    torch.manual_seed(4)
    b, _ = sample_timesteps(x0.shape)
    assert torch.equal(a, b)
    # qinglong still draws the per-sample choice from the RNG, then uses the bucket values
    torch.manual_seed(4)
    _, t = sample_timesteps(x0.shape, TimestepSettings("qinglong_qwen"), uniform_values=u)
    torch.manual_seed(4)
    d = torch.rand(3)
    shift = math.exp(shift_mu("qinglong_qwen", 32, 32))
    expect = torch.where(d < 0.95, shift * s / (1 + (shift - 1) * s), torch.sigmoid(-(5.36 + z) / 2))
    torch.testing.assert_close(t, expect, atol=1e-5, rtol=0)


def test_preserve_distribution_shape_rejects_instead_of_rescaling():
    shape = (6, 16, 1, 4, 4)
    torch.manual_seed(11)
    ts, t = sample_timesteps(
        shape, TimestepSettings("uniform", min_timestep=300, max_timestep=600, preserve_distribution_shape=True)
    )
    torch.manual_seed(11)
    pool = torch.cat([torch.rand(6) for _ in range(40)])
    expect = pool[(pool >= 0.3) & (pool <= 0.6)][:6]
    torch.testing.assert_close(t, expect, atol=0, rtol=0)
    torch.testing.assert_close(ts, expect * 1000 + 1)


def test_preserve_distribution_shape_failure_warns_and_keeps_last_round():
    warnings: list[str] = []
    calls = []

    def buckets(n: int) -> torch.Tensor:
        calls.append(n)
        return torch.full((n,), 0.1)

    ts, t = sample_timesteps(
        (2, 1, 1, 4, 4),
        TimestepSettings("uniform", min_timestep=500, preserve_distribution_shape=True),
        bucket_values=buckets,
        on_warning=warnings.append,
    )
    assert len(calls) == 1000 and calls[0] == 2
    assert warnings == [
        "Could not sample 2 valid timesteps in 1000 loops (min_timestep 500, max_timestep None); "
        "using unfiltered timesteps"
    ]
    torch.testing.assert_close(t, torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(ts, torch.tensor([101.0, 101.0]))


def test_sigma_mode_mixes_with_sigma_in_the_given_dtype():
    x0 = torch.randn(4, 16, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(4, 16, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(9)
    r = noisy_input_and_timesteps(x0, noise, generator=g, dtype=torch.bfloat16)
    s = r.t.to(torch.bfloat16).view(-1, 1, 1, 1, 1)
    assert torch.equal(r.noisy_model_input, s * noise + (1.0 - s) * x0)
    assert r.noisy_model_input.dtype == torch.float32
    torch.testing.assert_close(r.timesteps, r.t * 1000, atol=1e-3, rtol=0)
