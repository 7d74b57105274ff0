"""Dense attention kernels of the DiT blocks (`--attn_mode`, the training `--sdpa`-style flags) and `auto`.

Every kernel takes q/k/v as `[B, S, heads, head_dim]` (the layout of musubi's `attn_varlen_func` dense path) and
returns the same layout. The modes:

| mode                | kernel                                        | package (import / pip)                      |
|---------------------|-----------------------------------------------|---------------------------------------------|
| `sdpa`, `torch`     | `torch.nn.functional.scaled_dot_product_attention` | (PyTorch)                              |
| `flash`             | FlashAttention 2 `flash_attn_func`            | `flash_attn` / `flash-attn`                 |
| `flash3`            | FlashAttention 3 `flash_attn_func` (Hopper)   | `flash_attn_interface` / built from hopper/ |
| `sageattn`, `sage`  | SageAttention `sageattn(..., "NHD")`          | `sageattention` / `sageattention`           |
| `xformers`          | `memory_efficient_attention`                  | `xformers` / `xformers`                     |
| `auto`              | the first that imports and fits the device/dtype, in `AUTO_ORDER`, else sdpa |              |

Why not diffusers 0.42's `attention_dispatch.dispatch_attention_fn` (evaluated for this): it takes the same
layout and has the same kernels, but it decides what is installed once, when diffusers is imported
(`_CAN_USE_FLASH_ATTN` etc. are module constants), so a missing kernel surfaces as an error at the first
attention call (after the models have loaded) rather than as one line before, and an `auto` choice would
need its private registry. The calls themselves are one line per kernel, kept here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framepack_cli.errors import FramepackError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

ATTN_MODES = ("auto", "sdpa", "torch", "flash", "flash3", "sageattn", "sage", "xformers")
ALIASES = {"torch": "sdpa", "sage": "sageattn"}


@dataclass(frozen=True)
class Kernel:
    """An optional attention kernel: where it comes from and what it can run."""

    label: str
    module: str  # import name
    pip: str  # how to install it
    half_only: bool  # refuses float32 q/k/v
    min_capability: tuple[int, int] | None = None  # CUDA compute capability it needs (None: any CUDA GPU)
    max_capability: tuple[int, int] | None = None  # newest capability it supports (FlashAttention 3: Hopper only)


KERNELS: dict[str, Kernel] = {
    "flash": Kernel("FlashAttention", "flash_attn", "pip install flash-attn", True, (8, 0)),
    "flash3": Kernel("FlashAttention 3", "flash_attn_interface",
                     "build it from the hopper/ folder of github.com/Dao-AILab/flash-attention", True, (9, 0), (9, 0)),
    "sageattn": Kernel("SageAttention", "sageattention", "pip install sageattention", True, (8, 0)),
    "xformers": Kernel("xformers", "xformers", "pip install xformers", False),
}
# `auto` on a CUDA GPU with a half-precision DiT: the fastest kernel first. SageAttention quantises q/k to int8
# (the original FramePack prefers it too, and its README notes results change slightly).
AUTO_ORDER = ("flash3", "sageattn", "flash", "xformers")


def canonical(mode: str) -> str:
    """`torch` -> `sdpa`, `sage` -> `sageattn`; others unchanged."""
    return ALIASES.get(mode, mode)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SDPA wants [B, heads, S, D]; everything else here is [B, S, heads, D].
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _load(mode: str) -> AttentionFn:
    """Import the kernel of `mode` (raises ImportError, or OSError/RuntimeError from broken CUDA builds)."""
    if mode == "flash":
        fn = importlib.import_module("flash_attn").flash_attn_func
        return lambda q, k, v: fn(q, k, v)
    if mode == "flash3":
        fn3 = importlib.import_module("flash_attn_interface").flash_attn_func

        def flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = fn3(q, k, v)
            return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the softmax LSE

        return flash3
    if mode == "sageattn":
        sage = importlib.import_module("sageattention").sageattn
        return lambda q, k, v: sage(q, k, v, tensor_layout="NHD")
    if mode == "xformers":
        mea = importlib.import_module("xformers.ops").memory_efficient_attention
        return lambda q, k, v: mea(q, k, v)
    raise KeyError(mode)


def _import_problem(mode: str) -> str | None:
    """None when the kernel of `mode` imports, else the first line of why not."""
    try:
        _load(mode)
    except (ImportError, AttributeError, OSError, RuntimeError) as e:
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return None


def resolve_attention(attn_mode: str, alternative: str = "--attn_mode sdpa, or auto for the fastest installed kernel"
                      ) -> AttentionFn:
    """The dense attention function of an explicit `attn_mode` (`auto` must be resolved first: `choose_attention`).

    Args:
        attn_mode: one of `ATTN_MODES` but `auto`.
        alternative: what the hint of a missing package suggests instead (training says `--sdpa`).

    Raises:
        FramepackError: unknown mode, or the package the mode needs cannot be imported (names the package, how
            to install it and the alternative).
    """
    mode = canonical(attn_mode)
    if mode == "sdpa":
        return sdpa_attention
    if mode == "auto":
        raise FramepackError("attention mode 'auto' must be resolved for a device and dtype first "
                             "(framepack_cli.models.attention.choose_attention)")
    if mode not in KERNELS:
        modes = ", ".join(m for m in ATTN_MODES if m != "auto")
        raise FramepackError(f"unknown attention mode {attn_mode!r}", hint=f"use one of: {modes}")
    problem = _import_problem(mode)
    if problem is not None:
        k = KERNELS[mode]
        raise FramepackError(
            f"attention mode {attn_mode!r} needs {k.label} (the `{k.module}` package), which cannot be imported: "
            f"{problem}", hint=f"{k.pip}, or use {alternative}")
    return _load(mode)


def _fits(mode: str, dtype: torch.dtype, device: torch.device, capability: tuple[int, int] | None) -> str | None:
    """None when the kernel can run q/k/v of `dtype` on `device`, else why not (a phrase)."""
    k = KERNELS[mode]
    if device.type != "cuda":
        return f"{k.label} runs on CUDA GPUs only"
    if k.half_only and dtype == torch.float32:
        return f"{k.label} runs in float16 or bfloat16 only"
    if capability is not None:
        have = f"this GPU has {'.'.join(map(str, capability))}"
        if k.max_capability and not k.min_capability <= capability <= k.max_capability:
            return f"{k.label} runs on Hopper GPUs (CUDA compute capability 9.0) only and {have}"
        if k.min_capability and capability < k.min_capability:
            return (f"{k.label} needs CUDA compute capability {'.'.join(map(str, k.min_capability))} or newer and "
                    f"{have}")
    return None


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def choose_attention(attn_mode: str, dtype: torch.dtype, device: torch.device,
                     capability: tuple[int, int] | None = None) -> tuple[str, str | None]:
    """The kernel a run uses, checked before any model loads.

    Args:
        attn_mode: what the user asked for (`ATTN_MODES`).
        dtype: the DiT's dtype (q/k/v come in it).
        device: where the DiT runs.
        capability: CUDA compute capability (default: asked from the device).

    Returns:
        (mode, note): an explicit mode is returned as given (`torch` stays `torch`) with no note; `auto` returns
        the chosen kernel and one line saying so.

    Raises:
        FramepackError: unknown mode, a requested kernel that cannot be imported, or one that cannot run this
            dtype or device.
    """
    if capability is None:
        capability = _capability(device)
    mode = canonical(attn_mode)
    if mode == "auto":
        if device.type != "cuda":
            return "sdpa", f"Attention: sdpa (--attn_mode auto on {device.type}: the other kernels need a CUDA GPU)"
        if dtype == torch.float32:
            return "sdpa", "Attention: sdpa (--attn_mode auto with a float32 DiT: the fast kernels need bfloat16)"
        for cand in AUTO_ORDER:
            if _fits(cand, dtype, device, capability) is not None:
                continue
            if _import_problem(cand) is not None:
                continue
            note = f"Attention: {cand} (--attn_mode auto: the fastest installed kernel for this GPU)"
            if cand == "sageattn":
                note = note[:-1] + "; SageAttention changes results slightly, --attn_mode flash or sdpa for exact)"
            return cand, note
        skipped = [KERNELS[c].module for c in AUTO_ORDER if _fits(c, dtype, device, capability) is None]
        why = f"none of {', '.join(skipped)} is installed" if skipped else "no optional kernel fits this GPU"
        return "sdpa", f"Attention: sdpa (--attn_mode auto: {why})"
    resolve_attention(attn_mode)  # unknown or missing: one line
    if mode != "sdpa":
        problem = _fits(mode, dtype, device, capability)
        if problem is not None:
            if device.type != "cuda" or "float16" in problem:
                problem += f", but the DiT runs in {str(dtype).removeprefix('torch.')} on {device.type}"
            raise FramepackError(f"attention mode {attn_mode!r}: {problem}", hint="use --attn_mode sdpa, or auto")
    return attn_mode, None
