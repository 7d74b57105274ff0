"""`--blocks_to_swap` end to end on the tiny models: without CUDA it is accepted with one warning line and the
run is unchanged; with the swapper forced on (the fake transfer layer of tests/unit/test_block_swap.py on the
CPU) generation and training give the same results as without it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from framepack_cli.cli.app import main
from framepack_cli.models import block_swap
from tests.conftest import INPUTS, MODEL_ARGS
from tests.integration.test_train_cli import train_args, video_dataset
from tests.unit.test_block_swap import FakeTransfer

pytestmark = pytest.mark.slow

WARNING = ("Warning: --blocks_to_swap 2: block swap needs a CUDA GPU; on cpu every block stays in memory as usual "
           "(same results)")


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def gen(tmp_path, name, *extra):
    return ["generate", *MODEL_ARGS, "--video_size", "32", "48", "--infer_steps", "2", "--image_path",
            INPUTS / "start.png", "--prompt", "a cat", "--seed", "3", "--output_type", "latent", "--video_sections",
            "2", "--latent_window_size", "2", "--save_path", tmp_path, "--output_name", name, *extra]


def latent(tmp_path, name):
    return load_file(str(tmp_path / f"{name}_latent.safetensors"))["latent"]


@pytest.fixture
def forced_swap(monkeypatch):
    """The swapper on the CPU, through the fake transfer layer."""
    made = []

    def fake(device):
        made.append(FakeTransfer())
        return made[-1]

    monkeypatch.setattr(block_swap, "swap_supported", lambda device: True)
    monkeypatch.setattr(block_swap, "CudaTransfer", fake)
    return made


def test_generate_without_cuda_warns_once_and_equals_the_plain_run(tmp_path, capsys):
    code, _, err = cli(gen(tmp_path, "plain"), capsys)
    assert code == 0, err
    code, _, err = cli(gen(tmp_path, "swap", "--blocks_to_swap", "2", "--use_pinned_memory_for_block_swap"), capsys)
    assert code == 0, err
    assert err.splitlines().count(WARNING) == 1 and "block swap" not in err.replace(WARNING, "")
    assert torch.equal(latent(tmp_path, "plain"), latent(tmp_path, "swap"))


def test_generate_with_the_swapper_equals_the_plain_run(tmp_path, capsys, forced_swap):
    code, _, err = cli(gen(tmp_path, "plain"), capsys)
    assert code == 0, err
    assert not forced_swap
    code, _, err = cli(gen(tmp_path, "swap", "--blocks_to_swap", "2"), capsys)
    assert code == 0, err
    assert ("Block swap: 1 of 2 dual-stream and 1 of 2 single-stream DiT blocks stay in CPU memory and are copied "
            "to the GPU one block ahead") in err.splitlines()
    assert len(forced_swap) == 1 and forced_swap[0].copies > 0
    assert torch.equal(latent(tmp_path, "plain"), latent(tmp_path, "swap"))


@pytest.mark.parametrize("command", ["generate", "train"])
def test_more_blocks_than_the_model_has_is_one_line_exit_2(tmp_path, capsys, command):
    if command == "generate":
        args = gen(tmp_path, "x", "--blocks_to_swap", "3")
    else:
        args = train_args(video_dataset(tmp_path, only="clip_b*"), tmp_path / "out", "--blocks_to_swap", "3")
    code, out, err = cli(args, capsys)
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert errors == ["Error: --blocks_to_swap 3: this DiT has 4 blocks (2 dual-stream + 2 single-stream) and one "
                      "of each kind stays on the GPU, so at most 2 can be given; use --blocks_to_swap 2 or less"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_train_with_block_swap(tmp_path, capsys, monkeypatch, checkpointing):
    toml = video_dataset(tmp_path, only="clip_b*")
    extra = ["--max_train_steps", "2", *(["--gradient_checkpointing"] if checkpointing else [])]
    code, _, err = cli(train_args(toml, tmp_path / "plain", *extra), capsys)
    assert code == 0, err
    code, _, err = cli(train_args(toml, tmp_path / "cpu", *extra, "--blocks_to_swap", "2"), capsys)
    assert code == 0, err
    assert err.splitlines().count(WARNING) == 1
    made = []
    monkeypatch.setattr(block_swap, "swap_supported", lambda device: True)
    monkeypatch.setattr(block_swap, "CudaTransfer", lambda device: made.append(FakeTransfer()) or made[-1])
    code, _, err = cli(train_args(toml, tmp_path / "swap", *extra, "--blocks_to_swap", "2"), capsys)
    assert code == 0, err
    assert made and made[0].copies > 0 and "Block swap: 1 of 2 dual-stream" in err
    want = load_file(str(tmp_path / "plain" / "lora.safetensors"))
    for run in ("cpu", "swap"):
        got = load_file(str(tmp_path / run / "lora.safetensors"))
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), run


def test_train_with_h2d_only_block_swap(tmp_path, capsys, forced_swap, monkeypatch):
    """--block_swap_h2d_only (with --gradient_checkpointing, as the reference requires): one warning line
    without CUDA; with the swapper forced on it streams the evenly spaced blocks through the rings and the
    LoRA equals the plain run's."""
    toml = video_dataset(tmp_path, only="clip_b*")
    extra = ["--max_train_steps", "2", "--gradient_checkpointing"]
    h2d = ["--blocks_to_swap", "2", "--block_swap_h2d_only", "--block_swap_ring_size", "1"]
    code, _, err = cli(train_args(toml, tmp_path / "plain", *extra), capsys)
    assert code == 0, err
    monkeypatch.setattr(block_swap, "swap_supported", lambda device: False)
    code, _, err = cli(train_args(toml, tmp_path / "cpu", *extra, *h2d), capsys)
    assert code == 0, err
    assert [line for line in err.splitlines() if "block swap" in line.lower()] == [
        "Warning: --blocks_to_swap 2 --block_swap_h2d_only: block swap needs a CUDA GPU; on cpu every block stays "
        "in memory as usual (same results)"]
    monkeypatch.setattr(block_swap, "swap_supported", lambda device: True)
    code, _, err = cli(train_args(toml, tmp_path / "swap", *extra, *h2d), capsys)
    assert code == 0, err
    assert ("Block swap (host-to-device only): 1 of 2 dual-stream and 1 of 2 single-stream DiT blocks, evenly "
            "spaced, stay in CPU memory and stream through 1 + 1 GPU slots (--block_swap_ring_size 1 per block "
            "list)") in err.splitlines()
    assert forced_swap and forced_swap[-1].copies > 0
    want = load_file(str(tmp_path / "plain" / "lora.safetensors"))
    for run in ("cpu", "swap"):
        got = load_file(str(tmp_path / run / "lora.safetensors"))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), run


def test_one_frame_with_the_swapper_equals_the_plain_run(tmp_path, capsys, forced_swap):
    base = ["one-frame", *MODEL_ARGS, "--video_size", "48", "64", "--infer_steps", "2", "--image_path",
            INPUTS / "start.png", "--control_image_path", INPUTS / "start.png", "--prompt", "x", "--seed", "4",
            "--output_type", "latent", "--save_path", tmp_path]
    assert cli([*base, "--output_name", "plain"], capsys)[0] == 0
    code, _, err = cli([*base, "--output_name", "swap", "--blocks_to_swap", "1"], capsys)
    assert code == 0, err
    assert "Block swap: 0 of 2 dual-stream and 1 of 2 single-stream" in err and forced_swap[0].copies > 0
    assert torch.equal(latent(tmp_path, "plain"), latent(tmp_path, "swap"))


def test_fp8_scaled_with_the_swapper_equals_fp8_scaled_alone(tmp_path, capsys, forced_swap):
    """--memory auto picks --fp8_scaled with --blocks_to_swap on small GPUs: the swapper must move the fp8
    weights (and use their scales) like any other."""
    code, _, err = cli(gen(tmp_path, "fp8", "--fp8_scaled"), capsys)
    assert code == 0, err
    code, _, err = cli(gen(tmp_path, "fp8swap", "--fp8_scaled", "--blocks_to_swap", "2"), capsys)
    assert code == 0, err
    assert len(forced_swap) == 1 and forced_swap[0].copies > 0
    assert torch.equal(latent(tmp_path, "fp8"), latent(tmp_path, "fp8swap"))
