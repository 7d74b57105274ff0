"""Sigma schedules and the flow UniPC sampler against the reference (golden unit/sampler_unipc)."""

from __future__ import annotations

import math

import pytest
import torch

from framepack_cli.plan.schedules import flow_mu, flow_sigmas, noisy_token_count
from framepack_cli.sampling.unipc import sample_unipc
from tests.conftest import golden

T, META = golden("unit/sampler_unipc")


@pytest.mark.parametrize("key", sorted(META["schedules"]))
def test_schedules_match_reference(key):
    c = META["schedules"][key]
    mu = flow_mu(c["seq_len"], c["flow_shift"])
    assert mu == pytest.approx(c["mu"], abs=1e-9)
    got = torch.tensor(flow_sigmas(c["steps"], mu), dtype=torch.float32)
    torch.testing.assert_close(got, T[f"schedule.{key}"], atol=1e-6, rtol=0)


def fake_model(x, sigma):
    return 0.9 * torch.tanh(x) + 0.05 * sigma


@pytest.mark.parametrize("run", sorted(META["runs"]))
def test_unipc_matches_reference(run):
    c = META["runs"][run]
    mu = flow_mu(c["seq_len"] or 0, None if c["seq_len"] else c["shift"])
    assert mu == pytest.approx(c["mu"], abs=1e-9)
    sigmas = flow_sigmas(c["steps"], mu)
    torch.testing.assert_close(torch.tensor(sigmas, dtype=torch.float32), T[f"sigmas.{run}"], atol=1e-6, rtol=0)
    calls = []

    def model(x, s):
        calls.append(s)
        return fake_model(x, s)

    out = sample_unipc(model, T["in.noise"].clone(), sigmas)
    torch.testing.assert_close(out, T[f"out.{run}"], atol=1e-5, rtol=1e-5)
    assert len(calls) == c["steps"]  # one call per step; sigma = 0 never evaluated
    assert 0.0 not in calls


def test_schedule_shape_and_shift_formula():
    s = flow_sigmas(25, math.log(7.0))
    assert len(s) == 26 and s[0] == 1.0 and s[-1] == 0.0
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    t = 1 - 3 / 25
    assert s[3] == pytest.approx(7 * t / (1 + 6 * t), rel=1e-12)
    assert noisy_token_count(9, 80, 80) == 14400
    assert flow_mu(10**6) == pytest.approx(math.log(7.0))  # capped


def test_one_step_returns_first_prediction():
    x = torch.randn(1, 4, 1, 2, 2)
    out = sample_unipc(fake_model, x, [1.0, 0.0])
    torch.testing.assert_close(out, fake_model(x, 1.0))


def test_callback_sees_every_step():
    seen = []
    sample_unipc(fake_model, torch.zeros(1, 2, 1, 2, 2), flow_sigmas(6, 1.0), callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(6))
