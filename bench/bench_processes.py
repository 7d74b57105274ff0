"""Wall time of a `framepack generate --from_file` batch of 2 jobs in 1 process against 2 processes
(`python -m torch.distributed.run --nproc_per_node 2`: gloo on the CPU, cuda:0 / cuda:1 with 2 GPUs), on the
tiny golden models.

Run by hand (not in CI):  python bench/bench_processes.py [--steps 10] [--sections 2]

Both runs are whole commands (model loading included: each process loads every model once). On the CPU the
2 processes share the cores (each gets half the threads), so the ratio shows the cost of the split there;
on 2 GPUs each job has a GPU of its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"


def command(jobs: Path, out: Path, size: tuple[int, int], steps: int) -> list[str]:
    m = GOLDEN / "models"
    return ["generate", "--dit", str(m / "dit_single.safetensors"), "--vae", str(m / "vae.safetensors"),
            "--text_encoder1", str(m / "llava_llama3_tiny.safetensors"),
            "--text_encoder2", str(m / "clip_l_tiny.safetensors"), "--image_encoder",
            str(m / "sigclip_tiny.safetensors"), "--video_size", str(size[0]), str(size[1]), "--infer_steps",
            str(steps), "--from_file", str(jobs), "--save_path", str(out), "--output_type", "latent"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def times(steps: int, sections: int, size: tuple[int, int] = (64, 96)) -> tuple[float, float]:
    """(1 process, 2 processes) wall seconds for the same 2 jobs."""
    cores = os.cpu_count() or 2
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        jobs = tmp / "jobs.txt"
        img = GOLDEN / "inputs" / "start.png"
        jobs.write_text("".join(f"job {i} --d {i} --vs {sections} --i {img}\n" for i in (1, 2)))
        one = timed([sys.executable, "-m", "framepack_cli", *command(jobs, tmp / "one", size, steps)], env)
        two = timed([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                     "--master_port", "29561", "-m", "framepack_cli", *command(jobs, tmp / "two", size, steps)],
                    {**env, "OMP_NUM_THREADS": str(max(1, cores // 2))})
    return one, two


def measure(quick: bool = False) -> list[dict]:
    """Rows for bench/run.py: the 2-process batch's wall time relative to the 1-process one."""
    import torch

    one, two = times(2 if quick else 10, 1 if quick else 2)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    where = "2 GPUs" if gpus >= 2 else f"{os.cpu_count()} CPU cores shared"
    return [{"row": "generate 2 jobs: 1 process", "ratio": 1.0, "note": f"{one:.1f} s wall"},
            {"row": "generate 2 jobs: 2 processes", "ratio": two / one, "note": f"{two:.1f} s wall ({where})"}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sections", type=int, default=2)
    a = ap.parse_args()
    one, two = times(a.steps, a.sections)
    print(f"{'run':<28}{'wall s':>8}{'ratio':>8}")
    print(f"{'2 jobs, 1 process':<28}{one:>8.1f}{1.0:>8.2f}")
    print(f"{'2 jobs, 2 processes':<28}{two:>8.1f}{two / one:>8.2f}")


if __name__ == "__main__":
    main()
