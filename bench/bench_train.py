"""Steps per second and peak RSS of `framepack train` on the tiny golden models, with and without
`--gradient_checkpointing` (and its CPU offload), printed as ratios against the plain run.

Run by hand (not in CI):  python bench/bench_train.py [--steps 20] [--repeats 2]

Each run is a separate process (peak RSS = that process's VmHWM); the training speed is read from the
run's own summary line ("Trained N steps ... (x steps/s)"), so model loading does not count. The caches are
the golden reference caches (vanilla, window 5, 64x48).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
VARIANTS = {
    "plain": [],
    "checkpointing": ["--gradient_checkpointing"],
    "checkpointing+offload": ["--gradient_checkpointing", "--gradient_checkpointing_cpu_offload"],
}


def dataset(tmp: Path) -> Path:
    cache = tmp / "cache"
    cache.mkdir()
    for f in [*(GOLDEN / "cache/vanilla/video_dir").glob("*_fp.safetensors"),
              *(GOLDEN / "cache/text/video_dir").glob("*_fp_te.safetensors")]:
        shutil.copy(f, cache / f.name)
    toml = tmp / "ds.toml"
    toml.write_text(f'[general]\nresolution = [64, 48]\ncaption_extension = ".txt"\nbatch_size = 1\n\n'
                    f'[[datasets]]\nvideo_directory = "{GOLDEN / "datasets/videos"}"\ncache_directory = "{cache}"\n'
                    'frame_extraction = "full"\nfp_latent_window_size = 5\n')
    return toml


def run(toml: Path, out: Path, steps: int, extra: list[str]) -> tuple[float, float]:
    cmd = [
        sys.executable, "-c",
        "import sys\n"
        "from framepack_cli.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a big process (bench/run.py
        # after the other benches) would report the parent's peak
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print('MAXRSS', hwm.split()[1])\n",
        "train", "--dit", str(GOLDEN / "models/dit_single.safetensors"), "--dataset_config", str(toml),
        "--output_dir", str(out), "--output_name", "bench", "--max_train_steps", str(steps), "--seed", "1",
        "--learning_rate", "1e-4", "--max_data_loader_n_workers", "0", *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"run {extra} failed:\n{r.stderr[-2000:]}")
    rate = float(re.search(r"\(([\d.]+) steps/s\)", r.stderr).group(1))
    rss_kb = next(int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("MAXRSS"))
    return rate, rss_kb / 1024


def results(steps: int, repeats: int, variants: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """variant -> (median steps/s, max peak RSS MB)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        toml = dataset(tmp)
        out: dict[str, tuple[float, float]] = {}
        for name, extra in variants.items():
            rates, rss = [], []
            for i in range(repeats):
                r, m = run(toml, tmp / f"out_{name}_{i}", steps, extra)
                rates.append(r)
                rss.append(m)
            out[name] = (statistics.median(rates), max(rss))
    return out


def measure(quick: bool = False) -> list[dict]:
    """Rows for bench/run.py: time per step and peak RSS of each variant relative to the plain run."""
    variants = {k: v for k, v in VARIANTS.items() if not quick or k != "checkpointing+offload"}
    res = results(5 if quick else 20, 1 if quick else 2, variants)
    base_rate, base_rss = res["plain"]
    rows = []
    for name, (rate, rss) in res.items():
        rows.append({"row": f"train step time: {name}", "ratio": base_rate / rate,
                     "note": f"{rate:.2f} steps/s (tiny models, 64x48)"})
        rows.append({"row": f"train peak RSS: {name}", "ratio": rss / base_rss, "note": f"{rss:.0f} MB"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    res = results(a.steps, a.repeats, VARIANTS)
    base_rate, base_rss = res["plain"]
    print(f"{'variant':<24}{'steps/s':>10}{'ratio':>8}{'peak RSS MB':>14}{'ratio':>8}")
    for name, (rate, rss) in res.items():
        print(f"{name:<24}{rate:>10.2f}{rate / base_rate:>8.2f}{rss:>14.0f}{rss / base_rss:>8.2f}")


if __name__ == "__main__":
    main()
