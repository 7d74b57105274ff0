"""The HunyuanVideo causal 3-D VAE ("884-16c-hy"): loading, encode, decode, width chunking, spatial tiling.

The network itself is diffusers' `AutoencoderKLHunyuanVideo`, whose parameter names equal the official
`pytorch_model.pt` ones, so every checkpoint layout loads into it strictly without renaming. What this
module adds on top, all without changing a single key:

* a loader for every layout users have (official pickle, diffusers file / directory / snapshot), which
  infers the architecture from tensor shapes when no config.json sits beside the weights;
* `--vae_chunk_size`: causal 3-D convolutions computed in width chunks (bit-identical, less peak memory);
* `--vae_spatial_tile_sample_min_size` / `--vae_tiling`: the reference's spatial tiling, reproduced with the
  reference's own tile / stride / blend arithmetic (diffusers' tiling uses different rounding for tile
  sizes that are not multiples of 32, so we run our own loop);
* a frame-causal mid-block attention that never builds the (T*h*w)^2 mask the stock block materialises;
* `--decode stream`: a decode in time chunks with no overlap, each causal convolution carrying its last
  `kernel_t - 1` input frames and the mid-block attention its keys / values into the next chunk
  (`vae_decode_stream`).

Tensor conventions: pixels `[B, 3, T, H, W]` in [-1, 1]; latents `[B, 16, (T-1)//4+1, H/8, W/8]`, scaled by
`scaling_factor` (0.476986 for HunyuanVideo) as the DiT sees them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.detect import expect_kind
from framepack_cli.models.loading import (
    TensorInfo,
    find_weight_files,
    key_mismatch,
    load_pickle_state_dict,
    load_state_dict,
    read_config_json,
    read_header_infos,
)

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

HUNYUAN_VAE_SCALING_FACTOR = 0.476986
"""Latent scale of the HunyuanVideo VAE (no shift); used when no config.json says otherwise."""

DEFAULT_TILE_SAMPLE_SIZE = 256
"""Tile size in pixels that `--vae_tiling` alone selects (the reference's `sample_size`)."""

TILE_OVERLAP_FACTOR = 0.25
"""Fraction of a tile that overlaps its neighbour (fixed in the reference)."""

# Every tile size must be a multiple of this: only then does the reference's latent stride
# int(N/8 * 0.75) * 8 equal its pixel keep-width N - int(N * 0.25), i.e. tiles line up. Other sizes make
# the reference emit misaligned, over-long frames, so they are refused rather than imitated.
_TILE_MULTIPLE = 32

# Config keys taken from a config.json (diffusers `AutoencoderKLHunyuanVideo` or the official
# `AutoencoderKLCausal3D` spelling); everything else in the file (block type names, sample sizes) is
# either implied or irrelevant to the weights.
_CONFIG_KEYS = (
    "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block", "act_fn",
    "norm_num_groups", "scaling_factor", "mid_block_add_attention", "spatial_compression_ratio",
    "temporal_compression_ratio",
)
_VAE_CONFIG_CLASSES = ("AutoencoderKLHunyuanVideo", "AutoencoderKLCausal3D")


@dataclass
class HunyuanVideoVAE:
    """A loaded VAE plus the memory options it runs with.

    Attributes:
        model: the diffusers module (eval mode, no grad needed). Its state dict has the official keys.
        scaling_factor: latent scale; `vae_encode` multiplies by it, `vae_decode` divides by it.
        tile_sample_size: spatial tile size in pixels, or None when tiling is off.
        chunk_size: width chunk of the causal convolutions, or None when chunking is off.
        source: the path the weights came from (for messages).
    """

    model: AutoencoderKLHunyuanVideo
    scaling_factor: float
    tile_sample_size: int | None = None
    chunk_size: int | None = None
    source: Path | None = None

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> HunyuanVideoVAE:
        """Move / cast the weights in place (e.g. offload to CPU while the DiT runs); returns self."""
        self.model.to(device=device, dtype=dtype)
        return self


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_vae(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    spatial_tile_sample_min_size: int | None = None,
    tiling: bool = False,
    flag: str = "--vae",
) -> HunyuanVideoVAE:
    """Load the HunyuanVideo VAE from any supported layout.

    Accepted: the official `pytorch_model.pt` pickle (read with `weights_only=True`, a `state_dict` entry
    unwrapped, `vae.`-prefixed keys kept and stripped), a diffusers safetensors file, a diffusers directory
    (config.json + diffusion_pytorch_model.safetensors) and a snapshot directory holding `vae/`. A VAE
    config.json beside the weights wins; otherwise the architecture is inferred from tensor shapes.

    Args:
        path: file or directory given by the user.
        device: where the weights go.
        dtype: floating dtype of the weights (default float32; the reference uses float16 on GPU).
        chunk_size: `--vae_chunk_size`; width chunk of every cubic causal convolution (None = off).
        spatial_tile_sample_min_size: `--vae_spatial_tile_sample_min_size`; tile size in pixels
            (a multiple of 32). Turns spatial tiling on.
        tiling: `--vae_tiling`; spatial tiling with 256 px tiles unless a tile size is given.
        flag: the CLI flag named in error messages.

    Returns:
        The loaded VAE in eval mode.

    Raises:
        ModelFormatError: missing/truncated/unreadable file, a file of another model kind, or weights
            whose names or shapes do not form a HunyuanVideo VAE (the message names the file).
        FramepackError: an invalid chunk or tile size.
    """
    import torch

    dtype = dtype or torch.float32
    tile = _resolve_tile_size(spatial_tile_sample_min_size, tiling)
    if chunk_size is not None and chunk_size < 1:
        raise FramepackError(f"--vae_chunk_size must be a positive integer, got {chunk_size}")

    path = Path(path)
    files = vae_weight_files(path)
    where = files[0] if len(files) == 1 else path

    # Safetensors can be classified from the header alone; a pickle has to be loaded anyway, so load it
    # once and classify the loaded dict instead of unpickling a large file twice.
    if files[0].suffix == ".safetensors":
        infos = read_header_infos(files)
        sd = None
    else:
        sd = {}
        for f in files:
            sd.update(_load_pickle(f))
        infos = {k: TensorInfo(str(v.dtype), tuple(v.shape)) for k, v in sd.items()}
    expect_kind(where, infos, "vae", flag)

    if sd is None:
        sd = load_state_dict(files, dtype=dtype)
    else:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    # Official checkpoints may bundle other modules; like the reference, keep only the `vae.` part then.
    if any(k.startswith("vae.") for k in sd):
        sd = {k[4:]: v for k, v in sd.items() if k.startswith("vae.")}
        infos = {k[4:]: v for k, v in infos.items() if k.startswith("vae.")}

    config = infer_vae_config(infos, where)
    config.update(_config_from_json(files))
    model = _build_model(config, sd, where)
    model.to(device=device)

    vae = HunyuanVideoVAE(
        model=model, scaling_factor=float(config["scaling_factor"]), tile_sample_size=tile, source=where
    )
    set_vae_chunk_size(vae, chunk_size)
    return vae


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_pickle_state_dict(path)
    except ModelFormatError:
        raise
    except Exception as e:  # arbitrary bytes make torch's unpickler fail in arbitrary ways
        raise ModelFormatError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from None


def _resolve_tile_size(size: int | None, tiling: bool) -> int | None:
    if size is None:
        return DEFAULT_TILE_SAMPLE_SIZE if tiling else None
    if size < _TILE_MULTIPLE or size % _TILE_MULTIPLE:
        raise FramepackError(
            f"--vae_spatial_tile_sample_min_size must be a positive multiple of {_TILE_MULTIPLE} "
            f"(so overlapping tiles line up), got {size}",
            hint="try 64, 128 or 256",
        )
    return size


def vae_weight_files(path: Path) -> list[Path]:
    """The VAE weight files at a user path: a file, a VAE folder, or a snapshot (its `vae/` folder)."""
    # A snapshot root also holds the DiT / text-encoder files, so its vae/ folder must win over
    # whatever weights sit in the root itself.
    if path.is_dir() and (path / "vae").is_dir():
        return find_weight_files(path / "vae", kind="vae")
    return find_weight_files(path, kind="vae")


def _config_from_json(files: list[Path]) -> dict:
    cfg = read_config_json(files)
    if not cfg:
        return {}
    cls = cfg.get("_class_name")
    # A config.json of some other model (the user dropped a VAE file into a DiT folder) says nothing
    # about this file, so it is ignored rather than trusted.
    if cls not in _VAE_CONFIG_CLASSES and not (cls is None and "latent_channels" in cfg):
        return {}
    if "temporal_compression_ratio" not in cfg and "time_compression_ratio" in cfg:
        cfg = {**cfg, "temporal_compression_ratio": cfg["time_compression_ratio"]}
    out = {k: cfg[k] for k in _CONFIG_KEYS if k in cfg}
    if "block_out_channels" in out:
        out["block_out_channels"] = tuple(out["block_out_channels"])
    return out


def _indices(keys: set[str], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def infer_vae_config(infos: dict[str, TensorInfo], where: object = "") -> dict:
    """Architecture of a HunyuanVideo VAE state dict from its tensor names and shapes.

    Channel widths come from the encoder's convolutions, resnets per block from the encoder's first down
    block, latent channels from `post_quant_conv`. GroupNorm groups (32) and the scaling factor
    (0.476986) cannot be read from shapes and take HunyuanVideo's values; a config.json overrides them.

    Args:
        infos: tensor name -> dtype/shape, prefix already stripped.
        where: the file, for error messages.

    Returns:
        Keyword arguments for `AutoencoderKLHunyuanVideo`.

    Raises:
        ModelFormatError: a tensor the architecture needs is missing.
    """
    keys = set(infos)

    def shape(name: str) -> tuple[int, ...]:
        if name not in infos:
            raise ModelFormatError(f"{where}: not a complete HunyuanVideo VAE (missing tensor {name!r})")
        return infos[name].shape

    blocks = _indices(keys, "encoder.down_blocks.")
    if not blocks:
        raise ModelFormatError(f"{where}: not a complete HunyuanVideo VAE (no encoder.down_blocks.* tensors)")
    channels = tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight")[0] for i in blocks)
    n_block = len(channels)
    return {
        "in_channels": shape("encoder.conv_in.conv.weight")[1],
        "out_channels": shape("decoder.conv_out.conv.weight")[0],
        "latent_channels": shape("post_quant_conv.weight")[0],
        "block_out_channels": channels,
        "down_block_types": ("HunyuanVideoDownBlock3D",) * n_block,
        "up_block_types": ("HunyuanVideoUpBlock3D",) * n_block,
        "layers_per_block": len(_indices(keys, "encoder.down_blocks.0.resnets.")),
        "norm_num_groups": 32,
        "act_fn": "silu",
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in keys,
        "scaling_factor": HUNYUAN_VAE_SCALING_FACTOR,
        "spatial_compression_ratio": 8,
        "temporal_compression_ratio": 4,
    }


def _build_model(config: dict, sd: dict[str, torch.Tensor], where: object) -> AutoencoderKLHunyuanVideo:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    n_block = len(config["block_out_channels"])
    config["down_block_types"] = ("HunyuanVideoDownBlock3D",) * n_block
    config["up_block_types"] = ("HunyuanVideoUpBlock3D",) * n_block
    try:
        # Meta device: no time or memory spent on random init that the checkpoint overwrites anyway.
        with torch.device("meta"):
            model = AutoencoderKLHunyuanVideo(**config)
    except (ValueError, TypeError) as e:
        raise ModelFormatError(f"{where}: unsupported HunyuanVideo VAE configuration ({e})") from None

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = key_mismatch(expected, sd)
    if mismatch:
        raise ModelFormatError(f"{where}: not a HunyuanVideo VAE state dict: {mismatch} keys")
    for k, shp in expected.items():
        if tuple(sd[k].shape) != shp:
            raise ModelFormatError(
                f"{where}: tensor {k!r} has shape {list(sd[k].shape)}, the VAE configuration expects {list(shp)}",
                hint="the config.json beside the weights may belong to another model",
            )
    model.load_state_dict(sd, strict=True, assign=True)
    model.eval().requires_grad_(False)
    # The reference never tiles in time; diffusers would tile anything over 16 frames / 4 latents.
    model.use_framewise_encoding = False
    model.use_framewise_decoding = False
    _use_frame_causal_attention(model)
    return model


# --------------------------------------------------------------------------------------------------
# Encode / decode
# --------------------------------------------------------------------------------------------------


def vae_encode(vae: HunyuanVideoVAE, pixels: torch.Tensor) -> torch.Tensor:
    """Encode pixels to DiT-ready latents: posterior mean times `scaling_factor`.

    The reference draws `posterior.sample()` from the unseeded global RNG. We take the posterior mean
    instead: it is deterministic (same input, same latent, on every run and device), and the HunyuanVideo
    posterior std is tiny (about 4e-7 with the golden weights, log-variance clamped near -30), so the two
    differ by about 1e-6 -- far below anything the sampler can notice.

    Args:
        vae: the loaded VAE.
        pixels: `[B, 3, T, H, W]` in [-1, 1]; T = 1 + 4k gives 1 + k latent frames.

    Returns:
        `[B, C_latent, (T-1)//4+1, H/8, W/8]` in the VAE's dtype, on its device.
    """
    mean, _ = vae_encode_posterior(vae, pixels)
    return mean * vae.scaling_factor


def vae_encode_posterior(vae: HunyuanVideoVAE, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled posterior mean and log-variance (clamped to [-30, 20] like the reference).

    Args:
        vae: the loaded VAE.
        pixels: `[B, 3, T, H, W]` in [-1, 1].

    Returns:
        `(mean, logvar)`, each `[B, C_latent, T', H/8, W/8]`.
    """
    import torch

    x = _as_5d(pixels, "pixels").to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        moments = _encode_moments(vae, x)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def vae_decode(vae: HunyuanVideoVAE, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents (as the DiT produces them) in one pass: `decode(latents / scaling_factor)`.

    Args:
        vae: the loaded VAE.
        latents: `[B, C_latent, T, h, w]`, scaled.

    Returns:
        Pixels `[B, 3, 4(T-1)+1, 8h, 8w]`, roughly in [-1, 1] (not clamped), in the VAE's dtype.
    """
    import torch

    z = _as_5d(latents, "latents").to(device=vae.device, dtype=vae.dtype) / vae.scaling_factor
    with torch.no_grad():
        return _decode_unscaled(vae, z)


def vae_decode_per_frame(vae: HunyuanVideoVAE, latents: torch.Tensor) -> torch.Tensor:
    """Decode every latent frame on its own (one-frame mode) and stack the results in time.

    A single latent frame decodes to a single pixel frame, so T latents give T frames (not 4(T-1)+1).

    Args:
        vae: the loaded VAE.
        latents: `[B, C_latent, T, h, w]`, scaled.

    Returns:
        Pixels `[B, 3, T, 8h, 8w]`.
    """
    import torch

    z = _as_5d(latents, "latents")
    return torch.cat([vae_decode(vae, z[:, :, t : t + 1]) for t in range(z.shape[2])], dim=2)


def _as_5d(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 5:
        raise ValueError(f"{name} must be [B, C, T, H, W], got shape {list(x.shape)}")
    return x


def _encode_moments(vae: HunyuanVideoVAE, x: torch.Tensor) -> torch.Tensor:
    m = vae.model
    n, ratio = vae.tile_sample_size, m.spatial_compression_ratio
    if n is not None and (x.shape[-2] > n or x.shape[-1] > n):
        return _tiled(x, lambda t: m.quant_conv(m.encoder(t)), n, n // ratio, out_size=lambda s: s // ratio)
    return m.quant_conv(m.encoder(x))


def _decode_unscaled(vae: HunyuanVideoVAE, z: torch.Tensor) -> torch.Tensor:
    m = vae.model
    n, ratio = vae.tile_sample_size, m.spatial_compression_ratio
    if n is not None and (z.shape[-2] > n // ratio or z.shape[-1] > n // ratio):
        return _tiled(z, lambda t: m.decoder(m.post_quant_conv(t)), n // ratio, n, out_size=lambda s: s * ratio)
    return m.decoder(m.post_quant_conv(z))


# --------------------------------------------------------------------------------------------------
# Spatial tiling (reference arithmetic)
# --------------------------------------------------------------------------------------------------


def _tiled(x: torch.Tensor, fn, tile_in: int, tile_out: int, *, out_size, keyed: bool = False) -> torch.Tensor:
    """Run `fn` on overlapping square tiles of `x` and blend the results, exactly like the reference.

    Input tiles of `tile_in` start every `int(tile_in * 0.75)` (input units); each output tile (nominally
    `tile_out`) is blended linearly with the already-blended tile above and then the one to the left over
    `int(tile_out * 0.25)` rows/columns, and its first `tile_out - blend` rows/columns are kept.
    `out_size` maps an input height/width to the output one (the final crop; a no-op for valid tiles).
    `keyed`: `fn(tile, (i, j))` is told the tile's position (a time-chunked decode keeps one state per tile).
    """
    import torch

    stride = int(tile_in * (1 - TILE_OVERLAP_FACTOR))
    blend = int(tile_out * TILE_OVERLAP_FACTOR)
    keep = tile_out - blend
    height, width = x.shape[-2], x.shape[-1]

    out_rows: list[torch.Tensor] = []
    above: list[torch.Tensor] = []  # only the previous row of tiles is ever read again
    for i in range(0, height, stride):
        row: list[torch.Tensor] = []
        for j in range(0, width, stride):
            piece = x[..., i : i + tile_in, j : j + tile_in]
            tile = fn(piece, (i, j)) if keyed else fn(piece)
            # The reference blends in place, so the neighbours it reads are already blended themselves.
            if i > 0:
                tile = _blend(above[len(row)], tile, blend, dim=-2)
            if j > 0:
                tile = _blend(row[-1], tile, blend, dim=-1)
            row.append(tile)
        out_rows.append(torch.cat([t[..., :keep, :keep] for t in row], dim=-1))
        above = row
    out = torch.cat(out_rows, dim=-2)
    return out[..., : out_size(height), : out_size(width)]


def _blend(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Linear ramp from the end of `prev` into the start of `cur` along `dim` (-2 rows, -1 columns)."""
    import torch

    extent = min(prev.shape[dim], cur.shape[dim], extent)
    if extent <= 0:
        return cur
    # Weights y/extent are formed in float64 and rounded once, as the reference's Python scalars are.
    ramp = torch.arange(extent, dtype=torch.float64) / extent
    shape = [1] * cur.ndim
    shape[dim] = extent
    w_cur = ramp.to(cur.dtype).to(cur.device).view(shape)
    w_prev = (1 - ramp).to(cur.dtype).to(cur.device).view(shape)
    head = prev.narrow(dim, prev.shape[dim] - extent, extent) * w_prev + cur.narrow(dim, 0, extent) * w_cur
    return torch.cat([head, cur.narrow(dim, extent, cur.shape[dim] - extent)], dim=dim)


# --------------------------------------------------------------------------------------------------
# Width chunking of the causal convolutions (--vae_chunk_size)
# --------------------------------------------------------------------------------------------------


def set_vae_chunk_size(vae: HunyuanVideoVAE, chunk_size: int | None) -> int:
    """Turn width chunking of every cubic-kernel causal convolution on (or off with None).

    A convolution whose input is at least `1.5 * chunk_size` wide is computed on width windows of
    `chunk_size` input columns (rounded down to a multiple of its stride) plus the `kernel // 2` columns of
    context each side needs, so each output column sees exactly the inputs it would unchunked: the result
    is identical, only the peak memory of one convolution call drops. Parameter names do not change.

    Args:
        vae: the loaded VAE (changed in place).
        chunk_size: columns per chunk, or None for plain convolutions.

    Returns:
        The number of convolutions affected.
    """
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    count = 0
    for module in vae.model.modules():
        if not isinstance(module, HunyuanVideoCausalConv3d):
            continue
        k = module.conv.kernel_size
        if chunk_size is None:
            if isinstance(module, _chunked_class()):
                module.__class__ = HunyuanVideoCausalConv3d
            continue
        if k[0] == k[1] == k[2] and k[0] > 1:
            # Swapping the class (not wrapping the module) keeps the module tree, hence the keys, as is.
            module.__class__ = _chunked_class()
            module.chunk_size = chunk_size
            module.chunked_calls = 0
            count += 1
    vae.chunk_size = chunk_size
    return count


@functools.cache
def _chunked_class():
    # Built on first use: subclassing a diffusers class at import time would make
    # `import framepack_cli.models.vae` pull in torch and diffusers (slow CLI start-up, --help).
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    class WidthChunkedCausalConv3d(HunyuanVideoCausalConv3d):
        """`HunyuanVideoCausalConv3d` computed in width chunks (see `set_vae_chunk_size`) and/or in time chunks
        (`vae_decode_stream`: `_stream` set, the previous chunk's last `kernel_t - 1` input frames stand in for
        the causal padding). `chunk_size` None: no width chunking."""

        chunk_size: int | None
        chunked_calls: int

        def forward(self, hidden_states):
            import torch

            stream = getattr(self, "_stream", None)
            carry = None
            kt = self.conv.kernel_size[0]
            if stream is not None and kt > 1:
                state = stream.current
                carry = state.conv.get(id(self))
                tail = hidden_states[:, :, -(kt - 1):]
                if tail.shape[2] < kt - 1:  # a chunk shorter than the kernel: the carried frames fill up the rest
                    before = hidden_states[:, :, :1].expand(-1, -1, kt - 1, -1, -1) if carry is None else carry
                    tail = torch.cat([before, tail], dim=2)[:, :, -(kt - 1):]
                state.conv[id(self)] = tail.clone()  # clone: never keep the chunk alive
            width = hidden_states.shape[-1]
            if self.chunk_size is None or width < 1.5 * self.chunk_size:
                return self.conv(self._padded(hidden_states, self.time_causal_padding, carry))
            self.chunked_calls += 1
            conv = self.conv
            kernel_w, stride_w = conv.kernel_size[2], conv.stride[2]
            pad_left, pad_right = self.time_causal_padding[0], self.time_causal_padding[1]
            other_pad = tuple(self.time_causal_padding[2:])  # height and (causal) time
            out_width = (width + pad_left + pad_right - kernel_w) // stride_w + 1
            per_chunk = max(1, self.chunk_size // stride_w)  # output columns per chunk
            pieces = []
            for o0 in range(0, out_width, per_chunk):
                o1 = min(o0 + per_chunk, out_width)
                # Input columns (unpadded coordinates) that output columns o0..o1-1 read.
                start = o0 * stride_w - pad_left
                stop = (o1 - 1) * stride_w + kernel_w - pad_left
                cols = slice(max(start, 0), min(stop, width))
                # Replicate-padding only the chunks at the borders reproduces the full tensor's padding.
                pad = (max(-start, 0), max(stop - width, 0), *other_pad)
                piece_carry = None if carry is None else carry[..., cols]
                pieces.append(conv(self._padded(hidden_states[..., cols], pad, piece_carry)))
            return torch.cat(pieces, dim=-1)

        def _padded(self, x, pad, carry):
            """`x` padded by `pad` (replicate); with `carry`, its frames replace the causal time padding."""
            import torch.nn.functional as F

            out = F.pad(x, pad, mode=self.pad_mode)
            if carry is not None:
                # One allocation of the padded size (as the plain path), then the front frames overwritten.
                out[:, :, : carry.shape[2]] = F.pad(carry, (*pad[:4], 0, 0), mode=self.pad_mode)
            return out

    return WidthChunkedCausalConv3d


# --------------------------------------------------------------------------------------------------
# Mid-block attention without the (T*h*w)^2 mask
# --------------------------------------------------------------------------------------------------


def _use_frame_causal_attention(model: AutoencoderKLHunyuanVideo) -> None:
    """Swap both mid blocks to the frame-causal mid block (same parameters, same math, far less memory)."""
    for block in (model.encoder.mid_block, model.decoder.mid_block):
        block.__class__ = _mid_block_class()


@functools.cache
def _mid_block_class():
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoMidBlock3D

    class FrameCausalMidBlock(HunyuanVideoMidBlock3D):
        """Mid block whose attention runs one query frame at a time over the frames up to it.

        The stock block builds a float mask of (T*h*w)^2 entries (for a 19-latent chunk at 640x640 that is
        ~15e9 entries) and attends with it. Token i of frame t may see exactly the tokens of frames <= t,
        so attending per query frame to that prefix without any mask is the same computation.
        """

        def forward(self, hidden_states):
            stream = getattr(self, "_stream", None)
            hidden_states = self.resnets[0](hidden_states)
            for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
                if attn is not None:
                    kv = None if stream is None else stream.current.kv
                    hidden_states = _frame_causal_attention(attn, hidden_states, kv)
                hidden_states = resnet(hidden_states)
            return hidden_states

    return FrameCausalMidBlock


def _frame_causal_attention(attn, x: torch.Tensor, kv: dict | None = None) -> torch.Tensor:
    """diffusers' `Attention` (group norm, q/k/v, SDPA, out proj, residual) with a frame-causal pattern.

    `kv` (time-chunked decode): a dict keeping this layer's keys / values of every earlier chunk's frames under
    `id(attn)`; they are prepended, so a chunk's frames attend to all frames before them as in one pass, and this
    chunk's are added for the next one.
    """
    import torch
    import torch.nn.functional as F

    b, c, t, h, w = x.shape
    hw = h * w
    tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * hw, c)
    normed = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2) if attn.group_norm is not None else tokens
    heads = attn.heads

    def split(y: torch.Tensor) -> torch.Tensor:
        return y.view(b, t * hw, heads, -1).transpose(1, 2)

    q, k, v = split(attn.to_q(normed)), split(attn.to_k(normed)), split(attn.to_v(normed))
    before = 0
    if kv is not None:
        prev = kv.get(id(attn))
        if prev is not None:
            k, v = torch.cat([prev[0], k], dim=2), torch.cat([prev[1], v], dim=2)
            before = prev[0].shape[2]
        kv[id(attn)] = (k, v)
    out = torch.empty_like(q)
    for f in range(t):
        end = (f + 1) * hw
        out[:, :, f * hw : end] = F.scaled_dot_product_attention(
            q[:, :, f * hw : end], k[:, :, : before + end], v[:, :, : before + end])
    out = out.transpose(1, 2).reshape(b, t * hw, -1)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + tokens
    out = out / attn.rescale_output_factor
    return out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


# --------------------------------------------------------------------------------------------------
# Decode in time chunks without overlap (--decode stream)
# --------------------------------------------------------------------------------------------------


class _StreamState:
    """What one decoder pass hands to the next chunk: each causal conv's last `kernel_t - 1` input frames, each
    mid-block attention's keys / values, and whether the sequence start (first frame not upsampled) is done."""

    def __init__(self) -> None:
        self.conv: dict[int, torch.Tensor] = {}
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.started = False


class _StreamSwitch:
    """The state the streaming modules read now (one per spatial tile with tiling)."""

    def __init__(self) -> None:
        self.states: dict[object, _StreamState] = {}
        self.current = _StreamState()

    def select(self, key: object) -> _StreamState:
        self.current = self.states.setdefault(key, _StreamState())
        return self.current


def vae_decode_stream(vae: HunyuanVideoVAE, latents: torch.Tensor, bounds: list[tuple[int, int]]):
    """Decode scaled latents chunk by chunk in time, with no overlap, yielding each chunk's pixels in order.

    The decoder is causal in time: every causal convolution pads its input at the front with `kernel_t - 1`
    replicas of the first frame, the time upsamplers leave the first frame alone and double the rest, and the
    mid-block attention lets a frame see only the frames up to it. So for the chunks after the first, each
    convolution takes the previous chunk's last `kernel_t - 1` input frames instead of the padding, every frame
    is upsampled, and the attention attends over the keys / values of all earlier frames too. Each frame then
    sees exactly what the whole-sequence decode shows it; only GroupNorm statistics are per chunk (as in any
    chunked decode). One chunk covering the whole latent is bit-identical to `vae_decode`.

    Args:
        vae: the loaded VAE (its modules are switched for the duration of the call, then restored).
        latents: `[B, C_latent, T, h, w]`, scaled.
        bounds: consecutive latent slices `(a, b)` covering `[0, T)` in order (`plan.sections.stream_chunks`).

    Yields:
        Pixels `[B, 3, F, 8h, 8w]` in the VAE's dtype: `4(b-1)+1` frames for the first chunk, `4(b-a)` for the
        others, `4(T-1)+1` in all.
    """
    import torch

    z = _as_5d(latents, "latents")
    if not bounds or bounds[0][0] != 0 or bounds[-1][1] != z.shape[2] or any(
            b0[1] != b1[0] for b0, b1 in zip(bounds, bounds[1:], strict=False)) or any(a >= b for a, b in bounds):
        raise ValueError(f"bounds {bounds} do not cover the {z.shape[2]} latent frames in order")
    m = vae.model
    n, ratio = vae.tile_sample_size, m.spatial_compression_ratio
    switch = _StreamSwitch()

    def decode(t: torch.Tensor, key: object = None) -> torch.Tensor:
        state = switch.select(key)
        out = m.decoder(m.post_quant_conv(t))
        state.started = True
        return out

    with _streaming(m.decoder, switch), torch.no_grad():
        for a, b in bounds:
            part = z[:, :, a:b].to(device=vae.device, dtype=vae.dtype) / vae.scaling_factor
            if n is not None and (part.shape[-2] > n // ratio or part.shape[-1] > n // ratio):
                yield _tiled(part, decode, n // ratio, n, out_size=lambda s: s * ratio, keyed=True)
            else:
                yield decode(part)


class _streaming:
    """Context: the decoder's causal convs, time upsamplers and mid block read `switch` (classes restored after)."""

    def __init__(self, decoder, switch: _StreamSwitch) -> None:
        self.decoder, self.switch = decoder, switch
        self.saved: list[tuple[object, type]] = []

    def __enter__(self):
        from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
            HunyuanVideoCausalConv3d,
            HunyuanVideoUpsampleCausal3D,
        )

        for module in self.decoder.modules():
            cls = type(module)
            if isinstance(module, HunyuanVideoCausalConv3d):
                if cls is HunyuanVideoCausalConv3d:
                    module.__class__ = _chunked_class()
                    module.chunk_size, module.chunked_calls = None, 0
            elif isinstance(module, HunyuanVideoUpsampleCausal3D):
                module.__class__ = _upsample_class()
            elif module is self.decoder.mid_block:
                pass
            else:
                continue
            self.saved.append((module, cls))
            module._stream = self.switch
        return self

    def __exit__(self, *exc) -> None:
        for module, cls in self.saved:
            module.__class__ = cls
            del module._stream


@functools.cache
def _upsample_class():
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoUpsampleCausal3D

    class StreamingUpsampleCausal3D(HunyuanVideoUpsampleCausal3D):
        """Upsampler of a time-chunked decode: after the sequence's first chunk every frame is upsampled (only
        the sequence's very first frame is kept single)."""

        def forward(self, hidden_states):
            import torch.nn.functional as F

            if not self._stream.current.started:
                return super().forward(hidden_states)
            up = F.interpolate(hidden_states.contiguous(), scale_factor=self.upsample_factor, mode="nearest")
            return self.conv(up)

    return StreamingUpsampleCausal3D
