"""`--memory auto` with `--from_file` / `--interactive` through the CLI, with a fake CUDA device (resolve_device
and the free-memory probe replaced; the jobs themselves are not run): the plan is made for the file's largest
job before any model loads, and an interactive prompt that would not fit is refused in one line."""

from __future__ import annotations

import io

import pytest
import torch

from framepack_cli.cli.app import main
from framepack_cli.engine import generate, resources, session
from framepack_cli.engine.resources import GiB
from tests.conftest import INPUTS, MODEL_ARGS

pytestmark = pytest.mark.slow


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def fake_cuda(monkeypatch):
    """A 4 GiB GPU as far as the planning goes; the jobs that would run on it are collected instead."""
    jobs = []
    for module in (generate, session):  # the batch's own check and the run's preparation
        monkeypatch.setattr(module, "resolve_device", lambda name=None: torch.device("cuda"))
    monkeypatch.setattr(resources, "device_memory",
                        lambda device: (4 * GiB, 4 * GiB) if getattr(device, "type", "") == "cuda" else
                        resources.ram())
    monkeypatch.setattr(generate, "run_jobs", lambda batch, models, sink, **kw: jobs.extend(batch) or [])
    return jobs


def base(tmp_path):
    return ["generate", *MODEL_ARGS, "--video_size", "64", "64", "--image_path", INPUTS / "start.png",
            "--save_path", tmp_path / "out"]


def test_from_file_plans_for_the_largest_job(tmp_path, capsys, fake_cuda):
    lines = tmp_path / "jobs.txt"
    lines.write_text("a cat --w 64 --h 64\n# a comment\na dog --w 960 --h 960 --vs 2\na bird --vs 1\n")
    code, _, err = cli([*base(tmp_path), "--from_file", lines], capsys)
    assert code == 0, err
    memory = [line for line in err.splitlines() if line.startswith("Memory:")]
    assert len(memory) == 1
    assert memory[0].startswith("Memory: auto chose bfloat16 DiT --vae_chunk_size 32 "
                                "--vae_spatial_tile_sample_min_size 128 (estimated: ")
    assert memory[0].endswith("; planned for the largest job, jobs.txt line 3: 960x960, 2 sections)")
    assert len(fake_cuda) == 3  # every job gets the planned settings
    assert all(j.opts.vae_spatial_tile_sample_min_size == 128 and j.opts.vae_chunk_size == 32 for j in fake_cuda)
    # A single job of the small size alone needs nothing.
    code, _, err = cli([*base(tmp_path), "--prompt", "a cat"], capsys)
    assert [line for line in err.splitlines() if line.startswith("Memory:")][0].startswith(
        "Memory: auto chose bfloat16 DiT (estimated: ")


def test_interactive_prompt_that_would_not_fit_is_one_line(tmp_path, capsys, fake_cuda, monkeypatch):
    """--interactive plans for the command line's request; a prompt asking for more than the GPU holds with
    those settings is refused in one line and the session goes on."""
    monkeypatch.setattr("sys.stdin", io.StringIO("a cat\na huge cat --w 4096 --h 4096 --vs 40\nanother cat\n"))
    code, _, err = cli([*base(tmp_path), "--interactive"], capsys)
    assert code == 0, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: prompt 2: not enough GPU memory for ")
    assert "cuda has 4.0 GiB free" in errors[0]
    assert [j.label for j in fake_cuda] == ["prompt 1", "prompt 3"]
