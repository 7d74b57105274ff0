"""Parity of the SigLIP image encoder and its preprocessing against the reference golden unit/siglip, for
every weight format; wrong-file errors. Models load once per module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack_cli.errors import ModelFormatError
from framepack_cli.io.images import load_image, resize_to_bucket
from framepack_cli.models.image_encoder import encode_image, load_image_encoder, siglip_pixels, siglip_resize
from tests.conftest import GOLDEN, MODELS, golden

F32 = torch.float32
FORMATS = {
    "comfy_single": MODELS / "sigclip_tiny.safetensors",
    "hf_dir": MODELS / "image_encoder",
    "snapshot": MODELS,
}


@pytest.fixture(scope="module")
def gold():
    return golden("unit/siglip")


@pytest.fixture(scope="module")
def models():
    return {name: load_image_encoder(p, device="cpu", dtype=F32) for name, p in FORMATS.items()}


@pytest.fixture(scope="module")
def resized(gold):
    """The generator's bucket-resized uint8 images, prepared as the golden's JSON describes."""
    _, meta = gold
    out = {}
    for name, case in meta.items():
        rgb, alpha = load_image(GOLDEN / case["file"])
        assert alpha is None
        assert list(rgb.shape[:2]) == case["orig_hw"]
        h, w = case["bucket_hw"]
        out[name] = resize_to_bucket(rgb, w, h)
    return out


def test_bucket_resized_images_exact(gold, resized):
    tensors, meta = gold
    assert set(meta) == {"wide", "tall"}
    for name, img in resized.items():
        assert np.array_equal(img, tensors[f"{name}.resized_uint8"].numpy()), name


def test_processor_resize_exact(gold):
    tensors, meta = gold
    for name in meta:
        got = siglip_resize(tensors[f"{name}.resized_uint8"].numpy(), 384)
        assert np.array_equal(got.transpose(2, 0, 1), tensors[f"{name}.processor_resized_384_uint8_chw"].numpy())
        px = siglip_pixels(tensors[f"{name}.resized_uint8"].numpy(), 384)
        expect = (tensors[f"{name}.processor_resized_384_uint8_chw"].float() / 255 - 0.5) / 0.5
        assert torch.equal(px[0], expect)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_last_hidden_state_matches_golden(fmt, gold, models, resized):
    tensors, meta = gold
    for name in meta:
        out = encode_image(models[fmt], resized[name])
        assert out.shape == tensors[f"{name}.last_hidden_state"].shape == (1, 729, 144)
        torch.testing.assert_close(out, tensors[f"{name}.last_hidden_state"], atol=1e-4, rtol=1e-4)


def test_every_format_loads_identical_float32_weights(models):
    ref = models["hf_dir"].state_dict()
    for model in models.values():
        sd = model.state_dict()
        assert sd.keys() == ref.keys()
        for k in ref:
            assert sd[k].dtype == F32 and torch.equal(sd[k], ref[k]), k


def test_inferred_config_matches_hf_dir(models):
    a, b = models["comfy_single"].config, models["hf_dir"].config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size",
                "image_size", "layer_norm_eps", "hidden_act"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.vision_use_head is False  # pooling head never used: not loaded, not run


def test_keys_without_vision_model_prefix(tmp_path, models):
    sd = load_file(str(MODELS / "sigclip_tiny.safetensors"))
    bare = {k.removeprefix("vision_model."): v for k, v in sd.items() if not k.startswith("vision_model.head.")}
    f = tmp_path / "siglip_bare.safetensors"
    save_file(bare, str(f))
    model = load_image_encoder(f, device="cpu", dtype=F32)
    ref = models["hf_dir"].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_lora_as_image_encoder_is_rejected():
    with pytest.raises(ModelFormatError) as ei:
        load_image_encoder(MODELS / "lora_tiny.safetensors", device="cpu", dtype=F32)
    msg = str(ei.value)
    assert "--image_encoder" in msg and "lora_tiny.safetensors" in msg and "LoRA" in msg


def test_clip_as_image_encoder_is_rejected():
    with pytest.raises(ModelFormatError, match="CLIP-L"):
        load_image_encoder(MODELS / "clip_l_tiny.safetensors", device="cpu", dtype=F32)


def test_non_uint8_input_is_refused(models):
    from framepack_cli.errors import FramepackError

    with pytest.raises(FramepackError, match="uint8"):
        encode_image(models["hf_dir"], np.zeros((8, 8, 3), dtype=np.float32))
