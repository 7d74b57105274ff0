"""Every framepack benchmark in one table, each row a ratio against the plain path measured in the same run.

    PYTHONPATH=$PWD python bench/run.py [--quick] [--markdown] [--only help,train,...]

Rows: (a) `framepack --help` wall time against `python -c pass` and `python -c "import torch"` (the CLI does
not import torch for its help); then the rows of each bench module's `measure(quick)`: attention kernels,
step caches, decode, load RSS, training, and several processes for a batch. A module that is not there is
one "not present" row; one that fails is one "failed" row (the others still run). `--quick` is a fast smoke
run (fewer repeats, smaller cases); `--markdown` prints the table for README. Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# (group, module): each module exposes `measure(quick: bool = False) -> list[dict]` (row, ratio, note)
MODULES = [
    ("attention", "bench_attention"),
    ("step cache", "bench_step_cache"),
    ("decode", "bench_decode"),
    ("load RSS", "bench_load_rss"),
    ("train", "bench_train"),
    ("processes", "bench_processes"),
    ("preview", "bench_preview"),
    ("resume", "bench_resume"),
    ("reference", "bench_reference"),
]
HELP_PROBE = ("import sys\nfrom framepack_cli.cli.app import main\ntry:\n    main(['--help'])\n"
              "except SystemExit:\n    pass\nsys.stderr.write('TORCH %s\\n' % ('torch' in sys.modules))\n")


def machine() -> str:
    """CPU model and cores, torch version and the CUDA device (if any): the table's header."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                     model)
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    gpu = (f"CUDA {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if torch.cuda.is_available()
           else "no CUDA device")
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"


def wall(cmd: list[str], repeats: int) -> tuple[float, str]:
    """Median wall seconds of `cmd` (after one warm-up run: file caches) and the last run's stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, capture_output=True, env=env)
    times, err = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-300:]}")
        err = r.stderr
    return statistics.median(times), err


def help_rows(quick: bool) -> list[dict]:
    """(a) `framepack --help` against an empty interpreter and an interpreter importing torch."""
    n = 3 if quick else 7
    py = sys.executable
    base, _ = wall([py, "-c", "pass"], n)
    cli, err = wall([py, "-c", HELP_PROBE], n)
    torch_t, _ = wall([py, "-c", "import torch"], n)
    imported = "TORCH True" in err
    return [
        {"row": "python -c pass", "ratio": 1.0, "note": f"{base * 1000:.0f} ms"},
        {"row": "framepack --help", "ratio": cli / base,
         "note": f"{cli * 1000:.0f} ms; torch {'IMPORTED (a bug)' if imported else 'not imported'}"},
        {"row": 'python -c "import torch"', "ratio": torch_t / base, "note": f"{torch_t * 1000:.0f} ms"},
    ]


def gather(quick: bool, only: set[str] | None) -> list[tuple[str, dict]]:
    rows: list[tuple[str, dict]] = []
    if only is None or "help" in only:
        rows += [("help", r) for r in help_rows(quick)]
    for group, name in MODULES:
        if only is not None and group.split()[0] not in only and name not in only:
            continue
        if not (REPO / "bench" / f"{name}.py").is_file():
            rows.append((group, {"row": f"bench/{name}.py", "ratio": math.nan, "note": "not present"}))
            continue
        t0 = time.perf_counter()
        try:
            measured = importlib.import_module(name).measure(quick=quick)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - one failed bench is one row, the table goes on
            text = str(e).strip().splitlines()
            rows.append((group, {"row": f"bench/{name}.py", "ratio": math.nan,
                                 "note": f"failed: {type(e).__name__}: {text[-1] if text else ''}"[:160]}))
            continue
        sys.stderr.write(f"{name}: {len(measured)} row(s) in {time.perf_counter() - t0:.0f} s\n")
        rows += [(group, r) for r in measured]
    return rows


def ratio_text(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}x"


def table(rows: list[tuple[str, dict]], header: str, markdown: bool) -> str:
    if markdown:
        out = [f"Machine: {header}", "", "| group | row | ratio | note |", "|---|---|---:|---|"]
        out += [f"| {g} | {r['row']} | {ratio_text(r['ratio'])} | {r.get('note', '')} |" for g, r in rows]
        return "\n".join(out)
    wg = max([len("group"), *(len(g) for g, _ in rows)])
    wr = max([len("row"), *(len(r["row"]) for _, r in rows)])
    out = [f"Machine: {header}", f"{'group':<{wg}}  {'row':<{wr}}  {'ratio':>8}  note"]
    out += [f"{g:<{wg}}  {r['row']:<{wr}}  {ratio_text(r['ratio']):>8}  {r.get('note', '')}" for g, r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fast smoke run: fewer repeats, smaller cases")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for README)")
    ap.add_argument("--only", help="comma-separated groups or modules, e.g. help,train,bench_decode")
    a = ap.parse_args(argv)
    only = {s.strip() for s in a.only.split(",")} if a.only else None
    rows = gather(a.quick, only)
    print(table(rows, machine(), a.markdown))


if __name__ == "__main__":
    main()
