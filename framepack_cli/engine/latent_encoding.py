"""Latent cache tensors from decoded pixels: VAE + SigLIP encode a batch and cut it into the reference's
cache files -- sections of a video crop (vanilla or F1, training.md §2.4-§2.5) or one-frame stacks (§2.6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from framepack_cli.engine.cache_models import LatentModels
from framepack_cli.io.cache_format import latent_cache_metadata, latent_cache_tensors
from framepack_cli.options.dataset import ImageDataset
from framepack_cli.plan.cache_items import LatentItem
from framepack_cli.plan.frames import (
    CacheSection,
    f1_cache_sections,
    one_frame_indices,
    split_context,
    vanilla_cache_sections,
)

if TYPE_CHECKING:
    import torch


@dataclass
class Loaded:
    """Decoded, bucket-resized pixels of one item, ready to encode.

    Attributes:
        item: the planned item.
        frames: uint8 `[T, H, W, 3]` (video: the trimmed crop; one-frame: controls then target).
        siglip: uint8 `[H, W, 3]` image for SigLIP (first crop frame / control 0).
        alphas: per frame, the bucket-resized uint8 alpha channel or None (one-frame controls).
    """

    item: LatentItem
    frames: np.ndarray
    siglip: np.ndarray
    alphas: list[np.ndarray | None] = field(default_factory=list)


def _pixels(frames: np.ndarray, models: LatentModels, normalize_in_float32: bool = False) -> torch.Tensor:
    """uint8 `[B, T, H, W, 3]` -> `[B, 3, T, H, W]` in [-1, 1].

    The reference normalises video crops after the cast to the compute dtype and one-frame stacks before it
    (in float32); both orders are kept so that float16 caches match it bit for bit.
    """
    import torch

    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3)
    if normalize_in_float32:
        return (x.float() / 127.5 - 1.0).to(device=models.device, dtype=models.dtype)
    return x.to(device=models.device, dtype=models.dtype) / 127.5 - 1.0


_EMBEDDING_MEMO = 64  # start images remembered; a few MB at most for the real 729 x 1152 embeddings


def _siglip(models: LatentModels, image: np.ndarray) -> torch.Tensor:
    import hashlib

    from framepack_cli.models.image_encoder import encode_image

    key = (image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest())
    emb = models.embeddings.get(key)
    if emb is None:
        if len(models.embeddings) >= _EMBEDDING_MEMO:
            models.embeddings.pop(next(iter(models.embeddings)))
        emb = models.embeddings[key] = encode_image(models.siglip, image)[0]
    return emb


def _index(values: Iterable[int]) -> torch.Tensor:
    import torch

    return torch.tensor(list(values), dtype=torch.int64)


def _context(latent: torch.Tensor, frames: tuple[int | None, ...]) -> torch.Tensor:
    """Gather latent frames `[16, len(frames), h, w]`, zeros where the frame is None."""
    import torch

    out = torch.zeros((latent.shape[0], len(frames), *latent.shape[2:]), dtype=latent.dtype)
    for i, f in enumerate(frames):
        if f is not None:
            out[:, i] = latent[:, f]
    return out


def encode_sections(batch: list[Loaded], models: LatentModels, settings: dict, f1: bool,
                    dataset: str | None = None) -> list[list[tuple]]:
    """VAE + SigLIP encode a batch of equally long crops; returns per item `(path, tensors, metadata)` per section.

    The trimmed crop is encoded in one pass; sections are cut from its latents (training.md §2.4-§2.5).
    """
    import torch

    from framepack_cli.models.vae import vae_encode

    window = settings["latent_window_size"]
    x = _pixels(np.stack([ld.frames for ld in batch]), models)
    with torch.no_grad():
        latents = vae_encode(models.vae, x).to("cpu", models.dtype)
    out = []
    for b, ld in enumerate(batch):
        lat = latents[b]
        n = (lat.shape[1] - 1) // window
        emb = _siglip(models, ld.siglip)
        plan: list[CacheSection] = f1_cache_sections(n, window) if f1 else vanilla_cache_sections(n, window)
        files = []
        for sec in plan:
            one_x, two_x, four_x = split_context(sec.context, f1)
            tensors = latent_cache_tensors(
                latents=lat[:, sec.target_start : sec.target_start + window],
                clean_latents=torch.cat([lat[:, 0:1], _context(lat, one_x)], dim=1),
                clean_latents_2x=_context(lat, two_x), clean_latents_4x=_context(lat, four_x),
                image_embeddings=emb, latent_indices=_index(sec.latent_indices),
                clean_latent_indices=_index(sec.clean_latent_indices),
                clean_latent_2x_indices=_index(sec.clean_latent_2x_indices),
                clean_latent_4x_indices=_index(sec.clean_latent_4x_indices),
            )
            meta = latent_cache_metadata(*ld.item.recorded, ld.item.length, settings, dataset)
            files.append((ld.item.outputs[sec.index], tensors, meta))
        out.append(files)
    return out


def encode_one_frame(batch: list[Loaded], models: LatentModels, settings: dict, ds: ImageDataset,
                     dataset: str | None = None) -> list[list[tuple]]:
    """One-frame caches of a batch: controls and target VAE-encoded one frame at a time (training.md §2.6)."""
    import torch

    from framepack_cli.io.images import mask_to_latent
    from framepack_cli.models.vae import vae_encode

    idx = one_frame_indices(ds.fp_latent_window_size, ds.fp_1f_clean_indices, ds.fp_1f_target_index,
                            ds.fp_1f_no_post, settings["one_frame_no_2x"], settings["one_frame_no_4x"])
    x = _pixels(np.stack([ld.frames for ld in batch]), models, normalize_in_float32=True)
    with torch.no_grad():
        # One frame at a time: the causal VAE compresses 4 frames into one after the first.
        latents = torch.cat([vae_encode(models.vae, x[:, :, i : i + 1]).to("cpu", models.dtype)
                             for i in range(x.shape[2])], dim=2)
    out = []
    for b, ld in enumerate(batch):
        w, h = ld.item.bucket
        for i, alpha in enumerate(ld.alphas):
            if alpha is not None:
                latents[b : b + 1, :, i : i + 1] *= mask_to_latent(alpha, w, h).to(latents.dtype)
        lat = latents[b]
        clean = lat[:, :-1]
        if idx.zero_post:
            clean = torch.cat([clean, torch.zeros_like(lat[:, :1])], dim=1)
        idx2, idx4 = idx.clean_latent_2x_indices, idx.clean_latent_4x_indices
        tensors = latent_cache_tensors(
            latents=lat[:, -1:], clean_latents=clean, image_embeddings=_siglip(models, ld.siglip),
            latent_indices=_index(idx.latent_indices), clean_latent_indices=_index(idx.clean_latent_indices),
            clean_latent_2x_indices=None if idx2 is None else _index(idx2),
            clean_latent_4x_indices=None if idx4 is None else _index(idx4),
        )
        out.append([(ld.item.outputs[0], tensors, latent_cache_metadata(*ld.item.recorded, None, settings,
                                                                               dataset))])
    return out
