"""Peak RSS while loading a full-width synthetic DiT, as a ratio to the size of the loaded weights.

    python bench/bench_load_rss.py [--double 1] [--single 1] [--dtype bfloat16 float32]

Writes a DiT of the real width (3072, 24 heads, the real dual/single block structure, `--double` / `--single`
blocks) as bf16 into a temporary folder, once as a single file and once as 3 shards, and loads each with
`load_dit` in a fresh process per case (`tests/fullwidth_dit.py`). Prints, per case, how much the peak RSS
(VmHWM) grew while loading, divided by the weights' size in the run's dtype (1.00 = no copy beyond the model;
issue 12's bound is 1.15). fp8 cases run where `load_dit` takes `fp8="fp8"` / `"fp8_scaled"` (their weights size is
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


def cases(double: int, single: int, dtypes: list[str], layouts: tuple[str, ...] = ("single file", "3 shards")):
    """(layout, dtype, mode, measurement) for every case, each loaded in a fresh process."""
    from framepack_cli.models.transformer import load_dit

    params = inspect.signature(load_dit).parameters
    # load_dit(fp8="fp8" | "fp8_scaled")
    fp8_cases = [{"fp8": mode} for mode in ("fp8", "fp8_scaled")] if "fp8" in params else []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = {"single file": 1, "3 shards": 3}
        for layout in layouts:
            path = write_fullwidth_dit(Path(tmp) / layout.replace(" ", "_"), double=double, single=single,
                                       shards=shards[layout])
            for dtype in dtypes:
                for kwargs in [{}, *(fp8_cases if dtype == "bfloat16" else [])]:
                    try:
                        r = measure_in_subprocess(path, dtype, kwargs=kwargs)
                    except RuntimeError as e:  # one case that fails is one row; the others still run
                        r = {"error": str(e).strip().splitlines()[-1]}
                    out.append((layout, dtype, kwargs.get("fp8", "-"), r))
    return out, bool(fp8_cases)


def measure(quick: bool = False) -> list[dict]:
    """Rows for bench/run.py: peak RSS growth while loading, relative to the loaded weights' size."""
    layouts = ("single file",) if quick else ("single file", "3 shards")
    res, fp8 = cases(1, 1, ["bfloat16"] if quick else ["bfloat16", "float32"], layouts)
    rows = [{"row": f"load RSS: {layout}, {dtype}{'' if mode == '-' else ', ' + mode}",
             "ratio": r.get("ratio", float("nan")),
             "note": f"failed: {r['error']}"[:160] if "error" in r else
             f"growth {(r['peak'] - r['before']) / 2**30:.2f} G over {r['weights'] / 2**30:.2f} G of weights"}
            for layout, dtype, mode, r in res]
    if not fp8:
        rows.append({"row": "load RSS: fp8", "ratio": float("nan"), "note": "load_dit takes no fp8 option here"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=1)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    args = ap.parse_args()
    res, fp8 = cases(args.double, args.single, args.dtype)
    print(f"{'layout':<12} {'dtype':<10} {'mode':<11} {'weights':>9} {'RSS growth':>11} {'ratio':>6}")
    for layout, dtype, mode, r in res:
        if "error" in r:
            print(f"{layout:<12} {dtype:<10} {mode:<11} failed: {r['error']}")
            continue
        print(f"{layout:<12} {dtype:<10} {mode:<11} {r['weights'] / 2**30:>7.2f} G "
              f"{(r['peak'] - r['before']) / 2**30:>9.2f} G {r['ratio']:>6.3f}")
    if not fp8:
        print("fp8: load_dit takes no fp8 option on this branch; not measured")


if __name__ == "__main__":
    main()
