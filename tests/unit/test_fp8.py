"""fp8 DiT weights: quantisation schemes, the dequantising Linear (forward and backward), the golden DiT cases
under --fp8 / --fp8_scaled, LoRA merged before quantisation, and pre-quantised fp8 files (detected from the
header, loaded as stored or refused with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack_cli.errors import ModelFormatError
from framepack_cli.models import fp8 as fp8mod
from framepack_cli.models.detect import fp8_scheme, is_fp8_target
from framepack_cli.models.loading import read_header_infos
from framepack_cli.models.lora import LoraSpec
from framepack_cli.models.transformer import load_dit
from tests.conftest import MODELS, golden

DIT = MODELS / "dit_single.safetensors"
LORA = MODELS / "lora_tiny.safetensors"
CONDITIONING = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "image_embeddings",
                "timestep", "guidance")
# Relative L2 error of the velocity against the float32 goldens (float32 compute), measured on this CPU:
#   vanilla 0.0261 / 0.0233, f1 0.0254 / 0.0238, one-frame 0.0282 / 0.0274 (--fp8 / --fp8_scaled).
# The bounds leave ~25 % headroom; fp8's 3 mantissa bits alone give ~2.5 % per weight.
FP8_BOUND, SCALED_BOUND = 0.036, 0.034


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _case(name: str) -> tuple[dict, torch.Tensor]:
    tensors, _ = golden(f"unit/{name}")
    kwargs = {k[3:]: v for k, v in tensors.items() if k.startswith("in.")}
    if name != "dit_vanilla":
        vanilla, _ = golden("unit/dit_vanilla")
        kwargs.update({k: vanilla["in." + k] for k in CONDITIONING})
    return kwargs, tensors["out.velocity"]


@pytest.fixture(scope="module")
def models():
    return {mode: load_dit(DIT, fp8=mode) for mode in (None, "fp8", "fp8_scaled")}


# --------------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------------


def test_key_rule_is_the_references():
    assert is_fp8_target("transformer_blocks.0.attn.to_q.weight")
    assert is_fp8_target("single_transformer_blocks.3.proj_out.weight")
    assert not is_fp8_target("transformer_blocks.0.norm1.linear.weight")  # AdaLN modulation keeps its dtype
    assert not is_fp8_target("transformer_blocks.0.attn.norm_q.weight")
    assert not is_fp8_target("transformer_blocks.0.attn.to_q.bias")
    assert not is_fp8_target("proj_out.weight")
    assert not is_fp8_target("context_embedder.token_refiner.refiner_blocks.0.attn.to_q.weight")


def test_scaled_layouts_and_fallbacks():
    torch.manual_seed(0)
    q, s = fp8mod.quantize(torch.randn(8, 128), "fp8_scaled", torch.bfloat16)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (8, 128) and s.shape == (8, 2, 1) and s.dtype == torch.bfloat16
    _, s = fp8mod.quantize(torch.randn(8, 100), "fp8_scaled", torch.float32)  # 100 % 64 != 0: per output channel
    assert s.shape == (8, 1)
    _, s = fp8mod.quantize(torch.randn(2, 3, 4), "fp8_scaled", torch.float32)  # not 2-D: per tensor
    assert s.shape == (1,)
    q, s = fp8mod.quantize(torch.tensor([[1000.0, -1000.0, float("nan"), 0.5]]), "fp8", torch.float32)
    assert s is None and q.float().tolist() == [[448.0, -448.0, 0.0, 0.5]]  # plain: clamp to +-448, NaN -> 0


def test_scaled_beats_plain_and_matches_the_reference_scheme():
    torch.manual_seed(0)
    w = torch.randn(256, 3072) / 3072 ** 0.5 * (1 + 3 * torch.rand(256, 1))  # real-width rows of mixed scale
    plain = fp8mod.dequantize(*fp8mod.quantize(w, "fp8", torch.bfloat16), torch.float32)
    ours = fp8mod.dequantize(*fp8mod.quantize(w, "fp8_scaled", torch.bfloat16), torch.float32)
    # The reference: divide by the float32 scale, store the bf16-rounded one.
    v = w.view(256, 48, 64)
    scale = (v.abs().amax(2, keepdim=True) / 448).clamp(min=1e-8)
    ref = (v / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale.to(torch.bfloat16).float()
    e_plain, e_ours, e_ref = _rel(plain, w), _rel(ours, w), _rel(ref.view(256, 3072), w)
    assert e_ours < 0.026 and e_ours <= e_ref < e_plain


def test_fp8_linear_backward_keeps_only_the_fp8_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    w = lin.weight.detach().clone()
    q, s = fp8mod.quantize(w, "fp8_scaled", torch.float32)
    fp8mod.convert_linear(lin, torch.float32, tuple(s.shape))
    lin.load_state_dict({"weight": q, "bias": lin.bias.detach(), "scale_weight": s}, assign=True)
    lin.requires_grad_(False)
    x = torch.randn(3, 5, 128, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = lin(x)
    y.square().sum().backward()
    # Reference: the same math on the dequantised weight.
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.nn.functional.linear(x2, fp8mod.dequantize(q, s, torch.float32), lin.bias)
    y2.square().sum().backward()
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    assert not [t for t in saved if t.shape == (64, 128) and t.dtype != torch.float8_e4m3fn]


def test_fp8_fast_on_cpu_warns_once_and_keeps_the_dequantising_path(models):
    lines: list[str] = []
    assert fp8mod.enable_fp8_fast(models["fp8_scaled"], "cpu", lines.append) == 0
    assert lines == ["Warning: --fp8_fast needs a CUDA GPU (this run is on cpu); using the dequantising fp8 matmul "
                     "instead"]
    assert not any(m.fast for _, m in fp8mod.fp8_linears(models["fp8_scaled"]))


@pytest.mark.parametrize("layout", ["tensor", "channel", "none"])
def test_scaled_mm_linear_math(layout):
    """The fp8-matmul path (used on CUDA 8.9+; torch runs `_scaled_mm` on this CPU too, so its math is checked
    here): within fp8 input rounding of the dequantised Linear."""
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("no torch._scaled_mm")
    torch.manual_seed(0)
    w, b = torch.randn(64, 128) / 11, torch.randn(64) * 0.1
    x = (torch.randn(2, 5, 128) * 30).to(torch.bfloat16)  # activations beyond +-448 once unscaled
    mode = "fp8" if layout == "none" else "fp8_scaled"
    q, s = fp8mod.quantize(w, mode, torch.bfloat16, layout="block" if layout == "none" else layout)
    try:
        y = fp8mod.scaled_mm_linear(x, q, s, b, layout)
    except RuntimeError as e:
        pytest.skip(f"torch._scaled_mm unavailable on this CPU build: {e}")
    ref = torch.nn.functional.linear(x.float(), fp8mod.dequantize(q, s, torch.float32), b)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 64)
    assert _rel(y, ref) < 0.04


# --------------------------------------------------------------------------------------------------
# The golden DiT cases
# --------------------------------------------------------------------------------------------------


def test_only_the_block_linears_are_fp8(models):
    m = models["fp8_scaled"]
    names = {n for n, _ in fp8mod.fp8_linears(m)}
    assert names and all(is_fp8_target(n + ".weight") for n in names)
    assert len(names) == 12 * len(m.transformer_blocks) + 5 * len(m.single_transformer_blocks)
    assert m.transformer_blocks[0].norm1.linear.weight.dtype == torch.float32
    assert m.proj_out.weight.dtype == torch.float32
    sd = m.state_dict()
    assert sd["transformer_blocks.0.attn.to_q.scale_weight"].shape == (128, 2, 1)  # the reference's layout
    assert "transformer_blocks.0.attn.to_q.scale_weight" not in models["fp8"].state_dict()
    assert models["fp8"].fp8_report == ["--fp8: 34 block Linears (1,179,648 parameters) stored as float8_e4m3fn"]


@pytest.mark.parametrize("case", ["dit_vanilla", "dit_f1", "dit_oneframe"])
@torch.no_grad()
def test_golden_dit_cases_within_the_stated_error(models, case):
    kwargs, expected = _case(case)
    e_plain = _rel(models["fp8"](**kwargs), expected)
    e_scaled = _rel(models["fp8_scaled"](**kwargs), expected)
    assert e_plain < FP8_BOUND and e_scaled < SCALED_BOUND
    assert e_scaled < e_plain
    assert _rel(models[None](**kwargs), expected) < 1e-5


@torch.no_grad()
def test_lora_merged_before_quantisation_keeps_its_effect(models):
    kwargs, _ = _case("dit_vanilla")
    lora = [LoraSpec(str(LORA), 1.0)]
    base = models[None](**kwargs)
    effect = load_dit(DIT, loras=lora)(**kwargs) - base  # ~10 % of the output
    for mode, min_cos in (("fp8", 0.88), ("fp8_scaled", 0.93)):
        with_lora = load_dit(DIT, loras=lora, fp8=mode)
        effect8 = with_lora(**kwargs) - models[mode](**kwargs)
        cos = torch.nn.functional.cosine_similarity(effect.flatten(), effect8.flatten(), dim=0).item()
        assert cos > min_cos and 0.8 < (effect8.norm() / effect.norm()).item() < 1.25, (mode, cos)
        assert with_lora.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn


# --------------------------------------------------------------------------------------------------
# Pre-quantised files
# --------------------------------------------------------------------------------------------------


def _prequantised(tmp_path: Path, name: str, mode: str, *, extra=None, cast_embedder: bool = False) -> Path:
    """A tiny Kijai/musubi-style fp8 file made from the golden DiT: the block Linears quantised as `mode`."""
    sd = load_file(str(DIT))
    out = {}
    for k, v in sd.items():
        if is_fp8_target(k):
            q, s = fp8mod.quantize(v, mode, torch.float32)
            out[k] = q
            if s is not None:
                out[k[: -len("weight")] + "scale_weight"] = s
        else:
            out[k] = v
    if cast_embedder:  # Kijai's files also cast non-Linear weights (the patch-embedding Conv3d)
        out["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"].to(torch.float8_e4m3fn)
    out.update(extra or {})
    path = tmp_path / name
    save_file(out, str(path))
    return path


@pytest.mark.parametrize("mode", ["fp8", "fp8_scaled"])
@torch.no_grad()
def test_prequantised_file_loads_as_stored(tmp_path, models, mode):
    path = _prequantised(tmp_path, f"FramePackI2V_HY_{mode}_e4m3fn.safetensors", mode)
    scheme = fp8_scheme(read_header_infos([path]))
    assert scheme is not None and scheme.n_fp8 == 34 and scheme.scaled == (mode == "fp8_scaled")
    m = load_dit(path)  # no flag: the file's fp8 is kept
    kwargs, _ = _case("dit_vanilla")
    ours = models[mode].state_dict()
    for k, v in m.state_dict().items():  # the same bits as --fp8 / --fp8_scaled: nothing re-quantised
        assert v.dtype == ours[k].dtype and torch.equal(v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn
                                                        else v, ours[k].view(torch.uint8)
                                                        if v.dtype == torch.float8_e4m3fn else ours[k]), k
    torch.testing.assert_close(m(**kwargs), models[mode](**kwargs), atol=1e-5, rtol=0)
    assert m.fp8_report[0].startswith(f"--dit: {path.name} is pre-quantised, ")
    assert m.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn


@torch.no_grad()
def test_comfy_scaled_file_with_marker_input_scales_and_fp8_conv(tmp_path):
    sd = load_file(str(DIT))
    extra = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    for k in sd:
        if is_fp8_target(k):  # ComfyUI's per-tensor scales, plus activation scales we do not need
            base = k[: -len("weight")]
            extra[base + "scale_input"] = torch.ones(())
    path = tmp_path / "comfy.safetensors"
    out = {}
    for k, v in sd.items():
        if is_fp8_target(k):
            q, s = fp8mod.quantize(v, "fp8_scaled", torch.float32, layout="tensor")
            out[k], out[k[: -len("weight")] + "scale_weight"] = q, s.reshape(())
        else:
            out[k] = v
    out["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"].to(torch.float8_e4m3fn)
    out.update(extra)
    save_file(out, str(path))
    m = load_dit(path, fp8="fp8_scaled")
    assert m.x_embedder.proj.weight.dtype == torch.float32  # a Conv3d: dequantised
    assert m.transformer_blocks[0].attn.to_k.scale_weight.shape == ()
    assert "1 other tensors are dequantised to float32" in m.fp8_report[0]
    assert "(--fp8_scaled does not quantise it again)" in m.fp8_report[0]
    kwargs, expected = _case("dit_vanilla")
    assert _rel(m(**kwargs), expected) < 0.05


@pytest.mark.parametrize(("extra", "why"), [
    ({"transformer_blocks.0.attn.to_q.weight": torch.zeros(128, 128, dtype=torch.float8_e5m2)},
     "holds float8_e5m2 tensors; only float8_e4m3fn fp8 files (plain or with scale_weight scales) can be read"),
    ({"transformer_blocks.0.attn.to_q.scale_weight": torch.ones(128, 3)},
     "has a scale 'transformer_blocks.0.attn.to_q.scale_weight' of shape [128, 3] for a weight of shape "
     "[128, 128], a scheme this tool cannot read"),
    ({"transformer_blocks.0.norm1.linear.scale_weight": torch.ones(())},
     "has a scale 'transformer_blocks.0.norm1.linear.scale_weight' for a tensor that is not float8_e4m3fn"),
    ({"transformer_blocks.0.attn.to_q.weight_scale": torch.ones(())}, "uses the vLLM / ModelOpt fp8 layout"),
])
def test_unreadable_fp8_files_are_refused_with_the_reason(tmp_path, extra, why):
    path = _prequantised(tmp_path, "bad.safetensors", "fp8", extra=extra)
    with pytest.raises(ModelFormatError) as e:
        load_dit(path)
    assert str(e.value).startswith(f"--dit: {path} {why}")
    assert e.value.exit_code == 2


def test_lora_on_a_prequantised_file_is_refused(tmp_path):
    path = _prequantised(tmp_path, "fp8.safetensors", "fp8_scaled")
    with pytest.raises(ModelFormatError) as e:
        load_dit(path, loras=[LoraSpec(str(LORA), 1.0)])
    assert str(e.value) == (f"--dit: {path} is already in fp8 (scaled float8_e4m3fn (34 fp8 tensors, 34 block "
                            "scales)): merging a LoRA into fp8 weights loses most of its effect (use the bf16 DiT "
                            "file with --fp8_scaled)")


def test_fp8_lowers_the_dit_size_estimate():
    from framepack_cli.engine.precision import resolve_precision
    from framepack_cli.engine.preflight import check_models
    from framepack_cli.engine.resources import model_sizes

    class Paths:
        dit = str(DIT)

    found = check_models(Paths)
    p = resolve_precision(torch.device("cuda"))
    plain, fp8 = model_sizes(found, p), model_sizes(found, p, fp8_dit=True)
    infos = found["dit"][1]
    n = sum(i.numel for k, i in infos.items() if is_fp8_target(k))
    assert plain.weights["dit"] - fp8.weights["dit"] == n - 2 * n // 64  # bf16 -> 1 byte + a bf16 scale per 64
    assert fp8.fp8 and not plain.fp8
