"""`--compile`: torch.compile each DiT block (the reference's `compile_transformer`), with a clean fallback.

Each dual- and single-stream block's `forward` is compiled on its own (`--compile_backend`, `--compile_mode`,
`--compile_dynamic`, `--compile_fullgraph`; `--compile_cache_size_limit` sets `torch._dynamo.config.
cache_size_limit`, as the reference does). The blocks stay the same modules (the compiled function is set as the
instance's `forward`), so parameter names, LoRA modules and the block swapper see the model unchanged. The
default `--compile_dynamic` (auto) compiles the first shape static and recompiles once with dynamic shapes when
a later section has another token count.

Linear forwards are excluded from compilation (`torch._dynamo.disable`) where their weights move or their code
branches at run time: with block swap (the reference does the same) and for `--fp8_fast` layers (whose
`torch._scaled_mm` path falls back at run time). Plain `--fp8` / `--fp8_scaled` dequantising Linears are
compiled with the block.

When no compiler works (torch's inductor cannot be imported, no C++ compiler for a CPU run, no Triton for a
CUDA run, or the first compiled call raising a compiler error), one warning line is said and every block runs
eagerly from then on; the run goes on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

WARNING = "Warning: {flag}: {why}; the DiT blocks run uncompiled"
DYNAMIC = {"true": True, "false": False, "auto": None, None: None}


@dataclass(frozen=True)
class CompileSettings:
    """The `--compile_*` options (the reference's names and defaults)."""

    backend: str = "inductor"
    mode: str | None = "default"
    dynamic: str | None = None  # "true" / "false" / "auto" / None (= auto)
    fullgraph: bool = False
    cache_size_limit: int | None = None
    flag: str = "--compile"  # the option that asked for it, for the lines that say so

    @classmethod
    def from_options(cls, o: Any) -> CompileSettings:
        """`--compile*`, or training's `--dynamo_backend X` (accelerate's backend names, e.g. INDUCTOR -> inductor)
        with `--dynamo_mode / _fullgraph / _dynamic`."""
        backend = getattr(o, "dynamo_backend", "NO") or "NO"
        if backend != "NO" and not getattr(o, "compile", False):
            return cls(backend=backend.lower(), mode=o.dynamo_mode or "default",
                       dynamic="true" if o.dynamo_dynamic else None, fullgraph=bool(o.dynamo_fullgraph),
                       cache_size_limit=o.compile_cache_size_limit, flag=f"--dynamo_backend {backend}")
        return cls(backend=o.compile_backend, mode=o.compile_mode, dynamic=o.compile_dynamic,
                   fullgraph=bool(o.compile_fullgraph), cache_size_limit=o.compile_cache_size_limit)

    def describe(self) -> str:
        dyn = {True: "dynamic", False: "static", None: "auto"}[DYNAMIC[self.dynamic]]
        return (f"{self.flag}: each DiT block compiled on first use (backend {self.backend}, mode {self.mode}, "
                f"{dyn} shapes{', fullgraph' if self.fullgraph else ''})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _why(e: BaseException) -> str:
    """One line for a compiler failure: the backend's own error rather than dynamo's wrapper."""
    inner = getattr(e, "inner_exception", None)
    if inner is not None:
        return f"the {getattr(e, 'backend_name', 'compiler')} backend failed ({type(inner).__name__}: " \
               f"{_first_line(inner)})"
    return f"{type(e).__name__}: {_first_line(e)}"


def compiler_problem(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot compile for `device` (checked before anything is compiled), or None.

    Only what can be known up front: inductor importable, a C++ compiler for CPU code (the `CXX` environment
    variable or g++, as inductor uses), Triton for CUDA code. Anything else shows at the first compiled call.
    """
    if backend != "inductor":
        return None
    try:
        import torch._inductor.config as inductor_config
    except Exception as e:  # noqa: BLE001 - any import failure means: no inductor
        return f"torch's inductor compiler cannot be imported ({_first_line(e)})"
    if device.type == "cpu":
        cxx = inductor_config.cpp.cxx[-1] or os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            return f"no C++ compiler found ({cxx}; install g++ or set CXX)"
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"Triton cannot be imported ({_first_line(e)}; pip install triton)"
    return None


def _compiler_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the compiler failed", not "the model failed"."""
    import torch._dynamo.exc as dynamo_exc

    errors: list[type[BaseException]] = [dynamo_exc.BackendCompilerFailed, dynamo_exc.Unsupported]
    try:
        import torch._inductor.exc as inductor_exc

        errors += [getattr(inductor_exc, n) for n in ("InductorError", "CppCompileError", "InvalidCxxCompiler",
                                                      "TritonMissing", "GPUTooOldForTriton") if
                   hasattr(inductor_exc, n)]
    except Exception:  # noqa: BLE001 - no inductor: its errors cannot occur
        pass
    return tuple(errors)


class CompiledBlocks:
    """The compiled blocks of one model and the shared "compiler failed" switch.

    Args:
        blocks: the modules to compile (each keeps its identity).
        settings: the `--compile_*` options.
        warn: says the one fallback line.
        exclude_linear: run the blocks' Linear forwards eagerly (block swap).
    """

    def __init__(self, blocks: Sequence[nn.Module], settings: CompileSettings, warn: Callable[[str], None],
                 exclude_linear: bool = False) -> None:
        self.blocks = list(blocks)
        self.settings = settings
        self.warn = warn
        self.failed: str | None = None
        self._errors = _compiler_errors()
        # (module, its own instance `forward` before ours, e.g. a LoRA module's hook, or None): restored as found
        self._patched: list[tuple[nn.Module, Any]] = []
        if settings.cache_size_limit is not None:
            torch._dynamo.config.cache_size_limit = settings.cache_size_limit
        for block in self.blocks:
            for m in block.modules():
                if isinstance(m, nn.Linear) and (exclude_linear or getattr(m, "fast", False)):
                    self._patched.append((m, m.__dict__.get("forward")))
                    m.forward = torch._dynamo.disable(m.forward)
            self._patched.append((block, block.__dict__.get("forward")))
            block.forward = self._wrap(block)

    def _wrap(self, block: nn.Module) -> Callable[..., Any]:
        eager = block.forward
        s = self.settings
        compiled = torch.compile(eager, backend=s.backend, mode=s.mode, dynamic=DYNAMIC[s.dynamic],
                                 fullgraph=s.fullgraph)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.failed is None:
                # Every block sees inputs with standard strides: a block's outputs are views of its joint text+video
                # tensor (other strides than the first block's input, if only on the batch dimension), and dynamo
                # would compile the shared forward again for them. The values are the same.
                args = tuple(_packed(a) for a in args)
                kwargs = {k: _packed(v) for k, v in kwargs.items()}
                try:
                    return compiled(*args, **kwargs)
                except self._errors as e:
                    self.fall_back(_why(e))
            return eager(*args, **kwargs)

        return forward

    def fall_back(self, why: str) -> None:
        """Every block eager from now on; the one warning line."""
        if self.failed is not None:
            return
        self.failed = why
        self.warn(WARNING.format(flag=self.settings.flag, why=why))
        self.restore()

    def restore(self) -> None:
        """The blocks' and Linears' forwards as they were before (nothing compiled stays reachable; a LoRA
        module's hook on a Linear stays)."""
        for m, before in reversed(self._patched):
            if before is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = before
        self._patched = []


def _packed(x: Any) -> Any:
    """A tensor with the standard row-major strides (copied only when it is not contiguous; a contiguous one with
    odd strides on its size-1 dimensions, e.g. the batch of 1 of a sliced view, gets the standard ones as a view)."""
    if not isinstance(x, torch.Tensor):
        return x
    if not x.is_contiguous():
        return x.contiguous()
    standard, step = [], 1
    for size in reversed(x.shape):
        standard.append(step)
        step *= max(size, 1)
    standard.reverse()
    if list(x.stride()) == standard:
        return x
    return x.as_strided(x.shape, standard, x.storage_offset())


def compile_blocks(model: nn.Module, settings: CompileSettings, warn: Callable[[str], None], *,
                   device: torch.device | str | None = None, exclude_linear: bool | None = None
                   ) -> CompiledBlocks | None:
    """torch.compile every dual- and single-stream block of the FramePack DiT `model` (in place).

    Args:
        model: a `FramePackTransformer` (blocks in `transformer_blocks` and `single_transformer_blocks`).
        settings: the `--compile_*` options.
        warn: where the one fallback line goes (the run's `sink.message`).
        device: where the blocks run (default: the device of the model's first parameter).
        exclude_linear: keep Linear forwards eager (default: when the model has a block swapper).

    Returns:
        The compiled blocks (also `model.compiled_blocks`), or None when no compiler works (the warning said so).
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    problem = compiler_problem(settings.backend, device)
    if problem is not None:
        warn(WARNING.format(flag=settings.flag, why=problem))
        return None
    if exclude_linear is None:
        exclude_linear = getattr(model, "block_swapper", None) is not None
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    compiled = CompiledBlocks(blocks, settings, warn, exclude_linear=exclude_linear)
    model.compiled_blocks = compiled
    return compiled
