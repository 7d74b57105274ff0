"""TeaCache / MagCache policies and the per-section step cache, with injected signals (no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from framepack_cli.errors import FramepackError
from framepack_cli.models.step_cache import (
    DEFAULT_MAG_RATIOS,
    TEACACHE_POLY,
    Calibration,
    MagCachePolicy,
    SectionCache,
    StepCache,
    StepCacheSettings,
    TeaCachePolicy,
    parse_mag_ratios,
    resample_ratios,
    settings_from_options,
    teacache_rescale,
)


def opts(**kw):
    base = dict(teacache_thresh=None, magcache_mag_ratios=None, magcache_calibration=False, magcache_threshold=0.24,
                magcache_k=6, magcache_retention_ratio=0.2)
    base.update(kw)
    return SimpleNamespace(**base)


def test_builtin_ratios_are_the_references_50():
    assert len(DEFAULT_MAG_RATIOS) == 50 and DEFAULT_MAG_RATIOS[0] == 1.0 and DEFAULT_MAG_RATIOS[-1] == 0.76592


def test_resampling_is_nearest_index_with_half_to_even_rounding():
    # The reference's example: 25 of 50 -> 0,2,...,24,27,29,...,49 (12.5 -> 12, 25.5 rounds... half to even).
    got = resample_ratios(list(range(50)), 25)
    assert got == [*range(0, 25, 2), *range(27, 50, 2)]
    for n in (1, 2, 7, 25, 30, 49, 50, 64):
        want = np.array(range(50))[np.round(np.arange(n) * (49 / (n - 1))).astype(int)] if n > 1 else [49]
        assert resample_ratios(list(range(50)), n) == list(want)


def test_teacache_polynomial_matches_numpy_poly1d():
    p = np.poly1d(TEACACHE_POLY)
    for x in (0.0, 0.013, 0.05, 0.1, 0.37, 1.5):
        assert teacache_rescale(x) == float(p(x))


def test_parse_ratios_zero_list_and_file(tmp_path):
    assert parse_mag_ratios("0") == DEFAULT_MAG_RATIOS
    assert parse_mag_ratios("1.0, 1.1,0.9") == (1.0, 1.1, 0.9)
    f = tmp_path / "r.txt"
    f.write_text("# comment 1,2\n1.00000,1.20000\n0.80000\n")
    assert parse_mag_ratios(str(f)) == (1.0, 1.2, 0.8)


@pytest.mark.parametrize("value, message", [
    ("1.0,abc", "--magcache_mag_ratios: '1.0,abc' is neither a comma-separated list of numbers nor an existing file"),
    ("/nope/r.txt", "--magcache_mag_ratios: '/nope/r.txt' is neither a comma-separated list of numbers nor an "
                    "existing file"),
    ("1.0,-0.5", "--magcache_mag_ratios: ratio -0.5 is not a positive number"),
])
def test_bad_ratios_are_one_line(value, message):
    with pytest.raises(FramepackError) as e:
        parse_mag_ratios(value)
    assert e.value.message == message


def test_ratios_file_without_numbers(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("# only a comment\nhello\n")
    with pytest.raises(FramepackError) as e:
        parse_mag_ratios(str(f))
    assert e.value.message == f"--magcache_mag_ratios: {f} holds no comma-separated list of numbers"


def test_settings_from_options():
    assert settings_from_options(opts()) is None
    assert settings_from_options(opts(teacache_thresh=0.15)) == StepCacheSettings("tea", tea_thresh=0.15)
    s = settings_from_options(opts(magcache_mag_ratios="0", magcache_threshold=0.1, magcache_k=3,
                                   magcache_retention_ratio=0.3))
    assert (s.kind, s.mag_threshold, s.mag_k, s.mag_retention, s.calibration) == ("mag", 0.1, 3, 0.3, False)
    assert settings_from_options(opts(magcache_calibration=True)).calibration
    with pytest.raises(FramepackError) as e:
        settings_from_options(opts(teacache_thresh=0.1, magcache_mag_ratios="0"))
    assert e.value.message == "--teacache_thresh and --magcache_mag_ratios: only one step cache at a time"


def decisions(policy, n, signal=None):
    return [policy.decide(i, (lambda i=i: signal[i]) if signal is not None else None) for i in range(n)]


def test_teacache_first_and_last_always_computed_and_threshold():
    n = 8
    # rel-L1 0 every step: P(0) = 0.0961... accumulates; 0.15 -> compute every second step.
    const = [torch.ones(2, 3)] * n
    assert decisions(TeaCachePolicy(0.15, n), n, const) == [True, False, True, False, True, False, True, True]
    assert decisions(TeaCachePolicy(0.0, n), n, const) == [True] * n
    assert decisions(TeaCachePolicy(100.0, n), n, const) == [True] + [False] * (n - 2) + [True]


def test_teacache_rel_l1_signal():
    # A 10% change each step: P(0.1) ~ 0.129; threshold 0.2 -> compute every second step.
    sig = [torch.full((4,), 1.1**i) for i in range(6)]
    rel = 0.1
    assert teacache_rescale(rel) < 0.2 < 2 * teacache_rescale(rel)
    assert decisions(TeaCachePolicy(0.2, 6), 6, sig) == [True, False, True, False, True, True]


def test_magcache_schedule():
    s = StepCacheSettings("mag", mag_ratios=(1.1,) * 10, mag_threshold=0.24, mag_k=6, mag_retention=0.2)
    # first = max(int(0.2*10), 1) = 2; then skip (err .1), compute (err .31 > .24), ...; last step computed.
    assert decisions(MagCachePolicy(s, 10), 10) == [True, True, False, True, False, True, False, True, False, True]
    k1 = StepCacheSettings("mag", mag_ratios=(1.0001,) * 10, mag_threshold=0.24, mag_k=2, mag_retention=0.0)
    # retention 0 still computes step 0; K=2 -> at most two skips in a row.
    assert decisions(MagCachePolicy(k1, 10), 10) == [True, False, False, True, False, False, True, False, False, True]
    zero = StepCacheSettings("mag", mag_ratios=(1.0,) * 10, mag_threshold=0.0)
    assert decisions(MagCachePolicy(zero, 10), 10) == [True] * 10  # threshold 0 never skips, even at ratio 1
    calib = StepCacheSettings("mag", calibration=True)
    assert decisions(MagCachePolicy(calib, 10), 10) == [True] * 10


def test_magcache_resamples_builtin_ratios_to_the_step_count():
    p = MagCachePolicy(StepCacheSettings("mag"), 25)
    assert p.ratios == [DEFAULT_MAG_RATIOS[i] for i in [*range(0, 25, 2), *range(27, 50, 2)]]


def test_one_decision_per_step_for_both_cfg_calls_and_separate_residuals():
    """The positive call decides (the probe runs once per step); the negative call follows with its own residual."""
    s = StepCacheSettings("mag", mag_ratios=(1.01,) * 6, mag_threshold=0.5, mag_k=6, mag_retention=0.0)
    cache = StepCache(s, 6)
    probes, runs = [], []

    def blocks(branch):
        def run(x):
            runs.append((cache.step, branch))
            return x * 2 + (1 if branch == "pos" else -1)
        return run

    outs = {"pos": [], "neg": []}
    for _ in range(6):
        cache.begin_step()
        for branch in ("pos", "neg"):
            x = torch.full((1, 2, 3), float(cache.step))
            outs[branch].append(cache.run(branch, x, blocks(branch), lambda x=x: probes.append(cache.step) or x))
    # MagCache never probes; steps 1-4 skip (err accumulates 0.01, 0.03, ... <= 0.5), 0 and 5 computed.
    assert probes == []
    assert cache.computed == [0, 5] and cache.skipped == 4
    assert runs == [(0, "pos"), (0, "neg"), (5, "pos"), (5, "neg")]
    # Step 0 residuals: pos x*2+1 - x = 0+1 -> 1; neg -> -1. Skipped step 3: x + residual of its own branch.
    assert torch.equal(outs["pos"][3], torch.full((1, 2, 3), 4.0))
    assert torch.equal(outs["neg"][3], torch.full((1, 2, 3), 2.0))


def test_teacache_probes_once_per_step_with_cfg():
    cache = StepCache(StepCacheSettings("tea", tea_thresh=0.15), 4)
    probes = []
    for _ in range(4):
        cache.begin_step()
        for branch in ("pos", "neg"):
            cache.run(branch, torch.ones(1, 2, 3), lambda x: x + 1,
                      lambda: probes.append(cache.step) or torch.ones(1, 2, 3))
    assert probes == [0, 1, 2, 3]
    assert cache.computed == [0, 2, 3]


def test_calibration_records_positive_ratios_and_formats_like_the_reference():
    cache = StepCache(StepCacheSettings("mag", calibration=True), 3)
    for _ in range(3):
        cache.begin_step()
        for branch, f in (("pos", 2.0), ("neg", 3.0)):
            cache.run(branch, torch.ones(1, 4, 8), lambda x, f=f: x + (f ** cache.step), lambda: None)
    c = cache.calibration
    assert c.norm_ratio == [2.0, 2.0] and c.norm_std == [0.0, 0.0] and c.cos_dis == [0.0, 0.0]
    assert c.line() == "1.00000,2.00000,2.00000"
    assert Calibration(norm_ratio=[1.069714]).line() == "1.00000,1.06971"


def test_section_memo_is_by_tensor_identity():
    fc = SectionCache().branch("pos")
    a, calls = torch.ones(2), []
    fn = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert fc.memo(("k", id(a)), (a,), fn) == 1
    assert fc.memo(("k", id(a)), (a,), fn) == 1
    b = torch.ones(2)
    assert fc.memo(("k", id(b)), (b,), fn) == 2
    assert SectionCache().branch("pos").memo(("k", id(a)), (a,), fn) == 3  # a new section recomputes
