"""Several processes on one machine: which process am I, and `accelerate launch --cpu --num_processes N` really
starting N processes.

- `launched()`: the process group a launcher (`accelerate launch`, `torchrun`, `python -m torch.distributed.run`,
  or `relaunch_on_cpus`) started this process in, read from the environment it sets (`WORLD_SIZE`, `RANK`,
  `LOCAL_RANK`); None in a plain run.
- accelerate's launcher starts a single process for `--cpu` unless an MPI host file is given (multi-CPU runs go
  through `mpirun`); the process would then work alone although N were asked for. accelerate marks that launch
  (`ACCELERATE_USE_CPU=True` and `MASTER_ADDR`/`MASTER_PORT`, set only when N > 1) without saying N, so
  `cpu_processes_requested` reads N from the launcher's own command line, and `relaunch_on_cpus` runs the same
  command in N processes with the environment torch's elastic launcher would give them (gloo), which
  accelerate inside each process recognises as a multi-CPU run (training) and `launched()` reads (generate).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from framepack_cli.engine.progress import ProgressSink


@dataclass(frozen=True)
class Launched:
    """This process's place in a group of `world` processes (`local_rank`: its index on this machine)."""

    world: int
    rank: int
    local_rank: int
    local_world: int


def launched(env: dict[str, str] | None = None) -> Launched | None:
    """The process group this process was started in (from `WORLD_SIZE`, `RANK`, `LOCAL_RANK`), or None."""
    env = dict(os.environ) if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        return None
    if world <= 1:
        return None
    return Launched(world=world, rank=rank, local_rank=local, local_world=local_world)


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


def rank_env(env: dict[str, str], n: int, rank: int, port: str) -> dict[str, str]:
    """The environment of process `rank` of `n` on this machine (what torch's elastic launcher sets)."""
    return {**env, "WORLD_SIZE": str(n), "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(n),
            "GROUP_RANK": "0", "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"), "MASTER_PORT": port}


def relaunch_on_cpus(n: int, sink: ProgressSink, what: str = "training", argv: list[str] | None = None) -> int:
    """Run this same command (`argv`, default `sys.argv[1:]`) in `n` processes on this machine (gloo) and
    return the group's exit code: rank 0's when it failed, else the first failed rank's, else 0.

    A process that dies (killed, crashed) ends the others, so none waits for it forever; their output goes
    straight to this terminal.
    """
    import signal
    import subprocess
    import time

    sink.message(f"accelerate launch --cpu --num_processes {n}: starting {n} {what} processes (gloo)")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    port = env.get("MASTER_PORT", "29500")
    cmd = [sys.executable, "-m", "framepack_cli", *(sys.argv[1:] if argv is None else argv)]
    procs = [subprocess.Popen(cmd, env=rank_env(env, n, r, port)) for r in range(n)]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode is not None and p.returncode != 0 for p in procs):
                break  # one died outside the group's own error reporting: end the rest
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the children too: they stop and say so; wait for them below
    finally:
        deadline = time.monotonic() + 10
        for p in procs:
            if p.poll() is None and any(q.returncode not in (None, 0) for q in procs):
                # a group whose members report errors through the group exits together within seconds
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    codes = [p.returncode if p.returncode >= 0 else 128 - p.returncode for p in procs]
    return codes[0] or next((c for c in codes if c), 0)
