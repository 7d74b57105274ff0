"""fp8 weights for the DiT: `--fp8` / `--fp8_scaled` (generate), `--fp8_base` / `--fp8_scaled` (train), and
pre-quantised fp8 checkpoints.

Which weights: the reference's key rule (`transformer_blocks` in the key, which also matches
`single_transformer_blocks`; ends in `.weight`; no `norm`): the 12 Linears of each double block and the 5 of
each single block, 440 Linears and about 9.06 B of the real model's 12.87 B parameters. The AdaLN modulation
Linears, norms, embedders, refiner and output head keep the run's dtype.

Schemes (float8_e4m3fn, largest finite value 448):

* `fp8`: plain cast, `q = clamp(w, +-448)`, no scale (the reference's legacy mode, done as upcast-on-use).
* `fp8_scaled`: the reference's block scales. A weight [out, in] with `in % 64 == 0` is viewed as
  [out, in/64, 64]; `scale = max|w| / 448` over each block ([out, in/64, 1]), `q = clamp(w / scale, +-448)`.
  Fallbacks: per output channel ([out, 1]) when `in % 64 != 0`, per tensor when the weight is not 2-D.
  One refinement over the reference: the scale is rounded to its storage dtype *before* dividing, so the scale
  used at run time is exactly the one the weight was quantised with (the reference divides by the float32
  scale and stores a bf16-rounded one).
* `fp8_scaled` with `--fp8_fast`: per output channel (CUDA capability >= 9.0, row-wise `torch._scaled_mm`) or
  per tensor (8.9), the layouts the fp8 matmul can apply.

Run time: `Fp8Linear` (an `nn.Linear` subclass, so LoRA networks still find it) dequantises per call,
`w = q.to(dtype) * scale`, and calls `F.linear`; bias unchanged. Under autograd (training a LoRA on an fp8
base) a custom function saves the fp8 weight, not the dequantised one, and dequantises again in backward,
so activations never hold a bf16 copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from framepack_cli.models.detect import is_fp8_target

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK_SIZE = 64
MODES = ("fp8", "fp8_scaled")
FAST_MIN_CAPABILITY = (8, 9)
ROWWISE_MIN_CAPABILITY = (9, 0)


is_target = is_fp8_target  # the reference's key rule (framepack_cli.models.detect)


# --------------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------------


def _cast(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize(w: torch.Tensor, mode: str, scale_dtype: torch.dtype, *, layout: str = "block",
             block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Quantise one weight to float8_e4m3fn.

    Args:
        w: the weight (any float dtype; the arithmetic is float32).
        mode: "fp8" (plain cast, no scale) or "fp8_scaled".
        scale_dtype: dtype the scale is stored in (the run's dtype, as the reference).
        layout: for "fp8_scaled": "block" (the reference), "channel" or "tensor".
        block_size: block length over the input dimension for "block".

    Returns:
        `(q, scale)`: q has w's shape; scale is None (plain), [out, in/B, 1] (block), [out, 1] (channel) or
        [1] (tensor).
    """
    if mode == "fp8":
        return _cast(w.to(torch.float32)), None
    if mode != "fp8_scaled":
        raise ValueError(f"unknown fp8 mode {mode!r}")
    wf = w.to(torch.float32)
    if wf.dim() != 2:
        layout = "tensor"
    elif layout == "block" and wf.shape[1] % block_size:
        layout = "channel"
    if layout == "block":
        out, inp = wf.shape
        view = wf.view(out, inp // block_size, block_size)
        scale = (view.abs().amax(dim=2, keepdim=True) / FP8_MAX).clamp_(min=1e-8).to(scale_dtype)
        q = _cast(view / scale.to(torch.float32)).view(out, inp)
        return q, scale
    if layout == "channel":
        scale = (wf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_(min=1e-8).to(scale_dtype)
    else:
        scale = (wf.abs().amax() / FP8_MAX).clamp_(min=1e-8).reshape(1).to(scale_dtype)
    return _cast(wf / scale.to(torch.float32)), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """`q.to(dtype) * scale` for every scale layout (None, one number, [out, 1] / [out], [out, nb, 1])."""
    w = q.to(dtype)
    if scale is None:
        return w
    s = scale.to(dtype)
    if s.dim() == 3 and s.numel() > 1:
        out, inp = w.shape
        return (w.view(out, s.shape[1], inp // s.shape[1]) * s).view(out, inp)
    if s.dim() == 1 and s.numel() > 1:
        s = s.unsqueeze(1)
    elif s.numel() == 1:
        s = s.reshape(())
    return w * s


# --------------------------------------------------------------------------------------------------
# The Linear
# --------------------------------------------------------------------------------------------------


class _DequantLinear(torch.autograd.Function):
    """`F.linear(x, dequantize(q, scale), bias)` whose backward keeps only the fp8 weight alive."""

    @staticmethod
    def forward(ctx, x, q, scale, bias, dtype):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(q, scale)
        ctx.dtype = dtype
        ctx.bias_grad = bias is not None and bias.requires_grad
        return F.linear(x, dequantize(q, scale, dtype), bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        q, scale = ctx.saved_tensors
        gx = grad.matmul(dequantize(q, scale, grad.dtype)) if ctx.needs_input_grad[0] else None
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.bias_grad else None
        return gx, None, None, gb, None


class Fp8Linear(nn.Linear):
    """An `nn.Linear` whose weight is float8_e4m3fn (plus an optional `scale_weight` buffer).

    Made by `convert_linear` from a built (usually meta) `nn.Linear`; the state dict has `weight` (fp8),
    `bias` and, for scaled weights, `scale_weight`, the reference's layout.

    Attributes:
        compute_dtype: the dtype the weight is dequantised to (the run's dtype).
        fast: use `torch._scaled_mm` (set by `enable_fp8_fast` where the GPU supports it).
    """

    compute_dtype: torch.dtype
    fast: bool = False
    on_fallback: Callable[[str], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        scale, bias = self.scale_weight, self.bias
        dtype = self.compute_dtype
        if torch.is_autocast_enabled(x.device.type):
            # What autocast would compute this Linear in; inputs are cast here so the custom backward sees it.
            dtype = torch.get_autocast_dtype(x.device.type)
            x = x.to(dtype) if x.is_floating_point() else x
            bias = bias.to(dtype) if bias is not None else None
        grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
        if self.fast and x.is_cuda and not grad:
            y = self._fast_forward(x, scale)
            if y is not None:
                return y
        if grad:
            return _DequantLinear.apply(x, self.weight, scale, bias, dtype)
        return F.linear(x, dequantize(self.weight, scale, dtype), bias)

    def _fast_forward(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor | None:
        """A real fp8 matmul (`torch._scaled_mm`), None when this weight or input cannot use one."""
        out_dtype = x.dtype
        layout = "none" if scale is None else ("tensor" if scale.numel() == 1 else
                                              "channel" if scale.dim() <= 2 else "block")
        if layout == "block" or out_dtype not in (torch.bfloat16, torch.float16):
            return None
        if layout == "channel" and out_dtype != torch.bfloat16:
            return None
        try:
            return scaled_mm_linear(x, self.weight, scale, self.bias, layout)
        except RuntimeError as e:  # unsupported shape/GPU/torch build: never again for this layer
            self.fast = False
            if self.on_fallback is not None:
                self.on_fallback(f"Warning: --fp8_fast: torch._scaled_mm failed ({str(e).splitlines()[0]}); "
                                 "using the dequantising matmul")
            return None

    def extra_repr(self) -> str:
        s = "none" if self.scale_weight is None else "x".join(str(d) for d in self.scale_weight.shape)
        return f"{super().extra_repr()}, fp8 e4m3fn, scale {s}"


def scaled_mm_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                     layout: str) -> torch.Tensor:
    """`x @ (q * scale).T + bias` with both operands in fp8: the input is quantised on the fly (per tensor for
    per-tensor / unscaled weights, per row for per-channel weights, so large activations are not clipped)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    xf = x2.float()
    if layout == "channel":
        sx = (xf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_(min=1e-12)
        sw = scale.float().reshape(1, -1).contiguous()
    else:
        sx = (xf.abs().amax() / FP8_MAX).clamp_(min=1e-12)
        sw = (scale.float().reshape(()) if scale is not None else torch.ones((), device=x.device))
    xq = (xf / sx).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    b = bias.to(x.dtype) if bias is not None else None
    y = torch._scaled_mm(xq, q.t(), scale_a=sx.contiguous(), scale_b=sw, bias=b, out_dtype=x.dtype)
    return y.reshape(*shape[:-1], q.shape[0])


def convert_linear(module: nn.Linear, compute_dtype: torch.dtype, scale_shape: tuple[int, ...] | None,
                   scale_dtype: torch.dtype | None = None) -> Fp8Linear:
    """Turn a built `nn.Linear` into an `Fp8Linear` in place (weights are assigned afterwards)."""
    module.__class__ = Fp8Linear
    module.compute_dtype = compute_dtype
    device = module.weight.device
    if scale_shape is None:
        module.register_buffer("scale_weight", None)
    else:
        module.register_buffer("scale_weight", torch.empty(scale_shape, dtype=scale_dtype or compute_dtype,
                                                           device=device))
    return module  # type: ignore[return-value]


def fp8_linears(model: nn.Module) -> list[tuple[str, Fp8Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Fp8Linear)]


def fast_support(device: torch.device | str) -> tuple[str | None, str | None]:
    """`(layout, None)` for the fp8 matmul on `device` ("channel" rows-wise on capability >= 9.0, "tensor" on
    8.9), or `(None, why not)`."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, f"needs a CUDA GPU (this run is on {device.type})"
    if not hasattr(torch, "_scaled_mm"):
        return None, f"this torch {torch.__version__} has no torch._scaled_mm"
    cap = torch.cuda.get_device_capability(device)
    if cap < FAST_MIN_CAPABILITY:
        return None, f"needs CUDA capability 8.9 or newer (Ada/Hopper); this GPU has {cap[0]}.{cap[1]}"
    return ("channel" if cap >= ROWWISE_MIN_CAPABILITY else "tensor"), None


def enable_fp8_fast(model: nn.Module, device: torch.device | str,
                    warn: Callable[[str], None]) -> int:
    """Switch the fp8 Linears of `model` to `torch._scaled_mm` where `device` supports it; otherwise one warning
    line and the dequantising path stays. Returns the number of Linears switched."""
    layout, why = fast_support(device)
    if layout is None:
        warn(f"Warning: --fp8_fast {why}; using the dequantising fp8 matmul instead")
        return 0
    n = 0
    say = _once(warn)  # one fallback line per run, not per Linear
    for _, m in fp8_linears(model):
        s = m.scale_weight
        if s is not None and s.dim() == 3 and s.numel() > 1:
            continue  # block scales: no fp8 matmul applies them
        m.fast = True
        m.on_fallback = say
        n += 1
    if n == 0:
        warn("Warning: --fp8_fast: the DiT's fp8 weights are block-scaled, which torch._scaled_mm cannot apply; "
             "using the dequantising fp8 matmul")
    return n


def _once(warn: Callable[[str], None]) -> Callable[[str], None]:
    said: list[bool] = []

    def say(text: str) -> None:
        if not said:
            said.append(True)
            warn(text)

    return say
