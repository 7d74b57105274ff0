"""Peak RSS while loading a full-width synthetic DiT, as a ratio to the size of the loaded weights.

    python bench/bench_load_rss.py [--double 1] [--single 1] [--dtype bfloat16 float32]

Writes a DiT of the real width (3072, 24 heads, the real dual/single block structure, `--double` / `--single`
blocks) as bf16 into a temporary folder, once as a single file and once as 3 shards, and loads each with
`load_dit` in a fresh process per case (`tests/fullwidth_dit.py`). Prints, per case, how much the peak RSS
(VmHWM) grew while loading, divided by the weights' size in the run's dtype (1.00 = no copy beyond the model;
issue 12's bound is 1.15). fp8 cases run where `load_dit` takes `fp8` / `fp8_scaled` (their weights size is
then the bf16 size: the ratio shows how much of it the fp8 model keeps).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fullwidth_dit import measure_in_subprocess, write_fullwidth_dit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=1)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    args = ap.parse_args()
    from framepack_cli.models.transformer import load_dit

    params = inspect.signature(load_dit).parameters
    fp8_cases = [{name: True} for name in ("fp8", "fp8_scaled") if name in params]
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "single file": write_fullwidth_dit(Path(tmp) / "single", double=args.double, single=args.single),
            "3 shards": write_fullwidth_dit(Path(tmp) / "shards", double=args.double, single=args.single, shards=3),
        }
        print(f"{'layout':<12} {'dtype':<10} {'mode':<11} {'weights':>9} {'RSS growth':>11} {'ratio':>6}")
        for layout, path in files.items():
            for dtype in args.dtype:
                for kwargs in [{}, *(fp8_cases if dtype == "bfloat16" else [])]:
                    r = measure_in_subprocess(path, dtype, kwargs=kwargs)
                    mode = next(iter(kwargs), "-")
                    print(f"{layout:<12} {dtype:<10} {mode:<11} {r['weights'] / 2**30:>7.2f} G "
                          f"{(r['peak'] - r['before']) / 2**30:>9.2f} G {r['ratio']:>6.3f}")
        if not fp8_cases:
            print("fp8: load_dit takes no fp8 option on this branch; not measured")


if __name__ == "__main__":
    main()
