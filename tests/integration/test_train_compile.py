"""`framepack train --compile` on the tiny models: the compiled blocks (with their LoRA hooks) train the same LoRA
as the eager blocks; `--dynamo_backend` stays refused in one line (accelerate's whole-model plugin is not built)."""

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


def test_dynamo_backend_is_refused_in_one_line(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    code, out, err = cli(train_args(toml, tmp_path / "out", "--dynamo_backend", "INDUCTOR"), capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "Error: --dynamo_backend INDUCTOR: not built yet in framepack train (accelerate's whole-model TorchDynamo "
        "plugin; --compile compiles each DiT block); use --compile instead"]


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
