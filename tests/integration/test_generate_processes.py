"""`framepack generate --from_file` under several processes (gloo on the CPU): the union of the outputs is the
single-process run's (same names, identical latents), each file written once, one summary and one error line
from rank 0; what cannot be split is refused in one line before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import INPUTS, MODEL_ARGS, REPO

pytestmark = pytest.mark.slow

RUN = ["generate", *MODEL_ARGS, "--video_size", "32", "48", "--infer_steps", "1", "--latent_window_size", "2",
       "--output_type", "latent"]


def env(**extra) -> dict[str, str]:
    # one thread per process in both runs: float sums in another thread count differ in the last bits
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "ACCELERATE_USE_CPU")}
    return {**base, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def framepack(prefix: list, args: list, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in [*prefix, *args]], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=kw.pop("env", None) or env(), **kw)


def jobs_file(tmp_path, *lines: str):
    path = tmp_path / "jobs.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_accelerate_cpu_two_processes_write_what_one_process_writes(tmp_path):
    """`accelerate launch --cpu --num_processes 2` (relaunched as 2 gloo processes): 3 equal jobs go 2 + 1,
    each file once under the single-process names (`--output_name`, `_1`, `_2` in job order), the latents
    bit-identical; stdout holds only rank 0's `Wrote` lines, in job order."""
    img = INPUTS / "start.png"
    jobs = jobs_file(tmp_path, f"a cat --d 1 --vs 1 --i {img}", f"a dog --d 2 --vs 1 --i {img}",
                     f"a bird --d 3 --vs 2 --i {img}")
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = framepack([sys.executable, "-m", "framepack_cli"], [*RUN, "--from_file", jobs, "--save_path", one,
                                                             "--output_name", "clip"], tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29517", "-m", "framepack_cli"]
    r2 = framepack(launch, [*RUN, "--from_file", jobs, "--save_path", two, "--output_name", "clip"], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    names = ["clip_latent.safetensors", "clip_1_latent.safetensors", "clip_2_latent.safetensors"]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir()) == sorted(names)
    for name in names:
        a, b = load_file(str(one / name)), load_file(str(two / name))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name
    assert r2.stdout.splitlines() == [f"Wrote {two / n}" for n in names]
    # the 2-section job is the largest: it goes first, to rank 0; the two 1-section ones share rank 1
    assert "starting 2 generate processes (gloo)" in r2.stderr
    assert ("Batch: 3 of 3 job(s) done in 2 processes (rank 0 on cpu: jobs.txt line 3; "
            "rank 1 on cpu: jobs.txt line 1, jobs.txt line 2)") in r2.stderr
    assert r2.stderr.count("Batch:") == 1


def test_torchrun_bad_line_refused_once_other_rank_idle(tmp_path):
    """`python -m torch.distributed.run --nproc_per_node 2`: a bad line is refused on every rank before any
    model loads and said once; the one good job runs on rank 0, rank 1 has none; one error line, exit non-zero."""
    jobs = jobs_file(tmp_path, f"a cat --d 1 --vs 1 --i {INPUTS / 'start.png'}", "a dog --d 2 --bogus 3",
                     f"a cow --d 3 --i {tmp_path / 'missing.png'}")
    out = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_port", "29519", "-m", "framepack_cli"]
    r = framepack(torchrun, [*RUN, "--from_file", jobs, "--save_path", out], tmp_path)
    assert r.returncode != 0
    assert r.stderr.count("Error: jobs.txt line 2: unknown inline option --bogus") == 1, r.stderr[-3000:]
    assert r.stderr.count("missing.png") == 1, r.stderr[-3000:]
    assert "rank 1 on cpu: no job" in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: --from_file")]
    assert errors == ["Error: --from_file: 2 of 3 job(s) failed: jobs.txt line 2, jobs.txt line 3"]
    latents = sorted(out.glob("*_latent.safetensors"))
    assert [p.name.split("_")[-2] for p in latents] == ["1"]
    assert r.stdout.splitlines() == [f"Wrote {latents[0]}"]
    assert r.stderr.count("Loading DiT") == 1  # rank 1 loads nothing


@pytest.mark.parametrize("rank", [0, 1])
def test_interactive_under_two_processes_is_refused_in_one_line(tmp_path, rank):
    """Each rank refuses `--interactive` before anything loads: rank 0 in one line, rank 1 silently; both
    exit 2."""
    rank_env = env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT="29521")
    r = framepack([sys.executable, "-m", "framepack_cli"], [*RUN, "--interactive", "--save_path", tmp_path / "o"],
                  tmp_path, env=rank_env, input="a cat\n")
    assert r.returncode == 2
    assert r.stdout == ""
    if rank == 0:
        assert r.stderr.splitlines() == [
            "Error: --interactive: reads prompts from one console and cannot run in 2 processes (accelerate launch "
            "/ torchrun); run `framepack generate --interactive ...` in one process, or put the prompts in a "
            "--from_file list"]
    else:
        assert r.stderr == ""
    assert not (tmp_path / "o").exists()
