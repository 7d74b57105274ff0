"""FramePack cache file names: which file a dataset item's cache goes to, and taking a name apart.

Names are the reference trainer's (training.md §2.2-§2.3, §3.3), so caches written here and by
musubi-tuner are interchangeable:

* image / one-frame: `<stem>_<W:04d>x<H:04d>_fp.safetensors` (W x H = the image's original size);
* video section: `<stem>_<start:05d>-<length:03d>-<section:04d>_<W:04d>x<H:04d>_fp.safetensors`
  (length = the untrimmed crop length, W x H = the bucket size);
* text encoder: `<stem>_fp_te.safetensors`.

Pure string functions (no I/O): planning uses them to know every output file before anything is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from framepack_cli.errors import FramepackError

ARCH_SHORT = "fp"
LATENT_SUFFIX = f"_{ARCH_SHORT}.safetensors"
TEXT_SUFFIX = f"_{ARCH_SHORT}_te.safetensors"


def image_cache_name(stem: str, width: int, height: int) -> str:
    """Cache file name of an image (one-frame) item; `width x height` is the original image size."""
    return f"{stem}_{width:04d}x{height:04d}{LATENT_SUFFIX}"


def crop_stem(video_stem: str, start: int, length: int) -> str:
    """Item key of a video crop: `<stem>_<start:05d>-<length:03d>`."""
    return f"{video_stem}_{start:05d}-{length:03d}"


def section_cache_name(video_stem: str, start: int, length: int, section: int, width: int, height: int) -> str:
    """Cache file name of one section of a video crop; `width x height` is the bucket size."""
    return f"{crop_stem(video_stem, start, length)}-{section:04d}_{width:04d}x{height:04d}{LATENT_SUFFIX}"


def text_cache_name(stem: str) -> str:
    """Text-encoder cache file name of an image or source video."""
    return f"{stem}{TEXT_SUFFIX}"


@dataclass(frozen=True)
class CacheName:
    """A latent cache file name taken apart the way the reference trainer does (from the right).

    Attributes:
        item_key: stem shared with the text cache (`<item_key>_fp_te.safetensors`).
        width: recorded width.
        height: recorded height.
        start: crop start (video caches only).
        length: crop length (video caches only).
        section: section index (video caches only).
    """

    item_key: str
    width: int
    height: int
    start: int | None = None
    length: int | None = None
    section: int | None = None


_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_CROP_RE = re.compile(r"^(\d+)-(\d+)(?:-(\d+))?$")


def parse_cache_name(name: str, video: bool) -> CacheName:
    """Parse a latent cache file name (`video` says whether the dataset is a video dataset).

    Raises:
        FramepackError: not a FramePack latent cache name.
    """
    if not name.endswith(LATENT_SUFFIX):
        raise FramepackError(f"{name}: not a FramePack latent cache name (expected *{LATENT_SUFFIX})")
    tokens = name[: -len(LATENT_SUFFIX)].split("_")
    size = _SIZE_RE.match(tokens[-1]) if len(tokens) >= 2 else None
    if size is None:
        raise FramepackError(f"{name}: no <W>x<H> size token before {LATENT_SUFFIX}")
    w, h = int(size.group(1)), int(size.group(2))
    if not video:
        return CacheName("_".join(tokens[:-1]), w, h)
    crop = _CROP_RE.match(tokens[-2]) if len(tokens) >= 3 else None
    if crop is None:
        raise FramepackError(f"{name}: no <start>-<length>[-<section>] token in a video cache name")
    section = int(crop.group(3)) if crop.group(3) is not None else None
    return CacheName("_".join(tokens[:-2]), w, h, int(crop.group(1)), int(crop.group(2)), section)
