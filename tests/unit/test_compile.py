"""`--compile`: each DiT block compiled in place, equal to eager; and the one-line fallback without a compiler.

The wiring is proven with the `aot_eager` backend (dynamo + AOT autograd, no code generation: seconds on the
tiny model). inductor itself on this CPU was checked by hand (max |difference| 1.9e-6 on dit_vanilla, about
two minutes of compiling on 2 shared cores), too slow for the suite.
"""

from __future__ import annotations

import pytest
import torch

from framepack_cli.models import compile as fcompile
from framepack_cli.models.compile import CompileSettings, compile_blocks
from framepack_cli.models.transformer import load_dit
from tests.conftest import MODELS, golden

ATOL, RTOL = 2e-5, 1e-4


def _inputs() -> dict:
    tensors, _ = golden("unit/dit_vanilla")
    return {k[3:]: v for k, v in tensors.items() if k.startswith("in.")}


def _shorter(kwargs: dict, t: int) -> dict:
    """The same call with `t` noisy latent frames (another token count, like another section)."""
    return dict(kwargs, hidden_states=kwargs["hidden_states"][:, :, :t], latent_indices=kwargs["latent_indices"][:, :t])


def _forwards_overridden(model) -> int:
    return sum("forward" in m.__dict__ for m in model.modules())


@torch.no_grad()
def test_compiled_blocks_equal_eager_across_token_counts():
    dit = load_dit(MODELS / "dit_single.safetensors")
    kwargs = _inputs()
    eager, eager_short = dit(**kwargs), dit(**_shorter(kwargs, 5))
    keys = list(dit.state_dict())
    blocks = [*dit.transformer_blocks, *dit.single_transformer_blocks]
    lines: list[str] = []
    torch._dynamo.reset()
    compiled = compile_blocks(dit, CompileSettings(backend="eager"), lines.append)
    assert compiled is not None and compiled.failed is None and lines == []
    assert [*dit.transformer_blocks, *dit.single_transformer_blocks] == blocks  # same modules, compiled in place
    assert list(dit.state_dict()) == keys  # no `_orig_mod.` in the names (LoRA, saving, block swap unchanged)
    assert _forwards_overridden(dit) == len(blocks)
    torch.testing.assert_close(dit(**kwargs), eager, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(dit(**_shorter(kwargs, 5)), eager_short, atol=ATOL, rtol=RTOL)
    assert compiled.failed is None and lines == []


@torch.no_grad()
def test_each_block_kind_compiles_once_per_shape():
    graphs = []

    @torch._dynamo.register_backend(name="framepack_test_counting")
    def counting(gm, example_inputs):  # noqa: ARG001
        graphs.append(1)
        return gm.forward

    dit = load_dit(MODELS / "dit_single.safetensors")
    kwargs = _inputs()
    eager = dit(**kwargs)
    torch._dynamo.reset()
    compile_blocks(dit, CompileSettings(backend="framepack_test_counting", dynamic="false"), print)
    out = dit(**kwargs)
    dit(**kwargs)
    torch.testing.assert_close(out, eager, atol=ATOL, rtol=RTOL)
    # one graph for the dual-stream blocks' shared forward, one for the single-stream ones: the later blocks'
    # inputs (views of the previous block's joint tensor) must not compile the shared code again
    assert len(graphs) == 2


@torch.no_grad()
def test_a_compiler_error_at_the_first_call_falls_back_in_one_line():
    calls = []

    @torch._dynamo.register_backend(name="framepack_test_broken")
    def broken(gm, example_inputs):  # noqa: ARG001
        calls.append(1)
        raise RuntimeError("cc1plus: fatal error: no such file\nsecond line")

    dit = load_dit(MODELS / "dit_single.safetensors")
    kwargs = _inputs()
    eager = dit(**kwargs)
    lines: list[str] = []
    torch._dynamo.reset()
    compiled = compile_blocks(dit, CompileSettings(backend="framepack_test_broken"), lines.append)
    out = dit(**kwargs)
    out2 = dit(**kwargs)
    assert len(lines) == 1 and lines[0].startswith("Warning: --compile: ")
    assert lines[0] == ("Warning: --compile: the framepack_test_broken backend failed (RuntimeError: cc1plus: fatal "
                        "error: no such file); the DiT blocks run uncompiled")
    assert "\n" not in lines[0]
    assert compiled.failed is not None and len(calls) == 1  # never tried again
    assert _forwards_overridden(dit) == 0  # every block back to its own forward
    torch.testing.assert_close(out, eager, atol=0, rtol=0)
    torch.testing.assert_close(out2, eager, atol=0, rtol=0)


def test_no_cpp_compiler_is_said_up_front(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    dit = load_dit(MODELS / "dit_single.safetensors")
    lines: list[str] = []
    assert compile_blocks(dit, CompileSettings(), lines.append) is None
    assert lines == ["Warning: --compile: no C++ compiler found (/nonexistent/g++; install g++ or set CXX); the DiT "
                     "blocks run uncompiled"]
    assert _forwards_overridden(dit) == 0


def test_inductor_import_error_is_said_up_front(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch._inductor.config", None)
    assert fcompile.compiler_problem("inductor", torch.device("cpu")).startswith(
        "torch's inductor compiler cannot be imported (")
    assert fcompile.compiler_problem("aot_eager", torch.device("cpu")) is None


def test_block_swap_keeps_linear_forwards_eager():
    dit = load_dit(MODELS / "dit_single.safetensors")
    blocks = [*dit.transformer_blocks, *dit.single_transformer_blocks]
    linears = [m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    compiled = compile_blocks(dit, CompileSettings(backend="aot_eager"), print, exclude_linear=True)
    assert _forwards_overridden(dit) == len(blocks) + len(linears)
    compiled.restore()
    assert _forwards_overridden(dit) == 0


def test_settings_from_options_and_describe():
    from types import SimpleNamespace

    o = SimpleNamespace(compile_backend="inductor", compile_mode="max-autotune-no-cudagraphs", compile_dynamic="true",
                        compile_fullgraph=True, compile_cache_size_limit=32)
    s = CompileSettings.from_options(o)
    assert s == CompileSettings("inductor", "max-autotune-no-cudagraphs", "true", True, 32)
    assert s.describe() == ("--compile: each DiT block compiled on first use (backend inductor, mode "
                            "max-autotune-no-cudagraphs, dynamic shapes, fullgraph)")


@pytest.fixture(autouse=True)
def _reset_dynamo():
    yield
    torch._dynamo.reset()


@torch.no_grad()
def test_compiled_with_block_swap_and_with_fp8_scaled_equal_their_eager_runs():
    from framepack_cli.models.block_swap import enable_block_swap
    from tests.unit.test_block_swap import FakeTransfer

    kwargs = _inputs()
    plain = load_dit(MODELS / "dit_single.safetensors")
    want = plain(**kwargs)
    swapped = load_dit(MODELS / "dit_single.safetensors")
    enable_block_swap(swapped, 2, torch.device("cpu"), transfer=FakeTransfer())  # evicted weights read NaN
    torch._dynamo.reset()
    lines: list[str] = []
    compile_blocks(swapped, CompileSettings(backend="eager"), lines.append, device="cpu")  # Linears stay eager
    n_linear = sum(isinstance(m, torch.nn.Linear) for b in swapped.transformer_blocks for m in b.modules())
    assert _forwards_overridden(swapped) > n_linear  # the swapper's model: Linear forwards excluded
    assert torch.equal(swapped(**kwargs), want) and lines == []

    fp8 = load_dit(MODELS / "dit_single.safetensors", fp8="fp8_scaled")
    want_fp8 = fp8(**kwargs)
    compile_blocks(fp8, CompileSettings(backend="eager"), lines.append)  # dequantising Linears compiled too
    torch.testing.assert_close(fp8(**kwargs), want_fp8, atol=ATOL, rtol=RTOL)
    assert lines == []
