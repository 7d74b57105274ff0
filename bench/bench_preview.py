"""What one `--preview` update costs after a section: `--preview_mode latent` against `vae`.

    PYTHONPATH=$PWD python bench/bench_preview.py [--quick]

The case: a vanilla video of `sections` sections of window 9 at `size`x`size` px; the update after the last
section (the longest preview). Rows, as time ratios to the baseline measured in the same run:

* `vae mp4` (baseline): decode the newest section (10 latents) with the HunyuanVideo VAE architecture at reduced
  width (64, 64, 128, 128 channels) and random weights (`bench_decode.wide_vae`; the real VAE is wider, so its
  decode is slower still) and rewrite the MP4 of every frame so far;
* `latent mp4`: project every latent so far with the fixed 16x3 matrix (+ bias), upsample 4x, rewrite the MP4;
* `latent png`: project the newest section's first latent and rewrite the contact sheet;
* `projection only`: `latent_to_rgb` of every latent so far (no file).

Best of 2 runs each (1 with --quick), interleaved; the note gives the absolute time. Nothing here is asserted anywhere.
`measure(quick)` returns the rows for bench/run.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _writer(path: Path, mode: str, sections: int, vae):
    from framepack_cli.engine.preview import PreviewWriter

    return PreviewWriter(path, mode, sections=sections, f1=False, one_frame=False, fps=30,
                         vae=(lambda: vae) if vae is not None else None)


def _update(path: Path, mode: str, sections: int, vae, latent: torch.Tensor, newest: int) -> float:
    """Seconds of the last section's preview update (the earlier sections are primed untimed)."""
    w = _writer(path, mode, sections, vae)
    rest = latent[:, newest:]
    if mode == "vae":  # prime the frames of the earlier sections without decoding them all again
        w.seen, w.done = rest.shape[1], sections - 1
        w.blocks = [torch.zeros(4 * rest.shape[1], latent.shape[2] * 8, latent.shape[3] * 8, 3,
                                dtype=torch.uint8).numpy()]
    else:
        w.update(rest)
    t0 = time.perf_counter()
    w.update(latent)
    return time.perf_counter() - t0


def measure(quick: bool = False) -> list[dict]:
    from bench_decode import wide_vae

    from framepack_cli.engine.preview import latent_to_rgb

    size, sections, window = (128, 3, 9) if quick else (192, 6, 9)
    repeats = 1 if quick else 2
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(16, sections * window + 1, size // 8, size // 8, generator=g)
    newest = window + 1  # vanilla: the last section carries the start latent too
    vae = wide_vae((64, 64, 128, 128), layers=2)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        cases = {
            "vae mp4": lambda: _update(Path(d) / "v.mp4", "vae", sections, vae, latent, newest),
            "latent mp4": lambda: _update(Path(d) / "l.mp4", "latent", sections, None, latent, newest),
            "latent png": lambda: _update(Path(d) / "l.png", "latent", sections, None, latent, newest),
        }
        for _ in range(repeats):
            for name, run in cases.items():
                best[name] = min(best.get(name, float("inf")), run())
            t0 = time.perf_counter()
            latent_to_rgb(latent)
            best["projection only"] = min(best.get("projection only", float("inf")), time.perf_counter() - t0)
    base = best["vae mp4"]
    what = f"{sections} sections x {window} at {size}x{size}"
    return [{"row": f"preview {name} ({what})", "ratio": t / base, "note": f"{t * 1000:.1f} ms"}
            for name, t in best.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller case, one repeat")
    rows = measure(ap.parse_args().quick)
    width = max(len(r["row"]) for r in rows)
    print(f"{'row':<{width}}  time vs vae mp4  note")
    for r in rows:
        print(f"{r['row']:<{width}}  {r['ratio']:>13.4f}x  {r['note']}")


if __name__ == "__main__":
    main()
