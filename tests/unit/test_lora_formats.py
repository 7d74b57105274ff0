"""LoRA key layouts, HunyuanVideo splitting, LoHa/LoKr formulas and converter round trips, on tiny LoRAs built
here (no DiT needed: merges go into small fake state dicts with the tiny DiT's shapes)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli.cli.app import main
from framepack_cli.engine.loras import lora_specs_from_options
from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.lora import (
    LoraSpec,
    convert_lora,
    convert_lora_file,
    describe_lora,
    framepack_path,
    is_framepack_path,
    merge_loras,
    musubi_name,
    plan_merge,
    read_lora,
    save_tensors,
    write_safetensors,
)

D, M, R = 128, 512, 4  # tiny DiT: inner 128, MLP 512; LoRA rank 4


def _rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g).to(dtype)


def _fake_dit() -> dict[str, torch.Tensor]:
    """Weights of every module a block-0 LoRA can hit, shaped like the tiny DiT."""
    shapes = {
        "transformer_blocks.0.attn.to_q": (D, D), "transformer_blocks.0.attn.to_k": (D, D),
        "transformer_blocks.0.attn.to_v": (D, D), "transformer_blocks.0.attn.add_q_proj": (D, D),
        "transformer_blocks.0.attn.add_k_proj": (D, D), "transformer_blocks.0.attn.add_v_proj": (D, D),
        "transformer_blocks.0.attn.to_out.0": (D, D), "transformer_blocks.0.attn.to_add_out": (D, D),
        "transformer_blocks.0.ff.net.0.proj": (M, D), "transformer_blocks.0.ff.net.2": (D, M),
        "transformer_blocks.0.ff_context.net.0.proj": (M, D), "transformer_blocks.0.ff_context.net.2": (D, M),
        "transformer_blocks.0.norm1.linear": (6 * D, D), "transformer_blocks.0.norm1_context.linear": (6 * D, D),
        "single_transformer_blocks.0.attn.to_q": (D, D), "single_transformer_blocks.0.attn.to_k": (D, D),
        "single_transformer_blocks.0.attn.to_v": (D, D), "single_transformer_blocks.0.proj_mlp": (M, D),
        "single_transformer_blocks.0.proj_out": (D, D + M), "single_transformer_blocks.0.norm.linear": (3 * D, D),
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_out.0": (D, D),
        "proj_out": (64, D),
    }
    sd = {f"{k}.weight": _rand(*s, seed=1) for k, s in shapes.items()}
    sd["transformer_blocks.0.attn.norm_q.weight"] = torch.ones(D)
    return sd


def _musubi_lora(paths: dict[str, tuple[int, int]], alpha: float = 2.0, dtype=torch.float32) -> dict:
    sd = {}
    for i, (path, (out, fan_in)) in enumerate(paths.items()):
        name = musubi_name(path)
        sd[f"{name}.lora_down.weight"] = _rand(R, fan_in, dtype=dtype, seed=10 + i)
        sd[f"{name}.lora_up.weight"] = _rand(out, R, dtype=dtype, seed=50 + i)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


FP_MODULES = {
    "transformer_blocks.0.attn.to_q": (D, D), "transformer_blocks.0.attn.to_out.0": (D, D),
    "transformer_blocks.0.attn.add_k_proj": (D, D), "transformer_blocks.0.attn.to_add_out": (D, D),
    "transformer_blocks.0.ff.net.0.proj": (M, D), "transformer_blocks.0.ff_context.net.0.proj": (M, D),
    "transformer_blocks.0.ff_context.net.2": (D, M), "single_transformer_blocks.0.proj_mlp": (M, D),
    "single_transformer_blocks.0.proj_out": (D, D + M), "single_transformer_blocks.0.attn.to_k": (D, D),
    "context_embedder.token_refiner.refiner_blocks.0.attn.to_out.0": (D, D),
}


def _save(tmp_path: Path, name: str, sd: dict, metadata: dict | None = None) -> Path:
    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p), metadata=metadata)
    return p


def _deltas(path: Path) -> dict[str, torch.Tensor]:
    """Effective float32 delta (scale included, multiplier 1) of every FramePack module of a file."""
    return {p: m.product() * m.scale for p, m in read_lora(path).modules.items()}


def _merged(path: Path, multiplier: float = 1.0, **kw) -> dict[str, torch.Tensor]:
    sd = _fake_dit()
    merge_loras(sd, [(path, multiplier)], **kw)
    return sd


# --------------------------------------------------------------------------------------------------
# names and detection
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("transformer_blocks_0_attn_to_q", "transformer_blocks.0.attn.to_q"),
        ("transformer_blocks_19_attn_to_out_0", "transformer_blocks.19.attn.to_out.0"),
        ("transformer_blocks_3_attn_add_v_proj", "transformer_blocks.3.attn.add_v_proj"),
        ("transformer_blocks_0_ff_context_net_0_proj", "transformer_blocks.0.ff_context.net.0.proj"),
        ("transformer_blocks_0_norm1_context_linear", "transformer_blocks.0.norm1_context.linear"),
        ("single_transformer_blocks_39_proj_mlp", "single_transformer_blocks.39.proj_mlp"),
        ("single_transformer_blocks_0_attn_to_k", "single_transformer_blocks.0.attn.to_k"),
        ("context_embedder_token_refiner_refiner_blocks_1_norm_out_linear",
         "context_embedder.token_refiner.refiner_blocks.1.norm_out.linear"),
        ("time_text_embed_guidance_embedder_linear_2", "time_text_embed.guidance_embedder.linear_2"),
        ("clean_x_embedder_proj_2x", "clean_x_embedder.proj_2x"),
        ("proj_out", "proj_out"),
    ],
)
def test_musubi_names_map_by_table(name, path):
    # The reference's converter turned these into `transformer.blocks.0.ff.context...`; a table does not.
    assert framepack_path(name) == path
    assert musubi_name(path) == "lora_unet_" + name
    assert is_framepack_path(path)


def test_unknown_names_do_not_map():
    assert framepack_path("transformer_blocks_0_attn_to_z") is None
    assert framepack_path("double_blocks_0_img_attn_qkv") is None
    assert not is_framepack_path("transformer_blocks.0.attn.norm_q")


@pytest.mark.parametrize(
    ("prefix", "suffixes", "fmt"),
    [
        ("transformer.", ("lora_A.weight", "lora_B.weight"), "diffusers"),
        ("diffusion_model.", ("lora_A.weight", "lora_B.weight"), "comfy"),
        ("model.diffusion_model.", ("lora_down.weight", "lora_up.weight"), "comfy"),
        ("", ("lora_A.weight", "lora_B.weight"), "peft"),
        ("base_model.model.", ("lora_A.weight", "lora_B.weight"), "peft"),
    ],
)
def test_dotted_layouts(tmp_path, prefix, suffixes, fmt):
    ref = _save(tmp_path, "ref.safetensors", _musubi_lora(FP_MODULES, alpha=float(R)))
    sd = {}
    src = load_file(str(ref))
    for path in FP_MODULES:
        name = musubi_name(path)
        sd[f"{prefix}{path}.{suffixes[0]}"] = src[f"{name}.lora_down.weight"]
        sd[f"{prefix}{path}.{suffixes[1]}"] = src[f"{name}.lora_up.weight"]
    lora = read_lora(_save(tmp_path, "x.safetensors", sd))
    assert lora.format == fmt and set(lora.modules) == set(FP_MODULES) and not lora.unused
    assert all(m.alpha is None and m.scale == 1.0 for m in lora.modules.values())
    # alpha = rank in the reference file, so both merge identically.
    want, got = _merged(ref), _merged(tmp_path / "x.safetensors")
    assert all(torch.equal(v, got[k]) for k, v in want.items())


def test_peft_metadata_alpha_is_honoured(tmp_path):
    sd = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": _rand(R, D),
          "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": _rand(D, R),
          "transformer.transformer_blocks.0.attn.to_k.lora_A.weight": _rand(R, D, seed=3),
          "transformer.transformer_blocks.0.attn.to_k.lora_B.weight": _rand(D, R, seed=3)}
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": R, "transformer.lora_alpha": 8,
                                                 "transformer.alpha_pattern": {"attn.to_k": 2}})}
    lora = read_lora(_save(tmp_path, "d.safetensors", sd, meta))
    assert lora.modules["transformer_blocks.0.attn.to_q"].scale == 2.0
    assert lora.modules["transformer_blocks.0.attn.to_k"].scale == 0.5


def test_not_a_lora_is_refused(tmp_path):
    dit_like = _save(tmp_path, "dit.safetensors", {"x_embedder.proj.weight": torch.zeros(4, 16, 1, 2, 2),
                                                   "clean_x_embedder.proj.weight": torch.zeros(4, 16, 1, 2, 2)})
    with pytest.raises(ModelFormatError, match=r"--lora_weight: .*dit.safetensors looks like a FramePack DiT"):
        read_lora(dit_like)
    with pytest.raises(FramepackError, match="no such file"):
        read_lora(tmp_path / "missing.safetensors")


def test_unusable_keys_are_reported_not_dropped(tmp_path):
    sd = _musubi_lora({"transformer_blocks.0.attn.to_q": (D, D)})
    sd["lora_unet_transformer_blocks_0_attn_to_q.dora_scale"] = torch.ones(1, D)
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(R, 8)
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, R)
    sd["lora_unet_transformer_blocks_0_attn_to_k.lora_down.weight"] = torch.zeros(R, D)  # no up
    lora = read_lora(_save(tmp_path, "x.safetensors", sd))
    assert lora.format == "musubi-framepack" and list(lora.modules) == ["transformer_blocks.0.attn.to_q"]
    assert "DoRA" in lora.unused["lora_unet_transformer_blocks_0_attn_to_q.dora_scale"]
    assert len(lora.unused) == 4


# --------------------------------------------------------------------------------------------------
# HunyuanVideo splitting
# --------------------------------------------------------------------------------------------------


def _hv_lora(style: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A HunyuanVideo-named LoRA in `style` and the fused deltas (alpha/rank included) by HV module."""
    modules = {  # HV module (original dotted name) -> (out rows, in)
        "double_blocks.0.img_attn_qkv": (3 * D, D), "double_blocks.0.txt_attn_qkv": (3 * D, D),
        "double_blocks.0.img_attn_proj": (D, D), "double_blocks.0.img_mod.linear": (6 * D, D),
        "double_blocks.0.img_mlp.fc1": (M, D), "double_blocks.0.txt_mlp.fc2": (D, M),
        "single_blocks.0.linear1": (3 * D + M, D), "single_blocks.0.linear2": (D, D + M),
        "single_blocks.0.modulation.linear": (3 * D, D),
        "img_in.proj": (D, 64),  # outside the blocks: no FramePack counterpart
    }
    comfy_names = {"img_attn_qkv": "img_attn.qkv", "txt_attn_qkv": "txt_attn.qkv", "img_attn_proj": "img_attn.proj",
                   "img_mod.linear": "img_mod.lin", "img_mlp.fc1": "img_mlp.0", "txt_mlp.fc2": "txt_mlp.2",
                   "modulation.linear": "modulation.lin"}
    sd, fused = {}, {}
    for i, (name, (out, fan_in)) in enumerate(modules.items()):
        down, up = _rand(R, fan_in, seed=100 + i), _rand(out, R, seed=200 + i)
        if style == "musubi":
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(2.0)
            fused[name] = up @ down * (2.0 / R)
            continue
        if style == "comfy":
            block, idx, tail = name.split(".", 2) if "blocks" in name else ("", "", name)
            tail = comfy_names.get(tail, tail)
            key = f"diffusion_model.{block}.{idx}.{tail}" if block else f"diffusion_model.{name}"
        else:  # diffusion-pipe: transformer. + original names
            key = f"transformer.{name}"
        sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up
        fused[name] = up @ down
    return sd, fused


SPLITS = {  # HV module -> FramePack modules in row order
    "double_blocks.0.img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"],
    "double_blocks.0.txt_attn_qkv": ["transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
                                     "transformer_blocks.0.attn.add_v_proj"],
    "double_blocks.0.img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
    "double_blocks.0.img_mod.linear": ["transformer_blocks.0.norm1.linear"],
    "double_blocks.0.img_mlp.fc1": ["transformer_blocks.0.ff.net.0.proj"],
    "double_blocks.0.txt_mlp.fc2": ["transformer_blocks.0.ff_context.net.2"],
    "single_blocks.0.linear1": ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"],
    "single_blocks.0.linear2": ["single_transformer_blocks.0.proj_out"],
    "single_blocks.0.modulation.linear": ["single_transformer_blocks.0.norm.linear"],
}


@pytest.mark.parametrize(("style", "fmt"), [("musubi", "musubi-hunyuanvideo"), ("comfy", "comfy-hunyuanvideo"),
                                            ("pipe", "diffusion-pipe-hunyuanvideo")])
def test_hunyuanvideo_split(tmp_path, style, fmt):
    sd, fused = _hv_lora(style)
    path = _save(tmp_path, "hv.safetensors", sd)
    lora = read_lora(path)
    assert lora.format == fmt
    assert set(lora.modules) == {p for parts in SPLITS.values() for p in parts}
    assert len(lora.unused) == (3 if style == "musubi" else 2) and all("img_in" in k for k in lora.unused)
    # qkv: 3 x inner rows; linear1: 3 x inner + mlp rows. down (and alpha) shared, up sliced by rows.
    q = lora.modules["single_transformer_blocks.0.attn.to_q"]
    mlp = lora.modules["single_transformer_blocks.0.proj_mlp"]
    assert q.shape == (D, D) and mlp.shape == (M, D) and q.tensors["down"] is mlp.tensors["down"]
    deltas = {p: m.product() * m.scale for p, m in lora.modules.items()}
    for hv, parts in SPLITS.items():
        torch.testing.assert_close(torch.cat([deltas[p] for p in parts]), fused[hv], rtol=1e-6, atol=1e-6)

    # Merging the HunyuanVideo file == merging its musubi (FramePack-named) conversion.
    tensors, _ = convert_lora(lora, "musubi")
    assert all(k.startswith(("lora_unet_transformer_blocks_0_", "lora_unet_single_transformer_blocks_0_"))
               for k in tensors)
    conv = _save(tmp_path, "fp.safetensors", tensors)
    assert read_lora(conv).format == "musubi-framepack"
    a, b = _merged(path, 0.5), _merged(conv, 0.5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    report = merge_loras(_fake_dit(), [(path, 1.0)])
    assert f"{fmt} LoRA" in report[0] and "16 modules merged" in report[0]


def test_hunyuanvideo_linear1_split_uses_the_dit_inner_size(tmp_path):
    # An MLP ratio other than 4: rows/7 would be wrong, the DiT's to_q rows are right.
    d, m = 8, 16
    sd = {"lora_unet_single_blocks_0_linear1.lora_down.weight": _rand(2, d),
          "lora_unet_single_blocks_0_linear1.lora_up.weight": _rand(3 * d + m, 2)}
    shapes = {"single_transformer_blocks.0.attn.to_q.weight": (d, d), "single_transformer_blocks.0.attn.to_k.weight":
              (d, d), "single_transformer_blocks.0.attn.to_v.weight": (d, d),
              "single_transformer_blocks.0.proj_mlp.weight": (m, d)}
    plan = plan_merge([(_save(tmp_path, "hv.safetensors", sd), 1.0)], shapes)
    assert set(plan.targets) == set(shapes)


# --------------------------------------------------------------------------------------------------
# LoHa / LoKr / full delta
# --------------------------------------------------------------------------------------------------


def test_loha_formula(tmp_path):
    name = musubi_name("transformer_blocks.0.ff.net.0.proj")
    t = {"hada_w1_a": _rand(M, R, seed=1), "hada_w1_b": _rand(R, D, seed=2), "hada_w2_a": _rand(M, R, seed=3),
         "hada_w2_b": _rand(R, D, seed=4)}
    sd = {f"{name}.{k}": v for k, v in t.items()} | {f"{name}.alpha": torch.tensor(1.0)}
    path = _save(tmp_path, "loha.safetensors", sd)
    lora = read_lora(path)
    assert lora.network_label == "LoHa" and lora.ranks() == [R]
    base = _fake_dit()["transformer_blocks.0.ff.net.0.proj.weight"]
    expected = base + 0.8 * ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])) * (1.0 / R)
    torch.testing.assert_close(_merged(path, 0.8)["transformer_blocks.0.ff.net.0.proj.weight"], expected,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("low_rank", [True, False])
def test_lokr_formula(tmp_path, low_rank):
    name = musubi_name("transformer_blocks.0.attn.to_q")
    w1 = _rand(8, 16, seed=5)  # (out_l, in_m); D = 8 * 16
    t = {"lokr_w1": w1}
    if low_rank:
        t |= {"lokr_w2_a": _rand(16, 2, seed=6), "lokr_w2_b": _rand(2, 8, seed=7)}
        w2, scale = t["lokr_w2_a"] @ t["lokr_w2_b"], 4.0 / 2
    else:
        # Both factors full: LyCORIS forces scale 1 whatever alpha says.
        t |= {"lokr_w2": _rand(16, 8, seed=8)}
        w2, scale = t["lokr_w2"], 1.0
    sd = {f"{name}.{k}": v for k, v in t.items()} | {f"{name}.alpha": torch.tensor(4.0)}
    path = _save(tmp_path, "lokr.safetensors", sd)
    assert read_lora(path).network_label == "LoKr"
    base = _fake_dit()["transformer_blocks.0.attn.to_q.weight"]
    expected = base + torch.kron(w1, w2) * scale
    torch.testing.assert_close(_merged(path)["transformer_blocks.0.attn.to_q.weight"], expected, rtol=1e-6, atol=1e-6)


def test_lycoris_on_fused_hunyuanvideo_modules(tmp_path):
    # LoHa splits exactly by rows; LoKr splits in Kronecker form when rows fall on its w2 blocks
    # (txt_attn_qkv, 16-row blocks), else it is materialised (linear1 with 56-row blocks).
    loha = {"hada_w1_a": _rand(3 * D, R, seed=1), "hada_w1_b": _rand(R, D, seed=2),
            "hada_w2_a": _rand(3 * D, R, seed=3), "hada_w2_b": _rand(R, D, seed=4)}
    lokr = {"lokr_w1": _rand(24, 8, seed=5), "lokr_w2_a": _rand(16, 2, seed=6), "lokr_w2_b": _rand(2, 16, seed=7)}
    lokr_m = {"lokr_w1": _rand(16, 8, seed=8), "lokr_w2_a": _rand(56, 2, seed=9), "lokr_w2_b": _rand(2, 16, seed=10)}
    sd = {f"lora_unet_double_blocks_0_img_attn_qkv.{k}": v for k, v in loha.items()}
    sd |= {f"lora_unet_double_blocks_0_txt_attn_qkv.{k}": v for k, v in lokr.items()}
    sd |= {f"lora_unet_single_blocks_0_linear1.{k}": v for k, v in lokr_m.items()}
    sd |= {f"lora_unet_{m}.alpha": torch.tensor(1.0) for m in
           ("double_blocks_0_img_attn_qkv", "double_blocks_0_txt_attn_qkv", "single_blocks_0_linear1")}
    lora = read_lora(_save(tmp_path, "hv_lyco.safetensors", sd))
    kinds = {p: m.kind for p, m in lora.modules.items()}
    assert kinds["transformer_blocks.0.attn.to_k"] == "loha"
    assert kinds["transformer_blocks.0.attn.add_v_proj"] == "lokr"
    assert kinds["single_transformer_blocks.0.proj_mlp"] == "diff"
    d = {p: m.product() * m.scale for p, m in lora.modules.items()}
    loha_full = (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"]) / R
    lokr_full = torch.kron(lokr["lokr_w1"], lokr["lokr_w2_a"] @ lokr["lokr_w2_b"]) / 2
    lokr_m_full = torch.kron(lokr_m["lokr_w1"], lokr_m["lokr_w2_a"] @ lokr_m["lokr_w2_b"]) / 2
    parts = [d[f"transformer_blocks.0.attn.to_{c}"] for c in "qkv"]
    torch.testing.assert_close(torch.cat(parts), loha_full, rtol=1e-6, atol=1e-6)
    parts = [d[f"transformer_blocks.0.attn.add_{c}_proj"] for c in "qkv"]
    torch.testing.assert_close(torch.cat(parts), lokr_full, rtol=1e-6, atol=1e-6)
    parts = [d[f"single_transformer_blocks.0.attn.to_{c}"] for c in "qkv"] + [d["single_transformer_blocks.0.proj_mlp"]]
    torch.testing.assert_close(torch.cat(parts), lokr_m_full, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# converters: every direction round-trips
# --------------------------------------------------------------------------------------------------


def _lycoris_file(tmp_path: Path) -> Path:
    a = musubi_name("transformer_blocks.0.attn.to_q")
    b = musubi_name("single_transformer_blocks.0.proj_mlp")
    sd = {f"{a}.hada_w1_a": _rand(D, R, seed=1), f"{a}.hada_w1_b": _rand(R, D, seed=2),
          f"{a}.hada_w2_a": _rand(D, R, seed=3), f"{a}.hada_w2_b": _rand(R, D, seed=4), f"{a}.alpha": torch.tensor(3.0),
          f"{b}.lokr_w1": _rand(16, 8, seed=5), f"{b}.lokr_w2_a": _rand(32, 2, seed=6),
          f"{b}.lokr_w2_b": _rand(2, 16, seed=7), f"{b}.alpha": torch.tensor(1.0)}
    return _save(tmp_path, "lyco.safetensors", sd)


@pytest.mark.parametrize("first", ["diffusers", "comfy", "musubi"])
@pytest.mark.parametrize("second", ["diffusers", "comfy", "musubi"])
@pytest.mark.parametrize("kind", ["lora", "lycoris"])
def test_round_trip(tmp_path, first, second, kind):
    src = (_save(tmp_path, "src.safetensors", _musubi_lora(FP_MODULES, alpha=3.0)) if kind == "lora"
           else _lycoris_file(tmp_path))
    mid = tmp_path / "mid.safetensors"
    out = tmp_path / "out.safetensors"
    convert_lora_file(src, first, mid)
    convert_lora_file(mid, second, out)
    fmt = {"diffusers": "diffusers", "comfy": "comfy", "musubi": "musubi-framepack"}
    assert read_lora(mid).format == fmt[first] and read_lora(out).format == fmt[second]
    want, got = _deltas(src), _deltas(out)
    assert set(want) == set(got)
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-6)
    if first != "musubi" and second != "musubi":
        # Between PEFT layouts nothing is rescaled: bit-identical tensors under renamed keys.
        a, b = load_file(str(mid)), load_file(str(out))
        prefix = {"diffusers": "transformer.", "comfy": "diffusion_model."}
        assert {k.removeprefix(prefix[first]): v for k, v in a.items()}.keys() == \
            {k.removeprefix(prefix[second]): v for k, v in b.items()}.keys()
        for k, v in a.items():
            assert torch.equal(v, b[prefix[second] + k.removeprefix(prefix[first])])


def test_diffusers_to_musubi_to_diffusers_is_bit_exact(tmp_path):
    sd = {f"transformer.{p}.lora_{ab}.weight": _rand(*((R, s[1]) if ab == "A" else (s[0], R)), seed=i)
          for i, (p, s) in enumerate(FP_MODULES.items()) for ab in "AB"}
    src = _save(tmp_path, "d.safetensors", sd)
    convert_lora_file(src, "musubi", tmp_path / "m.safetensors")
    m = load_file(str(tmp_path / "m.safetensors"))
    assert all(v.item() == R for k, v in m.items() if k.endswith(".alpha"))  # alpha = rank: scale 1
    convert_lora_file(tmp_path / "m.safetensors", "diffusers", tmp_path / "d2.safetensors")
    back = load_file(str(tmp_path / "d2.safetensors"))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], v) for k, v in sd.items())


def test_musubi_to_diffusers_folds_alpha(tmp_path):
    src = _save(tmp_path, "m.safetensors", _musubi_lora({"transformer_blocks.0.ff_context.net.2": (D, M)}, alpha=2.0))
    convert_lora_file(src, "diffusers", tmp_path / "d.safetensors")
    d = load_file(str(tmp_path / "d.safetensors"))
    m = load_file(str(src))
    name = "lora_unet_transformer_blocks_0_ff_context_net_2"
    assert sorted(d) == ["transformer.transformer_blocks.0.ff_context.net.2.lora_A.weight",
                         "transformer.transformer_blocks.0.ff_context.net.2.lora_B.weight"]
    key = "transformer.transformer_blocks.0.ff_context.net.2"
    assert torch.equal(d[f"{key}.lora_A.weight"], m[f"{name}.lora_down.weight"])
    assert torch.equal(d[f"{key}.lora_B.weight"], m[f"{name}.lora_up.weight"] * 0.5)


def test_fold_stays_lossless_in_low_precision(tmp_path):
    # alpha/rank = 3/4 is not exact in bf16: the folded factor is stored in float32 instead of being rounded.
    src = _save(tmp_path, "m.safetensors", _musubi_lora({"transformer_blocks.0.attn.to_q": (D, D)}, alpha=3.0,
                                                         dtype=torch.bfloat16))
    convert_lora_file(src, "comfy", tmp_path / "c.safetensors")
    c = load_file(str(tmp_path / "c.safetensors"))
    assert c["diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight"].dtype == torch.bfloat16
    assert c["diffusion_model.transformer_blocks.0.attn.to_q.lora_B.weight"].dtype == torch.float32
    want, got = _deltas(src), _deltas(tmp_path / "c.safetensors")
    torch.testing.assert_close(got["transformer_blocks.0.attn.to_q"], want["transformer_blocks.0.attn.to_q"],
                               rtol=1e-6, atol=1e-7)


def test_convert_never_overwrites(tmp_path):
    src = _save(tmp_path, "m.safetensors", _musubi_lora({"transformer_blocks.0.attn.to_q": (D, D)}))
    (tmp_path / "out.safetensors").write_bytes(b"keep")
    with pytest.raises(FramepackError, match="file exists"):
        convert_lora_file(src, "diffusers", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"keep"
    convert_lora_file(src, "diffusers", tmp_path / "out.safetensors", overwrite=True)
    assert len(load_file(str(tmp_path / "out.safetensors"))) == 2
    assert not list(tmp_path.glob(".*tmp"))


# --------------------------------------------------------------------------------------------------
# merge behaviour: multipliers, patterns, stacking, errors
# --------------------------------------------------------------------------------------------------


def test_specs_from_options():
    o = SimpleNamespace(lora_weight=["a", "b", "c"], lora_multiplier=[0.5], include_patterns=None,
                        exclude_patterns=["x"])
    assert lora_specs_from_options(o) == [LoraSpec("a", 0.5, None, "x"), LoraSpec("b", 0.5, None, "x"),
                                          LoraSpec("c", 0.5, None, "x")]
    o = SimpleNamespace(lora_weight=["a", "b", "c"], lora_multiplier=[0.5, 0.7], include_patterns=["i", "j", "k"],
                        exclude_patterns=None)
    assert [(s.multiplier, s.include) for s in lora_specs_from_options(o)] == [(0.5, "i"), (0.7, "j"), (1.0, "k")]
    assert lora_specs_from_options(SimpleNamespace(lora_weight=None)) == []
    with pytest.raises(FramepackError, match="--exclude_patterns: 2 patterns for 3"):
        lora_specs_from_options(SimpleNamespace(lora_weight=["a", "b", "c"], exclude_patterns=["x", "y"]))


def test_include_exclude_patterns(tmp_path):
    path = _save(tmp_path, "m.safetensors", _musubi_lora(FP_MODULES))
    base = _fake_dit()
    # Dotted and musubi spellings both work (musubi users write patterns for lora_unet_* keys).
    for spec in (LoraSpec(str(path), exclude=r"single_transformer_blocks\."),
                 LoraSpec(str(path), exclude="lora_unet_single_")):
        sd = _fake_dit()
        report = merge_loras(sd, [spec])
        assert "8 modules merged, 3 skipped by --include_patterns/--exclude_patterns" in report[0]
        assert torch.equal(sd["single_transformer_blocks.0.proj_mlp.weight"],
                           base["single_transformer_blocks.0.proj_mlp.weight"])
        q = "transformer_blocks.0.attn.to_q.weight"
        assert not torch.equal(sd[q], base[q])
    sd = _fake_dit()
    report = merge_loras(sd, [(path, 1.0)], include=r"attn_to_(q|k)$")
    assert "2 modules merged" in report[0]
    with pytest.raises(FramepackError, match="filtered out all 11 matching modules"):
        merge_loras(_fake_dit(), [LoraSpec(str(path), include="nothing_matches")])
    with pytest.raises(FramepackError, match="invalid regular expression"):
        merge_loras(_fake_dit(), [LoraSpec(str(path), include="(")])


def test_loras_stack_in_float32(tmp_path):
    a = _save(tmp_path, "a.safetensors", _musubi_lora(FP_MODULES))
    once, twice = _fake_dit(), _fake_dit()
    merge_loras(once, [(a, 0.75)])
    merge_loras(twice, [(a, 0.25), (a, 0.5)])
    for k in once:
        torch.testing.assert_close(twice[k], once[k], rtol=0, atol=2e-6)
    # bf16 weights: every LoRA is added in float32, then the sum is rounded once.
    k = "transformer_blocks.0.attn.to_q.weight"
    sd = {k: _fake_dit()[k].bfloat16()}
    merge_loras(sd, [(a, 0.25), (a, 0.5)])
    delta = _deltas(a)["transformer_blocks.0.attn.to_q"]
    expected = (_fake_dit()[k].bfloat16().float() + 0.75 * delta).bfloat16()
    assert sd[k].dtype == torch.bfloat16
    assert (sd[k] != expected).float().mean() < 0.01  # float32 op order may flip a rare last bf16 bit


def test_zero_match_and_wrong_size_are_errors(tmp_path):
    # A HunyuanVideo LoRA targeting only modules outside the blocks: nothing to merge.
    sd = {"lora_unet_img_in_proj.lora_down.weight": _rand(R, 64), "lora_unet_img_in_proj.lora_up.weight":
          _rand(D, R), "lora_unet_img_in_proj.alpha": torch.tensor(1.0)}
    sd |= {"lora_unet_final_layer_linear.lora_down.weight": _rand(R, D),
           "lora_unet_final_layer_linear.lora_up.weight": _rand(64, R)}
    path = _save(tmp_path, "x.safetensors", sd)
    want = (r"--lora_weight: .*x.safetensors matched no module of this DiT \(format musubi-hunyuanvideo, 5 keys "
            r"unused\); is it a LoRA for another model\?")
    with pytest.raises(ModelFormatError, match=want):
        merge_loras(_fake_dit(), [(path, 1.0)])
    big = _save(tmp_path, "big.safetensors", _musubi_lora({"transformer_blocks.0.attn.to_q": (3072, 3072)}))
    with pytest.raises(ModelFormatError, match="is 3072x3072 in the LoRA but 128x128 in the DiT"):
        merge_loras(_fake_dit(), [(big, 1.0)])


def test_verbose_lists_unused_keys(tmp_path):
    sd = _musubi_lora({"transformer_blocks.0.attn.to_q": (D, D), "transformer_blocks.7.attn.to_q": (D, D)})
    path = _save(tmp_path, "x.safetensors", sd)
    report = merge_loras(_fake_dit(), [(path, 1.0)])
    assert report == [f"LoRA x.safetensors: musubi-framepack LoRA (rank {R}, alpha 2), multiplier 1: 1 modules "
                      "merged, 3 keys unused (--verbose lists them)"]
    report = merge_loras(_fake_dit(), [(path, 1.0)], verbose=True)
    assert len(report) == 4 and all(line.startswith("  unused: lora_unet_transformer_blocks_7_") for line in report[1:])


def test_pickle_lora_is_read_weights_only(tmp_path):
    p = tmp_path / "x.pt"
    torch.save(_musubi_lora({"transformer_blocks.0.attn.to_q": (D, D)}), p)
    assert list(read_lora(p).modules) == ["transformer_blocks.0.attn.to_q"]


# --------------------------------------------------------------------------------------------------
# writer, inspect, CLI
# --------------------------------------------------------------------------------------------------


def test_streamed_safetensors_writer(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "b": torch.tensor(2.5),
               "c": torch.tensor([True, False]), "d": torch.zeros(0, 4)}
    out = tmp_path / "w.safetensors"
    save_tensors(out, tensors, {"k": "v"})
    back = load_file(str(out))
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"k": "v"}
    with pytest.raises(RuntimeError):  # a tensor not matching its header never leaves a file behind
        write_safetensors(tmp_path / "bad.safetensors", [("a", torch.float32, (2,))], lambda k: torch.zeros(3))
    assert not (tmp_path / "bad.safetensors").exists() and not list(tmp_path.glob(".*tmp"))


def test_describe(tmp_path):
    sd, _ = _hv_lora("musubi")
    info = describe_lora(_save(tmp_path, "hv.safetensors", sd, {"ss_network_dim": "4", "ss_seed": "1"}))
    assert info["format"] == "musubi-hunyuanvideo" and info["network"] == "LoRA"
    assert info["file_modules"] == 10 and info["framepack_modules"] == 16
    assert info["ranks"] == [R] and info["alphas"] == [2.0] and info["scales"] == [0.5]
    assert info["targets"]["single_transformer_blocks"] == {
        "blocks": "0", "modules": ["attn.to_k", "attn.to_q", "attn.to_v", "norm.linear", "proj_mlp", "proj_out"]}
    assert info["metadata"] == {"ss_network_dim": "4"} and info["metadata_keys"] == 2
    assert len(info["unused_keys"]) == 3


def test_cli_inspect_and_convert(tmp_path, capsys):
    sd, _ = _hv_lora("comfy")
    src = _save(tmp_path, "hv.safetensors", sd)
    with pytest.raises(SystemExit) as e:
        main(["lora", "inspect", str(src), "--json"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["format"] == "comfy-hunyuanvideo"
    with pytest.raises(SystemExit) as e:
        main(["lora", "inspect", str(src)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "comfy-hunyuanvideo" in out and "unused keys" in out
    out_file = tmp_path / "fp.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["lora", "convert", str(src), "--to", "musubi", "--output", str(out_file)])
    res = capsys.readouterr()
    assert e.value.code == 0 and "to musubi" in res.err and res.out == f"Wrote {out_file}\n"
    assert read_lora(out_file).format == "musubi-framepack"
    with pytest.raises(SystemExit) as e:
        main(["lora", "convert", str(src), "--to", "musubi", "--output", str(out_file)])
    assert e.value.code == 2 and "file exists" in capsys.readouterr().err
    not_lora = _save(tmp_path, "vae.safetensors", {"encoder.conv_in.conv.weight": torch.zeros(1)})
    with pytest.raises(SystemExit) as e:
        main(["lora", "inspect", str(not_lora)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("Error: FILE: ") and "looks like a HunyuanVideo VAE" in err
