"""`framepack train --show_timesteps console|image`: the distribution of the run's training timesteps.

As the reference: 100 000 draws (chunks of 1000) with the run's timestep options on a 128x128 latent (a
1024x1024 image: the resolution-dependent shifts depend on it), and the loss weighting of
`--weighting_scheme` per noise level (1 where there is none). Then it exits without training.

- `console`: a 20-bin text histogram, one line per bin: the noise-level range (t x 1000, 1000 = pure
  noise), the draws in it, the mean loss weight, and a bar of `#` (through the sink's message lines).
- `image`: a PNG, the histogram beside the loss-weight curve, written atomically to
  `<--output_dir or the current folder>/<--output_name or timesteps>_timesteps.png` (`_1`, `_2`, ... when
  that name is taken: no file is overwritten); `Wrote <path>` is the result line.

Differences from the reference: the reference's sigma mode crashes here (sigma 1 falls outside its 1000
bins) and its image only opens a matplotlib window; this one draws with Pillow and writes a file. Draws
use `--seed` when given (torch generator and, for `--num_timestep_buckets`, Python's random).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.io.outputs import unique_base
from framepack_cli.io.writable import ensure_writable_dir, remove_created, resource_error_for
from framepack_cli.options.train import TrainOptions
from framepack_cli.sampling.train_timesteps import (
    NUM_TRAIN_TIMESTEPS,
    TimestepBucketPool,
    TimestepSettings,
    loss_weighting,
    sample_timesteps,
)

N_DRAWS = 100_000
CHUNK = 1000
LATENT_HW = (128, 128)  # the reference's 1024x1024 image
CONSOLE_BINS = 20
BAR_WIDTH = 50


def timestep_settings(opts: TrainOptions) -> TimestepSettings:
    """The run's `TimestepSettings` from the options."""
    return TimestepSettings(
        timestep_sampling=opts.timestep_sampling,
        discrete_flow_shift=opts.discrete_flow_shift,
        sigmoid_scale=opts.sigmoid_scale,
        weighting_scheme=opts.weighting_scheme,
        logit_mean=opts.logit_mean,
        logit_std=opts.logit_std,
        mode_scale=opts.mode_scale,
        min_timestep=opts.min_timestep,
        max_timestep=opts.max_timestep,
        preserve_distribution_shape=opts.preserve_distribution_shape,
    )


@dataclass(frozen=True)
class TimestepHistogram:
    """Draw counts and loss weights over the 1000 noise levels (bin i: noise level t in [i, i+1)/1000; the
    sigma schedule's timestep i+1)."""

    counts: list[int]
    weights: list[float]
    n_draws: int


def timestep_histogram(
    opts: TrainOptions, *, n_draws: int | None = None, chunk: int = CHUNK, warn=None
) -> TimestepHistogram:
    """Draw `n_draws` (default `N_DRAWS`) timesteps with the run's options and count them per noise level."""
    n_draws = N_DRAWS if n_draws is None else n_draws
    settings = timestep_settings(opts)
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**32)
    generator = torch.Generator().manual_seed(seed)
    pool = TimestepBucketPool(opts.num_timestep_buckets, random.Random(seed)) if opts.num_timestep_buckets else None
    counts = torch.zeros(NUM_TRAIN_TIMESTEPS, dtype=torch.int64)
    done = 0
    warned: list[str] = []
    while done < n_draws:
        b = min(chunk, n_draws - done)
        _, t = sample_timesteps(
            (b, 16, 1, *LATENT_HW),
            settings,
            uniform_values=pool.values(b) if pool is not None else None,
            bucket_values=pool.values if pool is not None else None,
            on_warning=warned.append,
            generator=generator,
        )
        level = t.double() * NUM_TRAIN_TIMESTEPS
        # sigma mode: level = timestep in 1..1000 (bin timestep-1); continuous t in (0, 1): bin floor(1000 t)
        bins = torch.ceil(level - 1e-3) - 1 if settings.sigma_mode else torch.floor(level)
        counts += torch.bincount(bins.long().clamp(0, NUM_TRAIN_TIMESTEPS - 1), minlength=NUM_TRAIN_TIMESTEPS)
        done += b
    if warned and warn is not None:
        warn(f"{warned[0]} ({len(warned)} of {math.ceil(n_draws / chunk)} batches)")
    w = loss_weighting(settings.weighting_scheme, torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32),
                       n_dim=1)
    weights = [1.0] * NUM_TRAIN_TIMESTEPS if w is None else [
        1.0 if not math.isfinite(v) else float(v) for v in w.flatten().tolist()
    ]
    return TimestepHistogram(counts=[int(c) for c in counts.tolist()], weights=weights, n_draws=n_draws)


def _describe(opts: TrainOptions) -> str:
    s = f"--timestep_sampling {opts.timestep_sampling}"
    if opts.timestep_sampling in ("sigma", "shift"):
        s += f" --discrete_flow_shift {opts.discrete_flow_shift:g}"
    s += f" --weighting_scheme {opts.weighting_scheme}"
    if opts.min_timestep is not None or opts.max_timestep is not None:
        s += f" --min_timestep {opts.min_timestep or 0} --max_timestep {opts.max_timestep or 1000}"
    return s


def console_lines(h: TimestepHistogram, opts: TrainOptions, bins: int = CONSOLE_BINS) -> list[str]:
    """The text histogram: a header, then one line per bin (noise-level range, draws, mean loss weight, bar)."""
    width = NUM_TRAIN_TIMESTEPS // bins
    counts = [sum(h.counts[i * width:(i + 1) * width]) for i in range(bins)]
    weights = [sum(h.weights[i * width:(i + 1) * width]) / width for i in range(bins)]
    top = max(counts) or 1
    lines = [
        f"Timesteps of {_describe(opts)}: {h.n_draws} draws on a {LATENT_HW[0]}x{LATENT_HW[1]} latent "
        "(noise level t x 1000, 1000 = pure noise)",
        f"{'t x 1000':>9} {'draws':>7} {'weight':>9}",
    ]
    for i, (c, w) in enumerate(zip(counts, weights, strict=True)):
        bar = "#" * round(c / top * BAR_WIDTH)
        lines.append(f"{i * width:4d}-{(i + 1) * width - 1:4d} {c:7d} {w:9.4g} {bar}".rstrip())
    return lines


def render_png(h: TimestepHistogram, opts: TrainOptions):
    """The histogram (left) and the loss-weight curve (right) as a Pillow image."""
    from PIL import Image, ImageDraw

    pw, ph, margin, top_pad = 500, 300, 50, 40
    img = Image.new("RGB", (2 * pw + 3 * margin, ph + top_pad + 2 * margin), "white")
    d = ImageDraw.Draw(img)
    d.text((margin, 10), f"{_describe(opts)}   ({h.n_draws} draws, latent {LATENT_HW[0]}x{LATENT_HW[1]})",
           fill="black")

    def panel(x0: int, values: list[float], title: str, log: bool, bars: bool) -> None:
        y0 = top_pad + margin
        d.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
        d.text((x0, y0 - 18), title, fill="black")
        d.text((x0, y0 + ph + 6), "0", fill="black")
        d.text((x0 + pw - 24, y0 + ph + 6), "1000", fill="black")
        d.text((x0 + pw // 2 - 60, y0 + ph + 20), "noise level t x 1000", fill="black")
        vals = [math.log10(v) if log else v for v in values]
        lo = min(vals) if log else 0.0
        hi = max(vals)
        span = (hi - lo) or 1.0
        n = len(vals)
        label_hi, label_lo = (f"{10 ** hi:.3g}", f"{10 ** lo:.3g}") if log else (f"{hi:.4g}", "0")
        d.text((x0 - margin + 2, y0), label_hi, fill="black")
        d.text((x0 - margin + 2, y0 + ph - 12), label_lo, fill="black")
        if bars:
            step = pw / n
            for i, v in enumerate(vals):
                y = y0 + ph - (v - lo) / span * ph
                d.rectangle([x0 + i * step, y, x0 + (i + 1) * step - 1, y0 + ph], fill=(70, 110, 190))
        else:
            pts = [(x0 + (i + 0.5) * pw / n, y0 + ph - (v - lo) / span * (ph - 2) - 1) for i, v in enumerate(vals)]
            d.line(pts, fill=(200, 60, 40), width=2)

    group = 10  # 100 bars of 10 noise levels
    hist = [sum(h.counts[i:i + group]) for i in range(0, NUM_TRAIN_TIMESTEPS, group)]
    panel(margin, [float(c) for c in hist], "Sampled timesteps (draws)", log=False, bars=True)
    positive = [max(w, 1e-12) for w in h.weights]
    log = max(positive) / min(positive) > 100
    panel(2 * margin + pw + margin // 2, positive, "Loss weighting" + (" (log scale)" if log else ""), log=log,
          bars=False)
    return img


def _write_png(img, opts: TrainOptions) -> Path:
    flag = "--output_dir"
    folder = Path(opts.output_dir) if opts.output_dir else Path.cwd()
    created = ensure_writable_dir(folder, flag)
    base = unique_base(folder, f"{opts.output_name or 'timesteps'}_timesteps", [".png"])
    path = folder / f"{base}.png"
    tmp = folder / f".{base}.{os.getpid()}.partial.png"
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        remove_created(folder, created)
        raise resource_error_for(e, flag, path) from None
    return path


def show_timesteps(opts: TrainOptions, sink: ProgressSink) -> list[Path]:
    """Run `--show_timesteps` (see the module doc); returns the files written ([] for console)."""
    sink.message(f"Drawing {N_DRAWS} training timesteps ({_describe(opts)})")
    h = timestep_histogram(opts, warn=sink.message)
    if opts.show_timesteps == "console":
        for line in console_lines(h, opts):
            sink.message(line)
        return []
    path = _write_png(render_png(h, opts), opts)
    sink.result(f"Wrote {path}")
    return [path]
