"""Step caches (TeaCache, MagCache) and the per-section memo of work that does not change between steps.

A step cache skips the DiT's block stack on some sampler steps: the image-stream tokens then get the residual
(block-stack output minus input) of the last computed step added instead. Which steps are skipped is a policy:

* TeaCache (FramePack's, `--teacache_thresh`): the rel-L1 change of the first block's modulated input since the
  previous step, rescaled by FramePack's polynomial, is accumulated; a step is computed when the sum reaches the
  threshold (then the sum restarts). The first and last steps are always computed.
* MagCache (musubi's, `--magcache_mag_ratios` / `--magcache_threshold` / `--magcache_k` /
  `--magcache_retention_ratio`): per-step residual magnitude ratios (calibrated once for a model) are multiplied
  up; a step is skipped while the accumulated error |1 - prod(ratios)| stays within the threshold and at most K
  steps in a row. The first `max(int(retention*n), 1)` steps and the last one are always computed.
  `--magcache_calibration` skips nothing and measures the ratios instead.

Differences from the reference, on purpose: the step counter counts sampler steps, not model calls; with real CFG
(two model calls per step) the decision is taken once per step, by the positive call, and applies to both calls,
and the positive and negative calls keep separate residuals (musubi advances its counter twice per step and lets
the two calls share one residual). A threshold of 0 never skips (bit-identical to no cache).

Everything here is plain Python + torch tensor arithmetic, testable on the CPU without a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# The reference's built-in ratios (MagCache for HunyuanVideo, 50 steps).
DEFAULT_MAG_RATIOS: tuple[float, ...] = (
    1.0, 1.06971, 1.29073, 1.11245, 1.09596, 1.05233, 1.01415, 1.05672, 1.00848, 1.03632, 1.02974, 1.00984,
    1.03028, 1.00681, 1.06614, 1.05022, 1.02592, 1.01776, 1.02985, 1.00726, 1.03727, 1.01502, 1.00992, 1.03371,
    0.9976, 1.02742, 1.0093, 1.01869, 1.00815, 1.01461, 1.01152, 1.03082, 1.0061, 1.02162, 1.01999, 0.99063,
    1.01186, 1.0217, 0.99947, 1.01711, 0.9904, 1.00258, 1.00878, 0.97039, 0.97686, 0.94315, 0.97728, 0.91154,
    0.86139, 0.76592,
)

# FramePack's TeaCache rescale polynomial (highest power first, as numpy.poly1d takes it).
TEACACHE_POLY: tuple[float, ...] = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)

RATIOS_FLAG = "--magcache_mag_ratios"
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def teacache_rescale(x: float) -> float:
    """FramePack's polynomial at `x`, evaluated like numpy.polyval (Horner, float64)."""
    y = 0.0
    for c in TEACACHE_POLY:
        y = y * x + c
    return y


def resample_ratios(ratios: tuple[float, ...] | list[float], n: int) -> list[float]:
    """The reference's nearest-index resampling of `ratios` to `n` steps (numpy rounding: half to even)."""
    ratios = list(ratios)
    if n == len(ratios):
        return ratios
    if n == 1:
        return [ratios[-1]]
    scale = (len(ratios) - 1) / (n - 1)
    return [ratios[round(i * scale)] for i in range(n)]  # Python's round() is half-to-even, like numpy's


def _parse_numbers(text: str) -> list[float] | None:
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts or not all(_NUMBER.match(p) for p in parts):
        return None
    return [float(p) for p in parts]


def read_ratios_file(path: Path, flag: str = RATIOS_FLAG) -> list[float]:
    """Ratios from a file: numbers separated by commas / whitespace; lines starting with `#` are comments.

    A file written by `--magcache_calibration` holds one data line (the ratios, averaged over its sections).
    """
    from framepack_cli.errors import FramepackError

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise FramepackError(f"{flag}: cannot read {path}: {reason}", hint="give a readable ratios file") from None
    data = " ".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    values = _parse_numbers(data)
    if values is None:
        raise FramepackError(f"{flag}: {path} holds no comma-separated list of numbers",
                             hint="use a file written by --magcache_calibration, or a comma list like 1.0,1.07,...")
    return values


def parse_mag_ratios(text: str, flag: str = RATIOS_FLAG) -> tuple[float, ...]:
    """`--magcache_mag_ratios`: `0` = the built-in ratios, a comma list of numbers, or a path to a ratios file.

    Raises:
        FramepackError: neither numbers nor an existing file; a file without numbers; a ratio that is not
            finite and positive.
    """
    from framepack_cli.errors import FramepackError

    text = text.strip()
    values = _parse_numbers(text)
    if values is None:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FramepackError(
                f"{flag}: {text!r} is neither a comma-separated list of numbers nor an existing file",
                hint="give ratios like 1.0,1.07,1.29, 0 for the built-in ones, or the path of a ratios file")
        values = read_ratios_file(path, flag)
    elif values == [0.0]:
        return DEFAULT_MAG_RATIOS
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise FramepackError(f"{flag}: ratio {bad[0]:g} is not a positive number",
                             hint="every ratio is a residual magnitude ratio, about 0.7-1.3")
    return tuple(values)


# --------------------------------------------------------------------------------------------------
# Settings (from the options) and the per-section state
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCacheSettings:
    """What the options ask for: kind "tea" or "mag" (calibration is a "mag" that skips nothing)."""

    kind: str
    tea_thresh: float = 0.0
    mag_ratios: tuple[float, ...] = DEFAULT_MAG_RATIOS
    mag_threshold: float = 0.24
    mag_k: int = 6
    mag_retention: float = 0.2
    calibration: bool = False

    def describe(self, steps: int) -> str:
        if self.kind == "tea":
            return f"TeaCache: threshold {self.tea_thresh:g}, first and last of {steps} steps always computed"
        if self.calibration:
            return f"MagCache calibration: every step computed, the residual ratios of {steps} steps measured"
        first = max(int(self.mag_retention * steps), 1)
        return (f"MagCache: {len(self.mag_ratios)} ratios" + (f" resampled to {steps} steps" if
                len(self.mag_ratios) != steps else "") + f", threshold {self.mag_threshold:g}, at most "
                f"{self.mag_k} skips in a row, " + (f"steps 0-{first - 1}" if first > 1 else "step 0")
                + f" and {steps - 1} always computed")


def settings_from_options(opts: Any) -> StepCacheSettings | None:
    """The step cache the options ask for (None = none). Pure: no torch state, no model.

    Raises:
        FramepackError: bad `--magcache_mag_ratios`, or TeaCache and MagCache both asked for.
    """
    from framepack_cli.errors import FramepackError

    tea = getattr(opts, "teacache_thresh", None)
    ratios = getattr(opts, "magcache_mag_ratios", None)
    calibration = bool(getattr(opts, "magcache_calibration", False))
    mag = ratios is not None or calibration
    if tea is not None and mag:
        given = "--magcache_calibration" if calibration else RATIOS_FLAG
        raise FramepackError(f"--teacache_thresh and {given}: only one step cache at a time",
                             hint="drop one of them")
    if tea is not None:
        if not (math.isfinite(tea) and tea >= 0):
            raise FramepackError(f"--teacache_thresh: {tea:g} is not a number >= 0",
                                 hint="0.1 skips a few steps, 0.15 about half")
        return StepCacheSettings("tea", tea_thresh=float(tea))
    if not mag:
        return None
    parsed = parse_mag_ratios(ratios) if ratios is not None else DEFAULT_MAG_RATIOS
    return StepCacheSettings(
        "mag", mag_ratios=parsed, mag_threshold=float(getattr(opts, "magcache_threshold", 0.24)),
        mag_k=int(getattr(opts, "magcache_k", 6)), mag_retention=float(getattr(opts, "magcache_retention_ratio", 0.2)),
        calibration=calibration)


class TeaCachePolicy:
    """FramePack's TeaCache decision, one call per sampler step (with the positive call's modulated input)."""

    def __init__(self, thresh: float, num_steps: int) -> None:
        self.thresh = thresh
        self.num_steps = num_steps
        self.acc = 0.0
        self.prev: torch.Tensor | None = None

    def decide(self, step: int, probe: Callable[[], torch.Tensor]) -> bool:
        mod = probe()
        if step == 0 or step == self.num_steps - 1 or self.prev is None:
            compute, self.acc = True, 0.0
        else:
            rel = ((mod - self.prev).abs().mean() / self.prev.abs().mean()).cpu().item()
            self.acc += teacache_rescale(rel)
            # Threshold 0 computes every step (the polynomial is positive anyway; this makes it certain).
            compute = self.thresh <= 0 or self.acc >= self.thresh
            if compute:
                self.acc = 0.0
        self.prev = mod
        return compute


class MagCachePolicy:
    """musubi's MagCache decision for one section of `num_steps` sampler steps."""

    def __init__(self, s: StepCacheSettings, num_steps: int) -> None:
        self.s = s
        self.num_steps = num_steps
        self.ratios = list(s.mag_ratios) if s.calibration else resample_ratios(s.mag_ratios, num_steps)
        self.first = max(int(s.mag_retention * num_steps), 1)
        self.acc_ratio, self.acc_steps, self.acc_err = 1.0, 0, 0.0

    def decide(self, step: int, probe: Callable[[], torch.Tensor]) -> bool:
        if self.s.calibration or not (self.first <= step < self.num_steps - 1):
            return True
        self.acc_ratio *= self.ratios[step]
        self.acc_err += abs(1 - self.acc_ratio)
        self.acc_steps += 1
        if self.s.mag_threshold > 0 and self.acc_err <= self.s.mag_threshold and self.acc_steps <= self.s.mag_k:
            return False
        self.acc_ratio, self.acc_steps, self.acc_err = 1.0, 0, 0.0
        return True


@dataclass
class Calibration:
    """Ratios measured over one section (positive call): mean/std of |r_t|/|r_t-1| per token, mean(1-cos)."""

    norm_ratio: list[float] = field(default_factory=list)
    norm_std: list[float] = field(default_factory=list)
    cos_dis: list[float] = field(default_factory=list)

    def record(self, cur: torch.Tensor, prev: torch.Tensor) -> None:
        ratio = cur.norm(dim=-1) / prev.norm(dim=-1)
        cos = torch.nn.functional.cosine_similarity(cur, prev, dim=-1, eps=1e-8)
        self.norm_ratio.append(round(ratio.mean().item(), 5))
        self.norm_std.append(round(ratio.std().item(), 5))
        self.cos_dis.append(round((1 - cos).mean().item(), 5))

    def line(self) -> str:
        """The reference's copy-paste line: `1.00000,` then each step's ratio, `%.5f`."""
        return format_ratios([1.0, *self.norm_ratio])


def format_ratios(values: list[float]) -> str:
    return ",".join(f"{v:.5f}" for v in values)


class StepCache:
    """One section's step cache: the policy, the step counter and one residual per CFG branch.

    `begin_step()` once per sampler step (by the model function), then `run()` for each model call of the step.
    """

    def __init__(self, settings: StepCacheSettings, num_steps: int) -> None:
        self.settings = settings
        self.num_steps = num_steps
        self.policy = (TeaCachePolicy(settings.tea_thresh, num_steps) if settings.kind == "tea"
                       else MagCachePolicy(settings, num_steps))
        self.step = -1
        self.decision: bool | None = None
        self.residual: dict[str, torch.Tensor] = {}
        self.calibration = Calibration() if settings.calibration else None
        self.computed: list[int] = []  # steps whose block stack ran (for reports and tests)

    def begin_step(self) -> None:
        self.step += 1
        self.decision = None

    @property
    def skipped(self) -> int:
        """Steps so far whose block stack was skipped."""
        return self.step + 1 - len(self.computed)

    def run(self, branch: str, tokens: torch.Tensor, blocks: Callable[[torch.Tensor], torch.Tensor],
            probe: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The image-stream tokens after the block stack: computed by `blocks`, or `tokens + residual`.

        Args:
            branch: "pos" (decides the step) or "neg" (the CFG call: follows the decision of its step).
            tokens: the block stack's image-stream input.
            blocks: runs the block stack on `tokens`.
            probe: the first block's modulated input (TeaCache's signal), only called by the deciding call.
        """
        step = max(self.step, 0)
        if self.decision is None:
            self.decision = self.policy.decide(step, probe)
            if self.decision:
                self.computed.append(step)
        prev = self.residual.get(branch)
        if not self.decision and prev is not None:
            return tokens + prev
        out = blocks(tokens)
        residual = out - tokens
        if self.calibration is not None and branch == "pos" and prev is not None and step >= 1:
            self.calibration.record(residual, prev)
        self.residual[branch] = residual
        return out


class SectionCache:
    """What one section's model calls share: the memo of step-invariant work and the optional step cache."""

    def __init__(self, step_cache: StepCache | None = None) -> None:
        self.memo: dict[Any, tuple[tuple[Any, ...], Any]] = {}
        self.step_cache = step_cache

    def branch(self, name: str) -> ForwardCache:
        return ForwardCache(self, name)


@dataclass
class ForwardCache:
    """Handed to one DiT forward call (`cache=`): the section's caches and which CFG branch the call is."""

    section: SectionCache
    branch: str = "pos"

    def memo(self, key: tuple, refs: tuple[Any, ...], fn: Callable[[], Any]) -> Any:
        """`fn()` once per section for `key`; `refs` are the input tensors, checked by identity on a hit."""
        hit = self.section.memo.get(key)
        if hit is not None and len(hit[0]) == len(refs) and all(a is b for a, b in zip(hit[0], refs, strict=True)):
            return hit[1]
        value = fn()
        self.section.memo[key] = (refs, value)
        return value
