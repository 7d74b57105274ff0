"""`framepack train --compile` on the tiny models: the compiled blocks (with their LoRA hooks) train the same LoRA
as the eager blocks; `--dynamo_backend` (accelerate's names) compiles the blocks the same way."""

from __future__ import annotations

import pytest
import torch

from tests.integration.test_train_cli import cli, tensors, train_args, video_dataset

pytestmark = pytest.mark.slow


def test_compiled_training_equals_eager(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    runs = {}
    # compiled with activation checkpointing around each compiled block (checkpointing alone changes nothing)
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile_backend", "eager",
                                                      "--gradient_checkpointing"])):
        code, _, err = cli(train_args(toml, tmp_path / name, "--max_train_steps", "2", *extra), capsys)
        assert code == 0, err
        if name == "compiled":
            assert ("--compile: each DiT block compiled on first use (backend eager, mode default, auto shapes)"
                    in err.splitlines()) and "Warning" not in err, err
        runs[name] = tensors(tmp_path / name / "lora.safetensors")
    for k in runs["eager"]:
        torch.testing.assert_close(runs["compiled"][k], runs["eager"][k], atol=1e-6, rtol=1e-5)


def test_dynamo_backend_compiles_the_blocks(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    runs = {}
    for name, extra in (("eager", []), ("dynamo", ["--dynamo_backend", "EAGER", "--dynamo_dynamic"])):
        code, _, err = cli(train_args(toml, tmp_path / name, "--max_train_steps", "2", *extra), capsys)
        assert code == 0, err
        if name == "dynamo":
            assert ("--dynamo_backend EAGER: each DiT block compiled on first use (backend eager, mode default, "
                    "dynamic shapes)" in err.splitlines()) and "Warning" not in err, err
        runs[name] = tensors(tmp_path / name / "lora.safetensors")
    for k in runs["eager"]:
        torch.testing.assert_close(runs["dynamo"][k], runs["eager"][k], atol=1e-6, rtol=1e-5)


def test_dynamo_backend_with_compile_or_unknown_is_one_line(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    code, out, err = cli(train_args(toml, tmp_path / "out", "--dynamo_backend", "INDUCTOR", "--compile"), capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "Error: --compile and --dynamo_backend INDUCTOR both compile the DiT blocks; give one of them"]
    code, out, err = cli(train_args(toml, tmp_path / "out", "--dynamo_backend", "TVM", "--max_train_steps", "1"),
                         capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("Warning: --dynamo_backend TVM: ")]
    assert len(warned) == 1 and warned[0].endswith("; the DiT blocks run uncompiled"), err


@pytest.mark.parametrize("flag, module, line", [
    ("--flash3", "flash_attn_interface", "Error: --flash3 needs FlashAttention 3 (the `flash_attn_interface` package), "
     "which cannot be imported: No module named 'flash_attn_interface'; build it from the hopper/ folder of "
     "github.com/Dao-AILab/flash-attention, or use --sdpa"),
    ("--xformers", "xformers", "Error: --xformers needs xformers (the `xformers` package), which cannot be imported: "
     "No module named 'xformers'; pip install xformers, or use --sdpa"),
])
def test_a_missing_training_kernel_is_one_line(tmp_path, capsys, flag, module, line):
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    toml = video_dataset(tmp_path, only="clip_b*")
    code, out, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1", flag), capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [line]
