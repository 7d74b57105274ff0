"""`--attn_mode`: which kernel `auto` picks, and the one line for a missing or unfit kernel.

The optional kernels (flash-attn 2/3, SageAttention, xformers) cannot run on this CPU-only machine: these tests
install fake modules in `sys.modules` (a fake kernel records its call) or block the import (`None` entry), and
pass the CUDA capability in, so the selection logic is what is tested, not the kernels.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from framepack_cli.errors import FramepackError
from framepack_cli.models import attention
from framepack_cli.models.attention import choose_attention, resolve_attention

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
MODULES = {"flash": "flash_attn", "flash3": "flash_attn_interface", "sageattn": "sageattention",
           "xformers": "xformers"}


def _fake(monkeypatch, installed: set[str], calls: list | None = None) -> None:
    """Make exactly the kernels in `installed` importable (fakes that record their calls)."""
    def kernel(name):
        def fn(q, k, v, **kw):
            if calls is not None:
                calls.append((name, kw))
            return q + 0
        return fn

    for mode, module in MODULES.items():
        if mode not in installed:
            monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
            if module == "xformers":
                monkeypatch.setitem(sys.modules, "xformers.ops", None)
            continue
        mod = types.ModuleType(module)
        if mode == "flash":
            mod.flash_attn_func = kernel(mode)
        elif mode == "flash3":
            mod.flash_attn_func = lambda q, k, v, fn=kernel(mode): (fn(q, k, v), None)  # FA3 builds return the LSE
        elif mode == "sageattn":
            mod.sageattn = kernel(mode)
        else:
            ops = types.ModuleType("xformers.ops")
            ops.memory_efficient_attention = kernel(mode)
            mod.ops = ops
            monkeypatch.setitem(sys.modules, "xformers.ops", ops)
        monkeypatch.setitem(sys.modules, module, mod)


@pytest.mark.parametrize("installed, capability, expected", [
    ({"flash3", "sageattn", "flash", "xformers"}, (9, 0), "flash3"),
    ({"flash3", "sageattn", "flash", "xformers"}, (8, 9), "sageattn"),  # FA3 is Hopper only
    ({"flash3", "sageattn", "flash", "xformers"}, (12, 0), "sageattn"),
    ({"flash", "xformers"}, (8, 0), "flash"),
    ({"flash", "xformers"}, (7, 5), "xformers"),  # flash-attn 2 needs Ampere
    ({"xformers"}, (8, 6), "xformers"),
    (set(), (9, 0), "sdpa"),
])
def test_auto_picks_the_fastest_installed_kernel_that_fits(monkeypatch, installed, capability, expected):
    _fake(monkeypatch, installed)
    mode, note = choose_attention("auto", torch.bfloat16, CUDA, capability)
    assert mode == expected
    assert note.startswith(f"Attention: {expected} (--attn_mode auto")
    assert "\n" not in note


def test_auto_on_cpu_or_float32_is_sdpa_even_with_kernels_installed(monkeypatch):
    _fake(monkeypatch, set(MODULES))
    assert choose_attention("auto", torch.float32, CPU) == (
        "sdpa", "Attention: sdpa (--attn_mode auto on cpu: the other kernels need a CUDA GPU)")
    assert choose_attention("auto", torch.bfloat16, CPU)[0] == "sdpa"
    assert choose_attention("auto", torch.float32, CUDA, (9, 0)) == (
        "sdpa", "Attention: sdpa (--attn_mode auto with a float32 DiT: the fast kernels need bfloat16)")
    # xformers also runs float32, but auto keeps SDPA for float32 (xformers is not faster there)


def test_auto_says_what_is_missing(monkeypatch):
    _fake(monkeypatch, set())
    assert choose_attention("auto", torch.float16, CUDA, (9, 0))[1] == (
        "Attention: sdpa (--attn_mode auto: none of flash_attn_interface, sageattention, flash_attn, xformers is "
        "installed)")


def test_auto_sage_note_warns_results_change(monkeypatch):
    _fake(monkeypatch, {"sageattn"})
    assert "SageAttention changes results slightly" in choose_attention("auto", torch.bfloat16, CUDA, (8, 9))[1]


def test_a_broken_build_is_skipped_by_auto(monkeypatch):
    _fake(monkeypatch, {"flash"})
    real = attention._load

    def broken(mode):
        if mode == "flash3":
            raise OSError("libcudart.so.12: cannot open shared object file")
        return real(mode)

    monkeypatch.setattr(attention, "_load", broken)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.ModuleType("flash_attn_interface"))
    assert choose_attention("auto", torch.bfloat16, CUDA, (9, 0))[0] == "flash"


@pytest.mark.parametrize("mode, line", [
    ("flash", "attention mode 'flash' needs FlashAttention (the `flash_attn` package), which cannot be imported: "
              "import of flash_attn halted; None in sys.modules (pip install flash-attn, or use --attn_mode sdpa, "
              "or auto for the fastest installed kernel)"),
    ("sage", "attention mode 'sage' needs SageAttention (the `sageattention` package), which cannot be imported: "
             "import of sageattention halted; None in sys.modules (pip install sageattention, or use --attn_mode "
             "sdpa, or auto for the fastest installed kernel)"),
    ("flash3", "attention mode 'flash3' needs FlashAttention 3 (the `flash_attn_interface` package), which cannot "
               "be imported: import of flash_attn_interface halted; None in sys.modules (build it from the hopper/ "
               "folder of github.com/Dao-AILab/flash-attention, or use --attn_mode sdpa, or auto for the fastest "
               "installed kernel)"),
])
def test_a_missing_requested_kernel_is_one_line(monkeypatch, mode, line):
    _fake(monkeypatch, set())
    with pytest.raises(FramepackError) as e:
        choose_attention(mode, torch.bfloat16, CUDA, (9, 0))
    assert str(e.value) == line


def test_a_requested_kernel_that_cannot_run_here(monkeypatch):
    _fake(monkeypatch, set(MODULES))
    with pytest.raises(FramepackError) as e:
        choose_attention("xformers", torch.bfloat16, CPU)
    assert str(e.value) == ("attention mode 'xformers': xformers runs on CUDA GPUs only, but the DiT runs in "
                            "bfloat16 on cpu (use --attn_mode sdpa, or auto)")
    with pytest.raises(FramepackError, match="FlashAttention 3 runs on Hopper GPUs"):
        choose_attention("flash3", torch.bfloat16, CUDA, (8, 9))


@pytest.mark.parametrize("mode", ["flash", "flash3", "sageattn", "sage", "xformers"])
def test_explicit_modes_call_their_kernel(monkeypatch, mode):
    calls: list = []
    _fake(monkeypatch, set(MODULES), calls)
    assert choose_attention(mode, torch.bfloat16, CUDA, (9, 0)) == (mode, None)  # explicit: kept as given
    q = torch.randn(1, 5, 2, 4)
    out = resolve_attention(mode)(q, q, q)
    assert torch.equal(out, q) and len(calls) == 1
    name, kw = calls[0]
    assert name == attention.canonical(mode)
    if name == "sageattn":
        assert kw == {"tensor_layout": "NHD"}  # the reference's call


def test_torch_and_sdpa_are_pytorch_sdpa():
    q, k, v = (torch.randn(2, 7, 3, 8) for _ in range(3))
    ref = torch.softmax(torch.einsum("bshd,bthd->bhst", q, k) / 8**0.5, -1)
    ref = torch.einsum("bhst,bthd->bshd", ref, v)
    for mode in ("torch", "sdpa"):
        assert choose_attention(mode, torch.float32, CPU) == (mode, None)
        torch.testing.assert_close(resolve_attention(mode)(q, k, v), ref, atol=1e-5, rtol=1e-5)


def test_unknown_mode():
    with pytest.raises(FramepackError, match="unknown attention mode 'nope'"):
        choose_attention("nope", torch.float32, CPU)
