"""Input image handling: loading (RGB + alpha), bucket resize math, pixel tensors and one-frame masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from framepack_cli.errors import FramepackError
from framepack_cli.io.images import (
    bucket_resize_plan,
    load_image,
    load_mask,
    mask_to_latent,
    resize_to_bucket,
    to_pixels,
)


def _synthetic(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise, so resampling filters give distinguishable results."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- resize math


@pytest.mark.parametrize(
    ("src_wh", "target_wh", "expect"),
    [
        ((30, 20), (64, 48), (72, 48, True)),  # upscale: height decides (2.4 > 2.133)
        ((200, 100), (64, 48), (96, 48, False)),  # downscale: height decides (0.48 > 0.32)
        ((64, 48), (64, 48), (64, 48, False)),  # exact size: scale 1 is not an upscale
        ((64, 100), (64, 48), (64, 100, False)),  # one side already fits: scale 1, crop only
        ((7, 300), (64, 48), (64, 2743, True)),  # odd aspect: int(300*64/7 + 0.5)
        ((111, 92), (64, 48), (64, 53, False)),  # golden start.png: int(53.05 + 0.5)
        ((59, 131), (64, 64), (64, 142, True)),  # golden tall.png
    ],
)
def test_bucket_resize_plan(src_wh, target_wh, expect):
    assert bucket_resize_plan(*src_wh, *target_wh) == expect


def test_upscale_uses_pil_lanczos_and_centre_crop():
    img = _synthetic(20, 30)
    out = resize_to_bucket(img, 64, 48)
    ref = np.array(Image.fromarray(img).resize((72, 48), Image.LANCZOS))[:, 4:68]
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, ref)


def test_downscale_uses_cv2_inter_area_and_centre_crop():
    img = _synthetic(100, 200)
    out = resize_to_bucket(img, 64, 48)
    ref = cv2.resize(img, (96, 48), interpolation=cv2.INTER_AREA)[:, 16:80]
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out, ref)
    # and differs from what LANCZOS would give, so the filter choice is actually tested
    lanczos = np.array(Image.fromarray(img).resize((96, 48), Image.LANCZOS))[:, 16:80]
    assert not np.array_equal(out, lanczos)


def test_exact_size_is_unchanged():
    img = _synthetic(48, 64)
    out = resize_to_bucket(img, 64, 48)
    assert np.array_equal(out, img)
    assert out.flags["C_CONTIGUOUS"]


def test_scale_one_crops_without_resampling():
    img = _synthetic(100, 64)
    out = resize_to_bucket(img, 64, 48)
    assert np.array_equal(out, img[26:74])


def test_odd_aspect_crop_offsets():
    img = _synthetic(300, 7)
    out = resize_to_bucket(img, 64, 48)
    full = np.array(Image.fromarray(img).resize((64, 2743), Image.LANCZOS))
    top = (2743 - 48) // 2
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out, full[top : top + 48])


def test_odd_crop_remainder_goes_to_the_end():
    # new width 65 for target 64: offset (65-64)//2 = 0, the extra column is dropped on the right
    img = _synthetic(96, 130)
    out = resize_to_bucket(img, 64, 48)
    ref = cv2.resize(img, (65, 48), interpolation=cv2.INTER_AREA)[:, 0:64]
    assert np.array_equal(out, ref)


def test_invalid_target_size():
    with pytest.raises(FramepackError):
        resize_to_bucket(_synthetic(8, 8), 0, 8)


# ------------------------------------------------------------------------------------------- pixels


def test_to_pixels_layout_and_range():
    img = np.zeros((4, 6, 3), dtype=np.uint8)
    img[0, 0] = (0, 255, 51)
    px = to_pixels(img)
    assert px.shape == (1, 3, 1, 4, 6) and px.dtype == torch.float32
    assert px[0, 0, 0, 0, 0] == -1.0 and px[0, 1, 0, 0, 0] == 1.0
    assert px[0, 2, 0, 0, 0] == torch.tensor(51.0) / 127.5 - 1.0
    assert px[0, :, 0, 1, 1].tolist() == [-1.0, -1.0, -1.0]


# ------------------------------------------------------------------------------------------- loading


def test_load_rgb_and_rgba(tmp_path):
    rgb = _synthetic(10, 12)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    got, alpha = load_image(tmp_path / "a.png")
    assert np.array_equal(got, rgb) and alpha is None

    a = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(np.dstack([rgb, a]), mode="RGBA").save(tmp_path / "b.png")
    got, alpha = load_image(tmp_path / "b.png")
    assert got.shape == (10, 12, 3) and np.array_equal(got, rgb)
    assert np.array_equal(alpha, a)


def test_load_grey_and_grey_alpha(tmp_path):
    g = np.arange(80, dtype=np.uint8).reshape(8, 10)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    got, alpha = load_image(tmp_path / "g.png")
    assert got.shape == (8, 10, 3) and np.array_equal(got[..., 0], g) and alpha is None
    Image.fromarray(np.dstack([g, 255 - g]), mode="LA").save(tmp_path / "la.png")
    _, alpha = load_image(tmp_path / "la.png")
    assert np.array_equal(alpha, 255 - g)


def test_bad_image_file_names_the_file(tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(FramepackError, match="not_an_image.png"):
        load_image(bad)
    with pytest.raises(FramepackError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    trunc = tmp_path / "trunc.png"
    Image.fromarray(_synthetic(64, 64)).save(tmp_path / "full.png")
    trunc.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    with pytest.raises(FramepackError, match="trunc.png"):
        load_image(trunc)
    with pytest.raises(FramepackError, match="trunc.png"):
        load_mask(trunc, 64, 48)


# ------------------------------------------------------------------------------------------- masks


def test_load_mask_resizes_to_latent_grid(tmp_path):
    m = np.zeros((96, 128), dtype=np.uint8)
    m[:, 64:] = 255
    Image.fromarray(m, mode="L").save(tmp_path / "m.png")
    got = load_mask(tmp_path / "m.png", 64, 48)
    assert got.shape == (1, 1, 1, 6, 8) and got.dtype == torch.float32
    ref = np.array(Image.fromarray(m).resize((8, 6), Image.LANCZOS), dtype=np.float32) / 255.0
    assert torch.equal(got[0, 0, 0], torch.from_numpy(ref))
    assert got[0, 0, 0, :, 0].eq(0).all() and got[0, 0, 0, :, -1].eq(1).all()


def test_mask_from_alpha_equals_mask_file(tmp_path):
    a = _synthetic(50, 70)[..., 0]
    Image.fromarray(a, mode="L").save(tmp_path / "m.png")
    assert torch.equal(mask_to_latent(a, 64, 48), load_mask(tmp_path / "m.png", 64, 48))


def test_rgb_mask_file_is_converted_to_grey(tmp_path):
    rgb = _synthetic(40, 40)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey = np.array(Image.fromarray(rgb).convert("L"))
    assert torch.equal(load_mask(tmp_path / "c.png", 32, 32), mask_to_latent(grey, 32, 32))
