"""Peak RSS while loading a full-width synthetic DiT, as a ratio to the size of the loaded weights.

    python bench/bench_load_rss.py [--double 1] [--single 1] [--quick]

Writes a DiT of the real width (3072, 24 heads, the real dual/single block structure, `--double` / `--single`
blocks) as bf16 into a temporary folder, once as a single file and once as 3 shards, and loads each with
`load_dit` in a fresh process per case (`tests/fullwidth_dit.py`). Prints, per case, how much the peak RSS
(VmHWM) grew while loading, divided by the weights' size in the run's dtype (1.00 = no copy beyond the model;
issue 12's bound is 1.15). The fp8 rows convert the bf16 file while loading (`--fp8`, `--fp8_scaled`) or load
a pre-quantised fp8 file; their weights are counted in bf16 (the run's dtype), and the note says how the growth
compares with what the fp8 model holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fullwidth_dit import measure_in_subprocess, write_fullwidth_dit  # noqa: E402

CASES = [  # (row, layout, dtype, load_dit kwargs)
    ("single file bf16", "single", "bfloat16", {}),
    ("3 shards bf16", "shards", "bfloat16", {}),
    ("single file float32 (cast)", "single", "float32", {}),
    ("3 shards float32 (cast)", "shards", "float32", {}),
    ("--fp8 (converted)", "single", "bfloat16", {"fp8": "fp8"}),
    ("--fp8_scaled (converted)", "single", "bfloat16", {"fp8": "fp8_scaled"}),
    ("pre-quantised fp8 file", "fp8", "bfloat16", {}),
    ("pre-quantised fp8_scaled file", "fp8_scaled", "bfloat16", {}),
]


def measure(quick: bool = False, *, double: int = 1, single: int = 1) -> list[dict]:
    """One row per case: `ratio` = peak-RSS growth / the weights in the run's dtype (the baseline is the
    weights themselves: 1.00 = nothing beyond one copy; issue 12's bound is 1.15); `note` also gives the growth
    against what the loaded model holds (smaller with fp8). `quick`: the single-file bf16 and fp8 cases."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        for row, layout, dtype, kwargs in CASES:
            if quick and (layout == "shards" or dtype == "float32"):
                continue
            if layout not in files:
                files[layout] = write_fullwidth_dit(
                    Path(tmp) / layout, double=double, single=single, shards=3 if layout == "shards" else 1,
                    fp8=layout if layout.startswith("fp8") else None)
            r = measure_in_subprocess(files[layout], dtype, kwargs=kwargs)
            grew = r["peak"] - r["before"]
            rows.append({"row": row, "ratio": r["ratio"],
                         "note": f"RSS +{grew / 2**30:.2f} GiB for {r['weights'] / 2**30:.2f} GiB of {dtype} "
                                 f"weights; model holds {r['model'] / 2**30:.2f} GiB ({r['model_ratio']:.2f}x)"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = measure(args.quick, double=args.double, single=args.single)
    width = max(len(r["row"]) for r in rows)
    print(f"{'case':<{width}}  {'ratio':>6}  note")
    for r in rows:
        print(f"{r['row']:<{width}}  {r['ratio']:>6.3f}  {r['note']}")


if __name__ == "__main__":
    main()
