"""Parity of prompt encoding (LLaMA + CLIP-L) against the reference golden unit/text_encode, for every
weight format; loader formats, fp8, tokenizer discovery and wrong-file errors. Models load once per module."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.text_encoders import (
    DEFAULT_CROP_START,
    PROMPT_PREFIX,
    SYSTEM_PROMPT,
    crop_or_pad_with_mask,
    encode_prompt,
    find_tokenizer_dir,
    load_text_encoder1,
    load_text_encoder2,
    load_tokenizers,
)
from tests.conftest import MODELS, golden

TOL = {"atol": 1e-4, "rtol": 1e-4}
F32 = torch.float32

TE1_FORMATS = {
    "hf_dir": MODELS / "text_encoder",
    "first_shard": MODELS / "text_encoder" / "model-00001-of-00002.safetensors",
    "comfy_single": MODELS / "llava_llama3_tiny.safetensors",
    "snapshot": MODELS,
}
TE2_FORMATS = {
    "hf_dir": MODELS / "text_encoder_2",
    "comfy_single": MODELS / "clip_l_tiny.safetensors",
    "snapshot": MODELS,
}


@pytest.fixture(scope="module")
def gold():
    return golden("unit/text_encode")


@pytest.fixture(scope="module")
def tokenizers():
    return load_tokenizers(TE1_FORMATS["first_shard"], TE2_FORMATS["comfy_single"])


@pytest.fixture(scope="module")
def te1_models():
    return {name: load_text_encoder1(p, device="cpu", dtype=F32) for name, p in TE1_FORMATS.items()}


@pytest.fixture(scope="module")
def te2_models():
    return {name: load_text_encoder2(p, device="cpu", dtype=F32) for name, p in TE2_FORMATS.items()}


def _assert_state_dicts_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == F32, k
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------- golden parity


@pytest.mark.parametrize("fmt", list(TE1_FORMATS))
def test_prompt_encoding_matches_golden(fmt, gold, tokenizers, te1_models, te2_models):
    tensors, meta = gold
    tok1, tok2 = tokenizers
    te2 = te2_models["comfy_single" if fmt == "comfy_single" else "hf_dir"]
    assert set(meta) == {"short", "empty", "long", "custom_system"}
    for name, case in meta.items():
        vec, mask, pooler = encode_prompt(
            case["prompt"], te1_models[fmt], tok1, te2, tok2, custom_system_prompt=case["custom_system_prompt"]
        )
        assert vec.shape == tensors[f"{name}.llama_vec"].shape
        assert torch.equal(mask, tensors[f"{name}.llama_attention_mask"]), name
        assert int(mask.sum()) == case["llama_len"], name
        torch.testing.assert_close(vec, tensors[f"{name}.llama_vec"], **TOL)
        torch.testing.assert_close(pooler, tensors[f"{name}.clip_l_pooler"], **TOL)


@pytest.mark.parametrize("fmt", list(TE2_FORMATS))
def test_clip_formats_match_golden(fmt, gold, tokenizers, te1_models, te2_models):
    tensors, meta = gold
    tok1, tok2 = tokenizers
    case = meta["short"]
    _, _, pooler = encode_prompt(case["prompt"], te1_models["hf_dir"], tok1, te2_models[fmt], tok2)
    torch.testing.assert_close(pooler, tensors["short.clip_l_pooler"], **TOL)


def test_clip_token_ids_match_golden(gold, tokenizers):
    tensors, meta = gold
    _, tok2 = tokenizers
    for name, case in meta.items():
        ids = tok2(case["prompt"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        assert torch.equal(ids["input_ids"], tensors[f"{name}.clip_input_ids"]), name


def test_clip_pools_at_argmax_of_ids(te2_models):
    # Legacy eos id 2: the pooled token is the first <|endoftext|> (highest id), not position 2's token.
    te2 = te2_models["hf_dir"]
    assert te2.config.eos_token_id == 2
    ids = torch.tensor([[812, 320, 550, 813, 813, 813] + [813] * 71])
    out = te2(input_ids=ids)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 3])


def test_template_prefix_is_95_tokens(tokenizers):
    tok1, _ = tokenizers
    assert tok1.padding_side == "right"
    ids = tok1(PROMPT_PREFIX.format(SYSTEM_PROMPT))["input_ids"]
    assert len(ids) == DEFAULT_CROP_START
    assert ids[0] == tok1.bos_token_id


# --------------------------------------------------------------------------------------------- weight loading


def test_every_llama_format_loads_identical_float32_weights(te1_models):
    ref = te1_models["hf_dir"].state_dict()
    for name, model in te1_models.items():
        _assert_state_dicts_identical(ref, model.state_dict())
        assert name and model.config.head_dim == 128


def test_llama_is_truncated_to_layer_n_minus_3(te1_models):
    m = te1_models["comfy_single"]
    assert m.config.framepack_source_layers == 4
    assert len(m.layers) == 2 and m.config.num_hidden_layers == 2
    assert isinstance(m.norm, torch.nn.Identity)
    # the inferred config (no config.json) equals the HF directory's
    d = te1_models["hf_dir"].config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "vocab_size"):
        assert getattr(m.config, key) == getattr(d, key), key
    assert m.config.rope_parameters["rope_theta"] == d.rope_parameters["rope_theta"] == 500000.0


def test_llama_truncation_equals_full_model_hidden_states(tokenizers, te1_models):
    # Independent check of the hidden_states[-3] claim with an untruncated transformers LlamaModel.
    from transformers import LlamaModel

    tok1, _ = tokenizers
    full = LlamaModel.from_pretrained(str(MODELS / "text_encoder"), dtype=F32, local_files_only=True).eval()
    ids = tok1("hello world, a cat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = full(input_ids=ids, output_hidden_states=True).hidden_states
        ours = te1_models["hf_dir"](input_ids=ids).last_hidden_state
    assert len(hs) == 5
    torch.testing.assert_close(ours, hs[-3], atol=1e-5, rtol=1e-5)


def test_every_clip_format_loads_identical_float32_weights(te2_models):
    ref = te2_models["hf_dir"].state_dict()
    for model in te2_models.values():
        _assert_state_dicts_identical(ref, model.state_dict())


def test_clip_keys_without_text_model_prefix(tmp_path, te2_models):
    sd = load_file(str(MODELS / "clip_l_tiny.safetensors"))
    bare = {k.removeprefix("text_model."): v for k, v in sd.items()}
    bare["text_projection.weight"] = torch.zeros(4, 4)  # extras of a full CLIP file are ignored
    f = tmp_path / "clip_bare.safetensors"
    save_file(bare, str(f))
    model = load_text_encoder2(f, device="cpu", dtype=F32)
    _assert_state_dicts_identical(te2_models["hf_dir"].state_dict(), model.state_dict())


def test_fp8_llm_runs_and_is_close(gold, tokenizers, te2_models):
    tensors, meta = gold
    tok1, tok2 = tokenizers
    te1 = load_text_encoder1(TE1_FORMATS["comfy_single"], device="cpu", dtype=F32, fp8=True)
    lin = te1.layers[0].self_attn.q_proj
    assert lin.weight.dtype == torch.float8_e4m3fn
    assert te1.embed_tokens.weight.dtype == F32
    assert te1.layers[0].input_layernorm.weight.dtype == F32
    vec, mask, _ = encode_prompt(meta["short"]["prompt"], te1, tok1, te2_models["hf_dir"], tok2)
    ref = tensors["short.llama_vec"]
    assert torch.equal(mask, tensors["short.llama_attention_mask"])
    assert torch.isfinite(vec).all()
    # e4m3 keeps 3 mantissa bits: a few percent relative error, direction preserved
    assert ((vec - ref).norm() / ref.norm()).item() < 0.1
    cos = torch.nn.functional.cosine_similarity(vec[mask], ref[mask], dim=-1)
    assert cos.min().item() > 0.99


def test_float16_compute_dtype(gold, tokenizers, te2_models):
    tensors, meta = gold
    tok1, tok2 = tokenizers
    te1 = load_text_encoder1(TE1_FORMATS["comfy_single"], device="cpu", dtype=torch.float16)
    vec, _, _ = encode_prompt(meta["short"]["prompt"], te1, tok1, te2_models["hf_dir"], tok2)
    assert vec.dtype == torch.float16
    torch.testing.assert_close(vec.float(), tensors["short.llama_vec"], atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------- helpers


def test_crop_or_pad_with_mask():
    v = torch.randn(1, 5, 3)
    out, mask = crop_or_pad_with_mask(v, 8)
    assert out.shape == (1, 8, 3) and mask.dtype == torch.bool
    assert torch.equal(out[:, :5], v) and (out[:, 5:] == 0).all()
    assert mask.tolist() == [[True] * 5 + [False] * 3]
    long = torch.randn(1, 10, 3)
    out, mask = crop_or_pad_with_mask(long, 8)
    assert torch.equal(out, long[:, :8]) and mask.all()


# ---------------------------------------------------------------------------------------------- errors


def test_vae_as_text_encoder1_is_rejected():
    with pytest.raises(ModelFormatError) as ei:
        load_text_encoder1(MODELS / "vae.safetensors", device="cpu", dtype=F32)
    msg = str(ei.value)
    assert "--text_encoder1" in msg and "vae.safetensors" in msg and "VAE" in msg


def test_clip_as_text_encoder1_is_rejected():
    with pytest.raises(ModelFormatError) as ei:
        load_text_encoder1(MODELS / "clip_l_tiny.safetensors", device="cpu", dtype=F32)
    assert "CLIP" in str(ei.value) and "--text_encoder2" in str(ei.value)


def test_llama_as_text_encoder2_is_rejected():
    with pytest.raises(ModelFormatError) as ei:
        load_text_encoder2(MODELS / "llava_llama3_tiny.safetensors", device="cpu", dtype=F32)
    assert "llava_llama3_tiny.safetensors" in str(ei.value) and "LLaMA" in str(ei.value)


def test_truncated_llama_file_is_a_format_error(tmp_path):
    sd = load_file(str(MODELS / "llava_llama3_tiny.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    f = tmp_path / "broken.safetensors"
    save_file(sd, str(f))
    with pytest.raises(ModelFormatError, match="missing"):
        load_text_encoder1(f, device="cpu", dtype=F32)


# ---------------------------------------------------------------------------------------------- tokenizers


def test_tokenizer_not_found_names_the_fix(tmp_path):
    weights = tmp_path / "weights" / "llama.safetensors"
    weights.parent.mkdir()
    shutil.copy(MODELS / "llava_llama3_tiny.safetensors", weights)
    with pytest.raises(FramepackError) as ei:
        load_tokenizers(weights, weights)
    assert "--tokenizer1 DIR" in str(ei.value)
    with pytest.raises(FramepackError) as ei:
        load_tokenizers(weights, weights, tokenizer1=MODELS / "tokenizer")
    assert "--tokenizer2 DIR" in str(ei.value)


def test_explicit_tokenizer_dir_wins_and_bad_dir_is_an_error(tmp_path):
    tok1, tok2 = load_tokenizers(tmp_path / "nothing", None, MODELS / "tokenizer", MODELS / "tokenizer_2")
    assert tok1.padding_side == "right" and len(tok2) == 814
    # a snapshot dir holding tokenizer/ is accepted as the explicit dir too
    assert find_tokenizer_dir(1, None, MODELS) == MODELS / "tokenizer"
    with pytest.raises(FramepackError, match="--tokenizer1"):
        load_tokenizers(None, None, tmp_path, MODELS / "tokenizer_2")


def test_tokenizer_from_offline_hf_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--hunyuanvideo-community--HunyuanVideo"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    shutil.copytree(MODELS / "tokenizer", snap / "tokenizer")
    shutil.copytree(MODELS / "tokenizer_2", snap / "tokenizer_2")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    elsewhere = tmp_path / "w" / "model.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")
    assert find_tokenizer_dir(1, elsewhere) == snap / "tokenizer"
    assert find_tokenizer_dir(2, elsewhere) == snap / "tokenizer_2"
    tok1, _ = load_tokenizers(elsewhere, elsewhere)
    assert len(tok1(PROMPT_PREFIX.format(SYSTEM_PROMPT))["input_ids"]) == DEFAULT_CROP_START


def test_tokenizers_found_beside_the_weights():
    assert find_tokenizer_dir(1, TE1_FORMATS["first_shard"]) == MODELS / "tokenizer"  # one level above
    assert find_tokenizer_dir(1, TE1_FORMATS["comfy_single"]) == MODELS / "tokenizer"  # beside
    assert find_tokenizer_dir(2, TE2_FORMATS["hf_dir"]) == MODELS / "tokenizer_2"
    assert find_tokenizer_dir(2, MODELS) == MODELS / "tokenizer_2"
