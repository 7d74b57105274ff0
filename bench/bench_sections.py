"""Peak RSS and wall time of `framepack generate` for a short and a long video on the tiny golden models.

Run by hand (not in CI):  python bench/bench_sections.py [--sections 2 20] [--size 64 96]

Each run is a separate process (peak RSS = that process's ru_maxrss). The decode streams frames to the
MP4 writer, so peak RSS should stay flat as the video gets longer; wall time grows with the sections.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


def run(sections: int, size: tuple[int, int], steps: int, out: Path) -> tuple[float, float]:
    m = GOLDEN / "models"
    cmd = [
        sys.executable, "-c",
        "import resource, sys\n"
        "from framepack_cli.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n",
        "generate", "--dit", str(m / "dit_single.safetensors"), "--vae", str(m / "vae.safetensors"),
        "--text_encoder1", str(m / "llava_llama3_tiny.safetensors"),
        "--text_encoder2", str(m / "clip_l_tiny.safetensors"), "--image_encoder", str(m / "sigclip_tiny.safetensors"),
        "--image_path", str(GOLDEN / "inputs" / "start.png"), "--prompt", "A cat walks on the grass.",
        "--video_size", str(size[0]), str(size[1]), "--video_sections", str(sections), "--infer_steps", str(steps),
        "--seed", "1", "--save_path", str(out),
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"run with {sections} sections failed:\n{r.stderr}")
    rss_kb = next(int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("MAXRSS"))
    return rss_kb / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", type=int, nargs=2, default=[2, 20], metavar=("SHORT", "LONG"))
    ap.add_argument("--size", type=int, nargs=2, default=[64, 96], metavar=("H", "W"))
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (rss_a, t_a), (rss_b, t_b) = (run(s, tuple(a.size), a.steps, Path(tmp) / str(s)) for s in a.sections)
    frames = [4 * 9 * s + 1 for s in a.sections]
    print(f"{'sections':>8} {'frames':>7} {'peak RSS MiB':>13} {'wall s':>8}")
    for s, f, rss, t in zip(a.sections, frames, (rss_a, rss_b), (t_a, t_b), strict=True):
        print(f"{s:>8} {f:>7} {rss:>13.0f} {t:>8.1f}")
    print(f"ratio long/short: peak RSS x{rss_b / rss_a:.2f} (flat is ~1.0), wall x{t_b / t_a:.2f}, "
          f"frames x{frames[1] / frames[0]:.1f}")


if __name__ == "__main__":
    main()
