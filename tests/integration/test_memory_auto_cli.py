"""`--memory auto|none` and `--blocks_to_swap auto` through the CLI on the tiny models (CPU: auto does nothing and
says so only when asked for)."""

from __future__ import annotations

import pytest

from tests.integration.test_memory_cli import cli, gen

pytestmark = pytest.mark.slow


def test_memory_auto_on_cpu_runs_and_says_it_does_nothing(tmp_path, capsys):
    code, out, err = gen(tmp_path, capsys, "--memory", "auto")
    assert code == 0 and out.startswith("Wrote ")
    assert err.count("Memory:") == 1
    assert "Memory: --memory auto does nothing on cpu (every model runs in RAM; nothing to plan)" in err


def test_blocks_to_swap_auto_on_cpu_with_memory_none(tmp_path, capsys):
    """(The default on the CPU prints nothing: tests/unit/test_memory_plan.py, and every other CLI run here.)"""
    code, out, err = gen(tmp_path, capsys, "--blocks-to-swap", "auto", "--memory", "none")
    assert code == 0 and out.startswith("Wrote ")
    assert err.count("Memory:") == 1
    assert "Memory: --blocks_to_swap auto does nothing on cpu (every model runs in RAM; nothing to plan)" in err


def test_bad_values_are_one_line_exit_2(tmp_path, capsys):
    code, _, err = cli(["generate", "--blocks_to_swap", "many", "--memory", "half", "--save_path", tmp_path], capsys)
    assert code == 2
    assert "--blocks_to_swap: 'many' is not an integer or auto" in err
    assert "--memory: 'half' is not one of auto, none" in err
