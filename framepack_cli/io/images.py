"""Input images: loading, bucket resize, pixel tensors and one-frame masks.

Everything here reproduces the reference generator's preprocessing bit for bit (golden README §5,
inference.md §3.5): PIL decoding, PIL LANCZOS for upscaling, OpenCV INTER_AREA for downscaling, centre
crop, `u8/127.5-1` pixels, and masks squashed to the latent grid with LANCZOS.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from framepack_cli.errors import FramepackError

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Modes whose last band is an alpha channel. The reference only looks at RGBA; LA/PA (and palette images
# with a transparent colour) are accepted too so a grey or indexed PNG with transparency still gives a mask.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into one FramepackError line."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise FramepackError(f"{p}: image file not found")
    if p.is_dir():
        raise FramepackError(f"{p}: is a directory, expected an image file")
    try:
        img = Image.open(p)
        img.load()  # decode now: truncated files fail here rather than later inside a resize
    except UnidentifiedImageError:
        raise FramepackError(f"{p}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FramepackError(f"{p}: cannot read image ({e})") from None
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def probe_image(path: str | Path) -> tuple[int, int, bool]:
    """`(width, height, has_alpha)` of an image file from its header (nothing is decoded).

    `has_alpha` follows `load_image`: true when `load_image` would return an alpha channel.

    Raises:
        FramepackError: missing or unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FramepackError(f"{p}: image file not found")
    try:
        with Image.open(p) as img:
            return img.width, img.height, _has_alpha(img)
    except UnidentifiedImageError:
        raise FramepackError(f"{p}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FramepackError(f"{p}: cannot read image ({e})") from None


def bucket_scale(src_w: int, src_h: int, width: int, height: int) -> float:
    """Scale factor the bucket resize applies to a `src_w x src_h` image for a `width x height` target."""
    return max(width / src_w, height / src_h)


def load_image(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Load an image file as RGB plus its alpha channel.

    No EXIF rotation is applied (the reference does not either, and parity needs the same pixels).

    Args:
        path: image file (anything PIL decodes).

    Returns:
        `(rgb, alpha)`: `rgb` is uint8 `[H, W, 3]`; `alpha` is uint8 `[H, W]` at the original size, or None
        when the image has no alpha channel.

    Raises:
        FramepackError: missing or unreadable file (the message names it).
    """
    img = _open(path)
    alpha = None
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if _has_alpha(img):
        alpha = np.array(img.getchannel(img.getbands()[-1]).convert("L"), dtype=np.uint8)
    try:
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise FramepackError(f"{path}: cannot convert image to RGB ({e})") from None
    return np.ascontiguousarray(rgb), alpha


def bucket_resize_plan(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, bool]:
    """Size an image is scaled to before the centre crop to (width, height).

    Args:
        src_w: source width.
        src_h: source height.
        width: target width.
        height: target height.

    Returns:
        `(new_w, new_h, upscale)`: the scaled size (covers the target) and whether it is an upscale
        (`scale > 1`, PIL LANCZOS) rather than a downscale or same size (`scale <= 1`, cv2 INTER_AREA).
    """
    scale = bucket_scale(src_w, src_h, width, height)
    new_w = int(src_w * scale + 0.5)
    new_h = int(src_h * scale + 0.5)
    return new_w, new_h, scale > 1


def resize_to_bucket(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale an image to cover (width, height) and centre-crop it, as the reference generator does.

    `scale = max(width/w, height/h)`; the new size is `int(w*scale+0.5) x int(h*scale+0.5)`; upscaling
    (scale > 1) uses PIL LANCZOS, anything else cv2 INTER_AREA; the crop offsets are `(new-target)//2`.

    Args:
        img: uint8 `[H, W, C]` (C = 3) or `[H, W]`.
        width: target width in pixels.
        height: target height in pixels.

    Returns:
        uint8 array `[height, width, C]` (or `[height, width]`), C-contiguous.
    """
    if width <= 0 or height <= 0:
        raise FramepackError(f"invalid target size {width}x{height}")
    src_h, src_w = img.shape[:2]
    if src_w <= 0 or src_h <= 0:
        raise FramepackError(f"cannot resize an empty image ({src_w}x{src_h})")
    new_w, new_h, upscale = bucket_resize_plan(src_w, src_h, width, height)
    if (new_w, new_h) != (src_w, src_h):
        if upscale:
            from PIL import Image

            img = np.array(Image.fromarray(img).resize((new_w, new_h), Image.LANCZOS))
        else:
            import cv2

            img = cv2.resize(np.ascontiguousarray(img), (new_w, new_h), interpolation=cv2.INTER_AREA)
    # When the scaled size is the source size INTER_AREA is the identity, so skipping it changes nothing.
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return np.ascontiguousarray(img[top : top + height, left : left + width])


def to_pixels(img: np.ndarray) -> torch.Tensor:
    """uint8 `[H, W, 3]` image -> float32 tensor `[1, 3, 1, H, W]` in [-1, 1] (`u8/127.5 - 1`)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(img)).float() / 127.5 - 1.0
    return x.permute(2, 0, 1)[None, :, None].contiguous()


def mask_to_latent(mask: np.ndarray, width: int, height: int) -> torch.Tensor:
    """Turn a uint8 mask (or alpha channel) of any size into a latent-grid mask.

    The mask is squashed (no aspect preservation, no crop) to `(width//8, height//8)` with PIL LANCZOS and
    divided by 255, so 255 keeps a latent pixel and 0 zeroes it.

    Args:
        mask: uint8 `[H, W]` (an `[H, W, C]` image is converted to L first, as PIL would).
        width: video width in pixels.
        height: video height in pixels.

    Returns:
        float32 tensor `[1, 1, 1, height//8, width//8]`.
    """
    import torch
    from PIL import Image

    m = Image.fromarray(np.ascontiguousarray(mask))
    if m.mode != "L":
        m = m.convert("L")
    m = m.resize((width // 8, height // 8), Image.LANCZOS)
    arr = np.array(m, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None, None, None]


def load_mask(path: str | Path, width: int, height: int) -> torch.Tensor:
    """Load a one-frame mask file (converted to L) as a latent-grid mask; see `mask_to_latent`.

    Raises:
        FramepackError: missing or unreadable file.
    """
    img = _open(path)
    try:
        arr = np.array(img.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise FramepackError(f"{path}: cannot convert mask image to grey ({e})") from None
    return mask_to_latent(arr, width, height)
