"""`accelerate launch --cpu --num_processes N` really starting N training processes.

accelerate's launcher starts a single process for `--cpu` unless an MPI host file is given (multi-CPU runs go
through `mpirun`); the process then trains alone although N were asked for. accelerate marks that launch
(`ACCELERATE_USE_CPU=True` and `MASTER_ADDR`/`MASTER_PORT`, set only when N > 1) without saying N, so this
module reads N from the launcher's own command line and starts the N processes with torch's elastic launcher
(`torch.distributed.run`, gloo), which accelerate inside each process recognises as a multi-CPU run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from framepack_cli.engine.progress import ProgressSink


def _launcher_processes(pid: int) -> int | None:
    """`--num_processes N` of the `accelerate launch` command line of process `pid` (Linux /proc), or None."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = [a.decode(errors="replace") for a in args]
    if not any("accelerate" in a for a in text[:3]):
        return None
    for i, a in enumerate(text):
        if a in ("--num_processes", "--num-processes") and i + 1 < len(text):
            value = text[i + 1]
        elif a.startswith(("--num_processes=", "--num-processes=")):
            value = a.split("=", 1)[1]
        else:
            continue
        try:
            return int(value)
        except ValueError:
            return None
    return None


def cpu_processes_requested(env: dict[str, str] | None = None, parent: int | None = None) -> int | None:
    """N when this process was started by `accelerate launch --cpu --num_processes N` (N > 1) without any
    process group around it; else None."""
    env = dict(os.environ) if env is None else env
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes"):
        return None
    if "MASTER_ADDR" not in env or "WORLD_SIZE" in env or "RANK" in env or "PMI_SIZE" in env \
            or "OMPI_COMM_WORLD_SIZE" in env:
        return None
    n = _launcher_processes(os.getppid() if parent is None else parent)
    return n if n is not None and n > 1 else None


def relaunch_on_cpus(n: int, sink: ProgressSink) -> int:
    """Run this same command in `n` processes (elastic launch on this machine) and return their exit code."""
    import subprocess

    sink.message(f"accelerate launch --cpu --num_processes {n}: starting {n} training processes (gloo)")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
           "--master_addr", env.get("MASTER_ADDR", "127.0.0.1"), "--master_port", env.get("MASTER_PORT", "29500"),
           "-m", "framepack_cli", *sys.argv[1:]]
    return subprocess.call(cmd, env=env)
