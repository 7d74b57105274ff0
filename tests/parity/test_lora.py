"""LoRA merge parity with the reference goldens (unit/lora_merge, unit/lora_keys.json), merged-DiT files, and a peer
tool (diffusers + PEFT) reading our `--to diffusers` output."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli.cli.app import main
from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.lora import LoraSpec, convert_lora_file, merge_dit_file, merge_loras, read_lora
from framepack_cli.models.transformer import load_dit
from tests.conftest import GOLDEN, MODELS, golden

ATOL, RTOL = 2e-4, 1e-3  # forward (README §7)
W_ATOL = 1e-6  # merged weights
LORA = MODELS / "lora_tiny.safetensors"
DIT = MODELS / "dit_single.safetensors"
SHARD1 = MODELS / "dit_sharded" / "diffusion_pytorch_model-00001-of-00002.safetensors"


@pytest.fixture(scope="module")
def case():
    return golden("unit/lora_merge")


@pytest.fixture(scope="module")
def inputs():
    tensors, _ = golden("unit/dit_vanilla")
    return {k[3:]: v for k, v in tensors.items() if k.startswith("in.")}


@pytest.fixture(scope="module")
def base():
    return load_dit(DIT)


@pytest.fixture(scope="module")
def merged(case):
    return load_dit(DIT, loras=[LoraSpec(str(LORA), case[1]["multiplier"])])


def _check_merged_weights(state: dict, tensors: dict, prefix: str = "", atol: float = W_ATOL) -> None:
    for key, want in tensors.items():
        if key.startswith("merged."):
            torch.testing.assert_close(state[prefix + key[len("merged."):]].float(), want, rtol=0, atol=atol)


def test_golden_lora_file(case):
    keys = json.loads((GOLDEN / "unit" / "lora_keys.json").read_text())
    assert sorted(load_file(str(LORA))) == sorted(keys)
    lora = read_lora(LORA)
    meta = case[1]
    assert lora.format == "musubi-framepack" and not lora.unused
    assert len(lora.modules) == meta["n_lora_modules"] and lora.ranks() == [meta["rank"]]
    assert lora.alphas() == [meta["alpha"]]


@torch.no_grad()
def test_forward_with_lora(merged, case, inputs):
    tensors, meta = case
    assert merged.lora_report == [
        f"LoRA lora_tiny.safetensors: musubi-framepack LoRA (rank 4, alpha 2), multiplier {meta['multiplier']:g}: "
        "34 modules merged, 0 keys unused"]
    _check_merged_weights(merged.state_dict(), tensors)
    out = merged(**inputs)
    torch.testing.assert_close(out, tensors["out.velocity_with_lora"], atol=ATOL, rtol=RTOL)


def test_load_dit_without_lora_is_unchanged(base, case):
    assert base.lora_report == []
    ref = load_file(str(DIT))
    assert torch.equal(base.state_dict()["transformer_blocks.0.attn.to_q.weight"],
                       ref["transformer_blocks.0.attn.to_q.weight"])


@pytest.mark.parametrize("to", ["diffusers", "comfy", "musubi"])
def test_every_layout_merges_to_the_golden(tmp_path, case, to):
    """Each converted file merges to the same weights as the original (alpha 2 / rank 4 folds exactly)."""
    tensors, meta = case
    out = tmp_path / f"{to}.safetensors"
    convert_lora_file(LORA, to, out)
    state = load_file(str(DIT))
    report = merge_loras(state, [(out, meta["multiplier"])])
    assert "34 modules merged, 0 keys unused" in report[0]
    _check_merged_weights(state, tensors)
    if to == "musubi":
        # musubi output is the reference's own key set (lora_keys.json), alpha now = rank with up pre-scaled.
        assert sorted(load_file(str(out))) == sorted(json.loads((GOLDEN / "unit" / "lora_keys.json").read_text()))


@torch.no_grad()
def test_diffusers_load_lora_adapter_reads_our_output(tmp_path, base, case, inputs):
    """A peer tool: diffusers' HunyuanVideoFramepackTransformer3DModel.load_lora_adapter (PEFT) on our file."""
    pytest.importorskip("peft")
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    tensors, meta = case
    out = tmp_path / "diffusers.safetensors"
    convert_lora_file(LORA, "diffusers", out)
    model = copy.deepcopy(base)
    assert isinstance(model, HunyuanVideoFramepackTransformer3DModel)
    HunyuanVideoFramepackTransformer3DModel.load_lora_adapter(model, str(out), prefix="transformer",
                                                              adapter_name="framepack")
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == meta["n_lora_modules"]
    for layer in layers:  # the --lora_multiplier, as PEFT applies it at run time
        layer.scale_layer(meta["multiplier"])
    torch.testing.assert_close(model(**inputs), tensors["out.velocity_with_lora"], atol=ATOL, rtol=RTOL)
    model.fuse_lora()
    fused = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}
    _check_merged_weights(fused, tensors)


def test_merge_command_writes_the_merged_dit(tmp_path, case, capsys):
    tensors, meta = case
    out = tmp_path / "merged.safetensors"
    argv = ["lora", "merge", "--dit", str(DIT), "--lora_weight", str(LORA), "--lora_multiplier",
            str(meta["multiplier"]), "--output", str(out)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    printed = capsys.readouterr()
    assert "34 modules merged" in printed.err and printed.out == f"Wrote {out}\n"
    state = load_file(str(out))
    src = load_file(str(DIT))
    assert state.keys() == src.keys() and all(state[k].dtype == src[k].dtype for k in src)
    _check_merged_weights(state, tensors)
    untouched = "context_embedder.proj_in.weight"
    assert torch.equal(state[untouched], src[untouched])
    with safe_open(str(out), "pt") as f:
        merged_info = json.loads(f.metadata()["framepack.merged_loras"])
    assert merged_info == [{"file": "lora_tiny.safetensors", "format": "musubi-framepack", "network": "LoRA",
                            "multiplier": meta["multiplier"], "modules_merged": 34, "keys_unused": 0}]
    assert not list(tmp_path.glob(".*tmp"))
    # Never over an existing file without --overwrite; with it, the file is replaced.
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "--output: file exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*argv[:7], "0", *argv[8:], "--overwrite"])  # multiplier 0: the original weights again
    assert e.value.code == 0
    assert torch.equal(load_file(str(out))["transformer_blocks.0.attn.to_q.weight"],
                       src["transformer_blocks.0.attn.to_q.weight"])


def test_merge_sharded_bf16_into_one_file(tmp_path, case):
    tensors, meta = case
    out = tmp_path / "merged_bf16.safetensors"
    report = merge_dit_file(SHARD1, [LoraSpec(str(LORA), meta["multiplier"])], out)
    assert "34 modules merged" in report[0]
    state = load_file(str(out))
    assert len(state) == len(load_file(str(DIT))) and all(v.dtype == torch.bfloat16 for v in state.values())
    # Merged in float32 from the bf16 weights (exact upcast), then one rounding to bf16: within one bf16 step.
    for key in ("transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.1.proj_out.weight"):
        torch.testing.assert_close(state[key].float(), tensors[f"merged.{key}"], rtol=2**-8, atol=0)
    out32 = tmp_path / "merged_f32.safetensors"
    merge_dit_file(SHARD1, [LoraSpec(str(LORA), meta["multiplier"])], out32, dtype="float32")
    _check_merged_weights(load_file(str(out32)), tensors)


def test_merge_keeps_a_prefixed_layout(tmp_path, case):
    """ComfyUI-style files: keys under `model.diffusion_model.`, other components alongside, all kept."""
    tensors, meta = case
    src = {f"model.diffusion_model.{k}": v for k, v in load_file(str(DIT)).items()}
    src["vae.decoder.conv_in.conv.weight"] = torch.ones(2, 2)
    comfy = tmp_path / "comfy_dit.safetensors"
    save_file(src, str(comfy))
    out = tmp_path / "merged.safetensors"
    merge_dit_file(comfy, [LoraSpec(str(LORA), meta["multiplier"])], out)
    state = load_file(str(out))
    assert state.keys() == src.keys() and torch.equal(state["vae.decoder.conv_in.conv.weight"], torch.ones(2, 2))
    _check_merged_weights(state, tensors, prefix="model.diffusion_model.")


def test_merge_errors(tmp_path):
    with pytest.raises(ModelFormatError, match=r"--dit: .*lora_tiny.safetensors looks like a LoRA"):
        merge_dit_file(LORA, [LoraSpec(str(LORA))], tmp_path / "o.safetensors")
    with pytest.raises(ModelFormatError, match=r"--lora_weight: .*dit_single.safetensors looks like a FramePack DiT"):
        load_dit(DIT, loras=[LoraSpec(str(DIT))])
    other = tmp_path / "hv_other.safetensors"  # a HunyuanVideo LoRA of only non-block modules
    save_file({"lora_unet_txt_in_input_embedder.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_txt_in_input_embedder.lora_up.weight": torch.zeros(8, 2),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 3072),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 2)}, str(other))
    with pytest.raises(ModelFormatError, match="is 3072x3072 in the LoRA but 128x128 in the DiT"):
        merge_dit_file(DIT, [LoraSpec(str(other))], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    with pytest.raises(FramepackError, match="is also an input"):
        merge_dit_file(DIT, [LoraSpec(str(LORA))], DIT, overwrite=True)


@torch.no_grad()
def test_include_exclude_and_stacking_on_the_dit(base, case, inputs):
    tensors, meta = case
    m = meta["multiplier"]
    # Two halves of the multiplier stack to the golden; excluding everything but block 0 leaves others alone.
    state = {k: v.clone() for k, v in base.state_dict().items()}
    merge_loras(state, [LoraSpec(str(LORA), m / 2), LoraSpec(str(LORA), m / 2)])
    _check_merged_weights(state, tensors, atol=2e-6)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    report = merge_loras(state, [LoraSpec(str(LORA), m, include=r"^transformer_blocks\.0\.")])
    assert "12 modules merged, 22 skipped" in report[0]
    torch.testing.assert_close(state["transformer_blocks.0.attn.to_q.weight"],
                               tensors["merged.transformer_blocks.0.attn.to_q.weight"], rtol=0, atol=W_ATOL)
    assert torch.equal(state["single_transformer_blocks.1.proj_out.weight"],
                       base.state_dict()["single_transformer_blocks.1.proj_out.weight"])
