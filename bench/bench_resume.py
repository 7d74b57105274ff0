"""What the per-section resume checkpoint costs: writing `.<name>.resume.safetensors` for real video sizes.

    PYTHONPATH=$PWD python bench/bench_resume.py [--quick]

The history a checkpoint holds at a 640x640 run (16 channels, 80x80 latents) after a 10 s, 30 s and 120 s
video (window 9: 19 context frames + 9 latent frames per section, 30 fps), written with the real
`SectionCheckpoint.save` (temp file + rename) into a temporary folder. Baseline rows (one per size): the same bytes
written raw (`numpy.tofile`) to the same folder, so the ratio is the checkpoint's overhead over the disk itself.
The note gives the size and the median write time (a real section at 640x640 takes tens of seconds on a GPU, so even
the largest write is a small share of it). Speed is never asserted; `measure(quick)` returns rows for run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Quiet:
    def message(self, text: str) -> None:
        print(text, file=sys.stderr)


def _frames(seconds: int) -> int:
    sections = max(1, round(seconds * 30 / (4 * 9)))
    return 19 + 9 * sections + 1


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(quick: bool = False) -> list[dict]:
    import torch

    from framepack_cli.engine.resume import SectionCheckpoint

    repeats = 2 if quick else 5
    rows = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for seconds in ((10,) if quick else (10, 30, 120)):
            history = torch.randn(1, 16, _frames(seconds), 80, 80)
            gen = torch.Generator("cpu").manual_seed(1)
            ck = SectionCheckpoint(folder / ".b.resume.safetensors", {"seed": 1}, ["seed"], _Quiet())
            raw = history.numpy()
            base = _median(partial(raw.tofile, folder / "raw.bin"), repeats)
            t = _median(partial(ck.save, 3, 10, history, 100, gen), repeats)
            mb = history.numel() * 4 / 1e6
            rows.append({"row": f"raw write {seconds} s (baseline)", "ratio": 1.0,
                         "note": f"{mb:.0f} MB in {base * 1e3:.0f} ms"})
            rows.append({"row": f"checkpoint {seconds} s video", "ratio": t / base,
                         "note": f"{mb:.0f} MB in {t * 1e3:.0f} ms"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    for r in measure(ap.parse_args().quick):
        print(f"{r['row']:<28} {r['ratio']:6.2f}x  {r['note']}")


if __name__ == "__main__":
    main()
