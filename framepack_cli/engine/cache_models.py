"""The models of dataset caching and their dtype: the VAE and SigLIP of `cache latents`, the tokenizers and
text encoders of `cache text`. Imported only when something is left to encode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.options.cache import CacheLatentsOptions, CacheTextOptions

if TYPE_CHECKING:
    pass


@dataclass
class LatentModels:
    """What latent caching runs with.

    `embeddings` memoises SigLIP outputs by image content: every crop of a clip that starts at the same
    frame (`head` with several `target_frames`, or the same clip in two datasets) has the same start image.
    """

    vae: Any
    siglip: Any
    device: Any
    dtype: Any
    embeddings: dict = field(default_factory=dict)


def load_latent_models(opts: CacheLatentsOptions, device, sink: ProgressSink) -> LatentModels:
    """The VAE (with `--vae_chunk_size` / `--vae_tiling`) and SigLIP in their dtypes (`--vae_dtype` /
    `--image_encoder_dtype`, auto = the precision table); the latents are stored in the VAE's dtype."""
    from framepack_cli.engine.precision import precision_for
    from framepack_cli.models.image_encoder import load_image_encoder
    from framepack_cli.models.vae import load_vae

    precision = precision_for(opts, device)
    sink.message(f"Loading VAE {opts.vae}")
    vae = load_vae(opts.vae, device=device, dtype=precision.vae, chunk_size=opts.vae_chunk_size,
                   spatial_tile_sample_min_size=opts.vae_spatial_tile_sample_min_size, tiling=opts.vae_tiling)
    sink.message(f"Loading image encoder {opts.image_encoder}")
    siglip = load_image_encoder(opts.image_encoder, device=device, dtype=precision.image_encoder)
    return LatentModels(vae, siglip, device, precision.vae)


@dataclass
class TextModels:
    """What text caching runs with."""

    tok1: Any
    tok2: Any
    te1: Any
    te2: Any


def load_text_models(opts: CacheTextOptions, device, sink: ProgressSink) -> TextModels:
    """Both tokenizers, LLaMA (`--fp8_llm`) and CLIP-L in `--text_encoder_dtype` (auto = the precision table)."""
    from framepack_cli.engine.precision import precision_for
    from framepack_cli.models.text_encoders import load_text_encoder1, load_text_encoder2, load_tokenizers

    dtype = precision_for(opts, device).text_encoder

    tok1, tok2 = load_tokenizers(opts.text_encoder1, opts.text_encoder2, opts.tokenizer1, opts.tokenizer2)
    sink.message(f"Loading text encoders {opts.text_encoder1}, {opts.text_encoder2}")
    te1 = load_text_encoder1(opts.text_encoder1, device=device, dtype=dtype, fp8=opts.fp8_llm)
    te2 = load_text_encoder2(opts.text_encoder2, device=device, dtype=dtype)
    return TextModels(tok1, tok2, te1, te2)
