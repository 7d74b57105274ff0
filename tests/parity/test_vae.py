"""Parity of the HunyuanVideo VAE wrapper against the reference goldens (unit/vae_*), plus loader formats
and wrong-file errors. Every model is loaded once per module: the tests only read them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.loading import read_header_infos
from framepack_cli.models.vae import (
    DEFAULT_TILE_SAMPLE_SIZE,
    HunyuanVideoVAE,
    infer_vae_config,
    load_vae,
    set_vae_chunk_size,
    vae_decode,
    vae_decode_per_frame,
    vae_encode,
    vae_encode_posterior,
)
from tests.conftest import MODELS, golden

TOL = {"atol": 1e-4, "rtol": 1e-4}
CHUNK = 16  # the golden's chunk size; small enough that convs at 32/64 px (and wider) get chunked


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **TOL)


def _chunked_calls(vae: HunyuanVideoVAE) -> int:
    return sum(getattr(m, "chunked_calls", 0) for m in vae.model.modules())


@pytest.fixture(scope="module")
def vae() -> HunyuanVideoVAE:
    return load_vae(MODELS / "vae_official.pt")


@pytest.fixture(scope="module")
def vae_chunked() -> HunyuanVideoVAE:
    return load_vae(MODELS / "vae.safetensors", chunk_size=CHUNK)


@pytest.fixture(scope="module")
def vae_tiled() -> HunyuanVideoVAE:
    return load_vae(MODELS / "vae", spatial_tile_sample_min_size=64)


@pytest.fixture(scope="module")
def reference_sd() -> dict[str, torch.Tensor]:
    return load_file(str(MODELS / "vae" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def g_encode():
    return golden("unit/vae_encode")[0]


@pytest.fixture(scope="module")
def g_decode():
    return golden("unit/vae_decode")[0]


@pytest.fixture(scope="module")
def g_tiling():
    return golden("unit/vae_tiling")[0]


@pytest.fixture(scope="module")
def decoded(vae, g_decode) -> torch.Tensor:
    return vae_decode(vae, g_decode["in.latent_scaled"])


@pytest.fixture(scope="module")
def posterior(vae, g_encode) -> tuple[torch.Tensor, torch.Tensor]:
    return vae_encode_posterior(vae, g_encode["in.pixels"])


# ---------------------------------------------------------------- encode / decode parity


def test_encode_posterior_matches_reference(posterior, g_encode):
    mean, logvar = posterior
    _close(mean, g_encode["out.mean"])
    _close(mean, g_encode["out.mode"])
    _close(logvar, g_encode["out.logvar"])


def test_encode_scaled_latent_matches_reference_sample(vae, posterior, g_encode):
    # The reference sampled the posterior (std ~4e-7); our mean is within float noise of that sample.
    latent = vae_encode(vae, g_encode["in.pixels"])
    assert latent.shape == (1, 16, 3, 6, 8)
    _close(latent, g_encode["out.latent_scaled"])
    torch.testing.assert_close(latent, g_encode["out.mean"] * vae.scaling_factor, atol=1e-6, rtol=0)
    # Deterministic: the mean, not a draw from the global RNG.
    assert torch.equal(latent, posterior[0] * vae.scaling_factor)


def test_decode_matches_reference(decoded, g_decode):
    assert decoded.shape == (1, 3, 9, 48, 64)  # 4(T-1)+1 frames
    _close(decoded, g_decode["out.pixels"])


def test_decode_per_frame_matches_reference(vae, g_decode):
    pixels = vae_decode_per_frame(vae, g_decode["in.latent_scaled"])
    assert pixels.shape == (1, 3, 3, 48, 64)  # one frame per latent frame
    _close(pixels, g_decode["out.pixels_per_frame"])


def test_frame_causal_attention_equals_stock_masked_attention(vae):
    # Our mid block attends per query frame instead of with diffusers' (T*h*w)^2 mask: same math.
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoMidBlock3D

    block = vae.model.decoder.mid_block
    assert type(block) is not HunyuanVideoMidBlock3D
    x = torch.randn(1, block.resnets[0].norm1.num_channels, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = block(x)
        stock = HunyuanVideoMidBlock3D.forward(block, x)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- --vae_chunk_size


def test_chunked_decode_identical(vae_chunked, decoded, g_decode):
    before = _chunked_calls(vae_chunked)
    pixels = vae_decode(vae_chunked, g_decode["in.latent_scaled"])
    assert _chunked_calls(vae_chunked) > before, "chunking never engaged"
    assert torch.equal(pixels, decoded)


def test_chunked_encode_identical(vae_chunked, posterior, g_encode):
    before = _chunked_calls(vae_chunked)
    mean, _ = vae_encode_posterior(vae_chunked, g_encode["in.pixels"])
    assert _chunked_calls(vae_chunked) > before, "chunking never engaged"
    assert torch.equal(mean, posterior[0])


def test_chunk_size_rounded_to_stride_identical(vae_chunked, posterior, g_encode):
    # An odd chunk is rounded down to the stride-2 downsamplers' multiple; the result must not change.
    try:
        assert set_vae_chunk_size(vae_chunked, 7) > 0
        before = _chunked_calls(vae_chunked)
        mean, _ = vae_encode_posterior(vae_chunked, g_encode["in.pixels"])
        assert _chunked_calls(vae_chunked) > before
        assert torch.equal(mean, posterior[0])
    finally:
        set_vae_chunk_size(vae_chunked, CHUNK)


def test_chunking_only_wraps_cubic_convs_and_keeps_keys(vae_chunked, reference_sd):
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    convs = [m for m in vae_chunked.model.modules() if isinstance(m, HunyuanVideoCausalConv3d)]
    wrapped = [m for m in convs if hasattr(m, "chunk_size")]
    assert wrapped and all(m.conv.kernel_size == (3, 3, 3) for m in wrapped)
    assert all(m.conv.kernel_size == (1, 1, 1) for m in convs if m not in wrapped)
    assert set(vae_chunked.model.state_dict()) == set(reference_sd)


def test_chunk_size_off_restores_plain_convs():
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    v = load_vae(MODELS / "vae.safetensors", chunk_size=8)
    convs = [m for m in v.model.modules() if isinstance(m, HunyuanVideoCausalConv3d)]
    assert any(type(m) is not HunyuanVideoCausalConv3d for m in convs)
    assert set_vae_chunk_size(v, None) == 0
    assert v.chunk_size is None
    assert all(type(m) is HunyuanVideoCausalConv3d for m in convs)


# ---------------------------------------------------------------- spatial tiling


def test_tiled_decode_matches_reference(vae_tiled, g_tiling):
    pixels = vae_decode(vae_tiled, g_tiling["in.latent_scaled"])
    _close(pixels, g_tiling["out.pixels_tiled"])


def test_tiled_encode_matches_reference(vae_tiled, g_tiling):
    mean, _ = vae_encode_posterior(vae_tiled, g_tiling["in.pixels"])
    _close(mean, g_tiling["out.mean_tiled"])


@pytest.mark.parametrize("size", [32, 64])
def test_tiling_agrees_with_diffusers_for_multiples_of_32(size, g_tiling):
    # For tile sizes that are multiples of 32 the reference arithmetic equals diffusers' tiling with
    # stride 0.75 * N; this checks tile counts/blends beyond the single golden size.
    v = load_vae(MODELS / "vae", spatial_tile_sample_min_size=size)
    stride = size * 3 // 4
    v.model.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size,
                          tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    z = g_tiling["in.latent_scaled"]
    with torch.no_grad():
        want_px = v.model.tiled_decode(z / v.scaling_factor).sample
        want_mean = v.model.tiled_encode(g_tiling["in.pixels"]).chunk(2, dim=1)[0]
    torch.testing.assert_close(vae_decode(v, z), want_px, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae_encode_posterior(v, g_tiling["in.pixels"])[0], want_mean, atol=1e-5, rtol=1e-5)


def test_untiled_matches_reference(vae, g_tiling):
    _close(vae_decode(vae, g_tiling["in.latent_scaled"]), g_tiling["out.pixels_untiled"])
    _close(vae_encode_posterior(vae, g_tiling["in.pixels"])[0], g_tiling["out.mean_untiled"])


def test_tiling_plus_chunking_equals_tiling(vae_tiled, g_tiling):
    v = load_vae(MODELS / "vae", spatial_tile_sample_min_size=64, chunk_size=CHUNK)
    pixels = vae_decode(v, g_tiling["in.latent_scaled"])
    assert _chunked_calls(v) > 0
    assert torch.equal(pixels, vae_decode(vae_tiled, g_tiling["in.latent_scaled"]))


def test_tiling_flag_defaults_and_small_inputs(g_tiling):
    v = load_vae(MODELS / "vae", tiling=True)
    assert v.tile_sample_size == DEFAULT_TILE_SAMPLE_SIZE == 256
    # 96x128 px / 12x16 latents fit one 256 px tile: no tiling happens, the result is the untiled one.
    _close(vae_decode(v, g_tiling["in.latent_scaled"]), g_tiling["out.pixels_untiled"])
    assert load_vae(MODELS / "vae", tiling=True, spatial_tile_sample_min_size=128).tile_sample_size == 128
    assert load_vae(MODELS / "vae").tile_sample_size is None


@pytest.mark.parametrize("size", [0, 16, 48, 72, 100])
def test_bad_tile_size_rejected(size):
    with pytest.raises(FramepackError, match="multiple of 32"):
        load_vae(MODELS / "vae", spatial_tile_sample_min_size=size)


def test_bad_chunk_size_rejected():
    with pytest.raises(FramepackError, match="vae_chunk_size"):
        load_vae(MODELS / "vae", chunk_size=0)


# ---------------------------------------------------------------- checkpoint formats


def _prefixed_pickle(tmp_path, reference_sd):
    p = tmp_path / "prefixed" / "pytorch_model.pt"
    p.parent.mkdir()
    sd = {f"vae.{k}": v for k, v in reference_sd.items()}
    sd["text_encoder.unrelated.weight"] = torch.zeros(2)  # bundled extras are dropped like the reference does
    torch.save(sd, p)
    return p


def _wrapped_pickle(tmp_path, reference_sd):
    p = tmp_path / "wrapped" / "pytorch_model.pt"
    p.parent.mkdir()
    torch.save({"state_dict": dict(reference_sd)}, p)
    return p


def _configless_copy(tmp_path, reference_sd):
    p = tmp_path / "bare" / "some_vae.safetensors"
    p.parent.mkdir()
    shutil.copy(MODELS / "vae.safetensors", p)
    return p


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp, sd: MODELS / "vae_official.pt",
        lambda tmp, sd: MODELS / "vae.safetensors",
        lambda tmp, sd: MODELS / "vae",
        lambda tmp, sd: MODELS,
        _prefixed_pickle,
        _wrapped_pickle,
        _configless_copy,
    ],
    ids=["official_pt", "safetensors", "diffusers_dir", "snapshot_root", "vae_prefix", "state_dict_wrap", "no_config"],
)
def test_every_format_loads_identical_weights(make, tmp_path, reference_sd):
    v = load_vae(make(tmp_path, reference_sd))
    sd = v.model.state_dict()
    assert set(sd) == set(reference_sd)
    for k, t in reference_sd.items():
        assert sd[k].dtype == torch.float32 and torch.equal(sd[k], t), k
    assert not any(p.is_meta for p in v.model.parameters())
    assert v.scaling_factor == pytest.approx(0.476986)
    assert list(v.model.config.block_out_channels) == [32, 32, 32, 32]
    assert v.model.config.layers_per_block == 1


def test_shape_inference_matches_config_json():
    cfg = json.loads((MODELS / "vae" / "config.json").read_text())
    inferred = infer_vae_config(read_header_infos([MODELS / "vae.safetensors"]))
    for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                "mid_block_add_attention", "scaling_factor", "act_fn"):
        assert inferred[key] == cfg[key], key
    assert list(inferred["block_out_channels"]) == cfg["block_out_channels"]


def test_official_style_config_json_is_used(tmp_path):
    # The official vae/config.json spells the class AutoencoderKLCausal3D and uses time_compression_ratio.
    d = tmp_path / "official_vae"
    d.mkdir()
    shutil.copy(MODELS / "vae_official.pt", d / "pytorch_model.pt")
    (d / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderKLCausal3D", "block_out_channels": [32, 32, 32, 32], "latent_channels": 16,
        "layers_per_block": 1, "norm_num_groups": 32, "scaling_factor": 0.5, "time_compression_ratio": 4,
        "down_block_types": ["DownEncoderBlockCausal3D"] * 4, "sample_size": 256,
    }))
    v = load_vae(tmp_path / "official_vae")
    assert v.scaling_factor == 0.5  # the config wins over the built-in default


def test_foreign_config_json_is_ignored(tmp_path):
    d = tmp_path / "dit_dir"
    d.mkdir()
    shutil.copy(MODELS / "vae.safetensors", d / "vae.safetensors")
    (d / "config.json").write_text(json.dumps({"_class_name": "HunyuanVideoTransformer3DModelPacked",
                                               "num_layers": 2}))
    assert load_vae(d / "vae.safetensors").scaling_factor == pytest.approx(0.476986)


def test_mismatching_config_json_names_file(tmp_path):
    d = tmp_path / "bad_cfg"
    d.mkdir()
    shutil.copy(MODELS / "vae.safetensors", d / "diffusion_pytorch_model.safetensors")
    (d / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanVideo",
                                               "block_out_channels": [64, 64, 64, 64], "layers_per_block": 1}))
    with pytest.raises(ModelFormatError, match="diffusion_pytorch_model.safetensors.*shape"):
        load_vae(d)


def test_dtype_and_device_options():
    v = load_vae(MODELS / "vae.safetensors", dtype=torch.bfloat16)
    assert v.dtype == torch.bfloat16 and v.device.type == "cpu"
    assert v.to(dtype=torch.float32).dtype == torch.float32


# ---------------------------------------------------------------- wrong files


@pytest.mark.parametrize(
    ("name", "looks_like"),
    [("dit_single.safetensors", "looks like a FramePack DiT"), ("lora_tiny.safetensors", "looks like a LoRA")],
)
def test_wrong_model_file_is_named(name, looks_like):
    with pytest.raises(ModelFormatError) as e:
        load_vae(MODELS / name)
    msg = str(e.value)
    assert name in msg and looks_like in msg and "--vae" in msg and "HunyuanVideo VAE" in msg
    assert "\n" not in e.value.message


def test_flag_name_is_used_in_errors():
    with pytest.raises(ModelFormatError, match="--my_vae"):
        load_vae(MODELS / "clip_l_tiny.safetensors", flag="--my_vae")


def test_truncated_safetensors(tmp_path):
    p = tmp_path / "vae.safetensors"
    p.write_bytes((MODELS / "vae.safetensors").read_bytes()[:100_000])
    with pytest.raises(ModelFormatError, match="truncated") as e:
        load_vae(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("obj", [{"a": 1, "b": "text"}, [torch.zeros(2)], {"state_dict": {"x": 3}}])
def test_pickle_without_tensor_dict(tmp_path, obj):
    p = tmp_path / "pytorch_model.pt"
    torch.save(obj, p)
    with pytest.raises(ModelFormatError) as e:
        load_vae(p)
    assert str(p) in str(e.value)


def test_not_a_pickle(tmp_path):
    p = tmp_path / "vae.pt"
    p.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelFormatError, match="vae.pt"):
        load_vae(p)


def test_incomplete_state_dict_names_file(tmp_path, reference_sd):
    sd = {k: v for k, v in reference_sd.items() if "decoder.up_blocks.3" not in k}
    p = tmp_path / "partial.pt"
    torch.save(sd, p)
    with pytest.raises(ModelFormatError, match=r"partial\.pt.*missing"):
        load_vae(p)


def test_missing_path():
    with pytest.raises(ModelFormatError, match="no such file"):
        load_vae(MODELS / "does_not_exist.safetensors")


def test_bad_tensor_rank(vae):
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        vae_decode(vae, torch.zeros(1, 16, 6, 8))
