"""The FramePack DiT (HunyuanVideo transformer with packed history context) and its loader.

The module tree is diffusers' `HunyuanVideoFramepackTransformer3DModel` (same parameter names as every
FramePack checkpoint: lllyasviel shards, Kijai single files, ComfyUI-prefixed files), reused as a library.
The forward pass is our own, because the diffusers one cannot run what the generator needs:

* any of the 1x / 2x / 4x history groups may be absent (one-frame `no_post` / `no_2x` / `no_4x`);
* `guidance` may be None;
* frame indices are per sample (`[B, n]`, each row its own RoPE positions);
* batch > 1 with different text lengths uses per-sample attention (the reference's `split_attn`), so every
  sample equals its batch-1 call;
* RoPE scaling of the spatial positions above a timestep threshold (musubi's one-frame option);
* selectable attention kernels;
* the output head runs in float32 (the reference's `high_quality_fp32_output_for_inference`).

Sequence layout (reference semantics): image stream `[4x | 2x | 1x | noisy]`, each group flattened (t, h, w)
row-major, followed by the context `[SigLIP projection (729) | refined text (valid tokens)]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.models.transformers.transformer_hunyuan_video_framepack import (
    HunyuanVideoFramepackTransformer3DModel,
)

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.attention import (  # noqa: F401 - ATTN_MODES / resolve_attention are re-exported
    ATTN_MODES,
    AttentionFn,
    canonical,
    choose_attention,
    resolve_attention,
    sdpa_attention,
)
from framepack_cli.models.block_swap import mark
from framepack_cli.models.detect import expect_kind
from framepack_cli.models.dtypes import torch_dtype
from framepack_cli.models.loading import (
    TensorInfo,
    key_mismatch,
    load_state_dict,
    read_config_json,
    read_header_infos,
    resolve_dit_files,
)

# Constants of the real model that the weights do not encode (RoPE has no parameters).
HEAD_DIM = 128
ROPE_AXES_DIM = (16, 56, 56)
ROPE_THETA = 256.0

# Key prefixes that wrap the bare diffusers names in other distributions (ComfyUI, pipeline dumps).
_KNOWN_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "transformer.")

# Constructor arguments of the diffusers class that a config.json may set. `has_image_proj`,
# `has_clean_x_embedder` and `image_condition_type` are not taken from files: a FramePack DiT always has
# the image projection and the history embedders and no token-replace conditioning.
_CONFIG_KEYS = (
    "in_channels",
    "out_channels",
    "num_attention_heads",
    "attention_head_dim",
    "num_layers",
    "num_single_layers",
    "num_refiner_layers",
    "mlp_ratio",
    "patch_size",
    "patch_size_t",
    "qk_norm",
    "guidance_embeds",
    "text_embed_dim",
    "pooled_projection_dim",
    "rope_theta",
    "rope_axes_dim",
    "image_proj_dim",
)
_INT_KEYS = {
    "in_channels",
    "out_channels",
    "num_attention_heads",
    "attention_head_dim",
    "num_layers",
    "num_single_layers",
    "num_refiner_layers",
    "patch_size",
    "patch_size_t",
    "text_embed_dim",
    "pooled_projection_dim",
    "image_proj_dim",
}

if TYPE_CHECKING:
    from framepack_cli.models.lora import LoraSpec
    from framepack_cli.models.step_cache import ForwardCache

# --------------------------------------------------------------------------------------------------
# Attention kernels
# --------------------------------------------------------------------------------------------------


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: tuple[int, ...] | None, fn: AttentionFn,
    split: bool = False,
) -> torch.Tensor:
    """Dense attention, or per-sample attention over each sample's valid prefix.

    With `seq_lens`, sample i attends only within its first `seq_lens[i]` tokens (image stream + its valid
    context) and its remaining rows are zero, exactly the reference's split attention. Looping instead of
    masking keeps every kernel usable (flash/sage have no masks) and keeps each sample bit-compatible with
    its batch-1 call. `split` (`--split_attn`) attends each sample separately also when all are the same
    length (a batch of one sample's worth of attention memory at a time, as the reference's split_attn).
    """
    if seq_lens is None:
        if not split or q.shape[0] == 1:
            return fn(q, k, v)
        seq_lens = (q.shape[1],) * q.shape[0]
    total = q.shape[1]
    outs = []
    for i, n in enumerate(seq_lens):
        o = fn(q[i : i + 1, :n], k[i : i + 1, :n], v[i : i + 1, :n])
        outs.append(F.pad(o, (0, 0, 0, 0, 0, total - n)))
    return torch.cat(outs, dim=0)


def _crop_padded_text(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the text tokens past the longest prompt of the batch (right padding) before the token refiner.

    Those tokens are masked out of the refiner's attention and of its pooled mean, and `_embed_context` drops
    their outputs: refining only the first `max(valid)` tokens (mask kept) gives the same values up to float
    rounding, at a fraction of the cost (the text is zero-padded to 512 tokens; a prompt has tens). A mask
    that is not right-padded is returned as is (`_embed_context` refuses it).
    """
    valid = mask.sum(dim=1)
    n = max(1, int(valid.max())) if valid.numel() else mask.shape[1]
    if n >= mask.shape[1]:
        return text, mask
    prefix = torch.arange(mask.shape[1], device=mask.device)[None] < valid[:, None]
    if not torch.equal(mask, prefix):
        return text, mask
    return text[:, :n], mask[:, :n]


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of `x` [B, S, heads, D] by per-token angles (`cos`/`sin` [B, S, D]).

    Computed in float32 and cast back, as the reference does.
    """
    xf = x.float()
    even, odd = xf.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-odd, even], dim=-1).flatten(-2)
    return (xf * cos.unsqueeze(2) + rotated * sin.unsqueeze(2)).to(x.dtype)


def _rope_prefix(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], n: int) -> torch.Tensor:
    """Apply RoPE to the first `n` tokens of `x` (the image stream); the context stays unrotated."""
    cos, sin = rope
    if n == x.shape[1]:
        return _apply_rope(x, cos, sin)
    return torch.cat([_apply_rope(x[:, :n], cos, sin), x[:, n:]], dim=1)


class FramePackAttnProcessor:
    """Attention processor for the dual- and single-stream blocks.

    Replaces diffusers' HunyuanVideo processor, which cannot take per-sample RoPE tables or per-sample
    sequence lengths. The blocks hand it `attention_mask`, which in this model is the per-sample valid
    lengths (`tuple[int, ...]`) or None (all tokens valid).

    Args:
        attention_fn: dense kernel from `resolve_attention`.
        split: attend each sample of a batch separately (`--split_attn`, see `_attend`).
    """

    def __init__(self, attention_fn: AttentionFn, split: bool = False) -> None:
        self.attention_fn = attention_fn
        self.split = split

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: tuple[int, ...] | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_ctx = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        # Single-stream blocks project image and context with the same weights (no add_*_proj).
        joint = attn.add_q_proj is None
        x = torch.cat([hidden_states, encoder_hidden_states], dim=1) if joint and n_ctx else hidden_states
        n_img = hidden_states.shape[1]

        q = attn.to_q(x).unflatten(2, (attn.heads, -1))
        k = attn.to_k(x).unflatten(2, (attn.heads, -1))
        v = attn.to_v(x).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q = _rope_prefix(q, image_rotary_emb, n_img)
            k = _rope_prefix(k, image_rotary_emb, n_img)

        if not joint and n_ctx:
            cq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ck = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            cv = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 1), torch.cat([k, ck], 1), torch.cat([v, cv], 1)

        out = _attend(q, k, v, attention_mask, self.attention_fn, self.split).flatten(2, 3).to(q.dtype)
        img, ctx = out[:, :n_img], out[:, n_img:]
        if getattr(attn, "to_out", None) is not None:
            img = attn.to_out[1](attn.to_out[0](img))
        if getattr(attn, "to_add_out", None) is not None:
            ctx = attn.to_add_out(ctx)
        return img, ctx


# --------------------------------------------------------------------------------------------------
# RoPE (reference HunyuanVideoRotaryPosEmbed semantics, per sample)
# --------------------------------------------------------------------------------------------------


def _pad_replicate(x: torch.Tensor, multiples: tuple[int, int, int]) -> torch.Tensor:
    """Replicate-pad the end of T, H, W of a [B, C, T, H, W] tensor up to the given multiples."""
    t, h, w = x.shape[-3:]
    pt, ph, pw = ((m - s % m) % m for m, s in zip(multiples, (t, h, w), strict=True))
    if pt == ph == pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph, 0, pt), mode="replicate")


def _axis_angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """[B, n] positions -> [B, dim, n] angles, each frequency repeated twice (interleaved pairs)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device)[: dim // 2] / dim))
    return (pos[:, None, :] * freqs[None, :, None]).repeat_interleave(2, dim=1)


def rope_grid(
    frame_indices: torch.Tensor,
    height: int,
    width: int,
    spatial_scale: torch.Tensor,
    axes_dim: tuple[int, int, int] | list[int] = ROPE_AXES_DIM,
    theta: float = ROPE_THETA,
    pool: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RoPE cos/sin of one token group.

    Args:
        frame_indices: [B, T] temporal positions of the group's frames.
        height: noisy token-grid height (every group uses the noisy grid, as the reference does).
        width: noisy token-grid width.
        spatial_scale: [B] factor on the y/x positions (RoPE scaling; 1.0 = off). Time is never scaled.
        axes_dim: channels for (t, y, x); sums to the head dim.
        theta: RoPE base.
        pool: 1 for 1x groups; 2 / 4 for the 2x / 4x history: the cos/sin grids (not the angles) are
            replicate-padded and average-pooled by `pool` in t, y and x, matching the conv token grid.

    Returns:
        (cos, sin), each [B, tokens, sum(axes_dim)] in float32, tokens in (t, h, w) row-major order.
    """
    dt, dy, dx = axes_dim
    b, t = frame_indices.shape
    dev = frame_indices.device
    pos_t = frame_indices.float()
    pos_y = torch.arange(height, dtype=torch.float32, device=dev)[None] * spatial_scale[:, None]
    pos_x = torch.arange(width, dtype=torch.float32, device=dev)[None] * spatial_scale[:, None]
    ang_t = _axis_angles(pos_t, dt, theta)[:, :, :, None, None].expand(b, dt, t, height, width)
    ang_y = _axis_angles(pos_y, dy, theta)[:, :, None, :, None].expand(b, dy, t, height, width)
    ang_x = _axis_angles(pos_x, dx, theta)[:, :, None, None, :].expand(b, dx, t, height, width)
    ang = torch.cat([ang_t, ang_y, ang_x], dim=1)  # [B, D, T, H, W]
    cos, sin = ang.cos(), ang.sin()
    if pool > 1:
        cs = _pad_replicate(torch.cat([cos, sin], dim=1), (pool, pool, pool))
        cos, sin = F.avg_pool3d(cs, pool, stride=pool).chunk(2, dim=1)
    return cos.flatten(2).transpose(1, 2), sin.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def _batch_vector(x: torch.Tensor | float, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scalar / [1] / [B] value as a [B] tensor of `dtype` on `device`."""
    t = torch.as_tensor(x, device=device).to(dtype).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"expected a scalar or {batch} values, got shape {tuple(t.shape)}")
    return t


def _batch_indices(idx: torch.Tensor, batch: int, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Frame indices as float32 [B, n]: accepts [n], [1, n] (shared) or [B, n] (per sample)."""
    idx = torch.as_tensor(idx, device=device)
    if idx.ndim == 1:
        idx = idx[None]
    if idx.ndim != 2 or idx.shape[0] not in (1, batch) or idx.shape[1] != n:
        raise ValueError(f"{name} must be [{batch}, {n}] (or [{n}]), got {tuple(idx.shape)}")
    return idx.to(torch.float32).expand(batch, n)


OFFLOAD_DEVICE = torch.device("cpu")


def _to_offload(x: torch.Tensor) -> torch.Tensor:
    """A block's input/output as the checkpoint keeps it with CPU offload (host memory)."""
    return x.to(OFFLOAD_DEVICE)


def _offloaded(block: torch.nn.Module, device: torch.device) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`block` taking its token streams from host memory to `device` and giving its outputs back to the host
    (the reference's CPU-offloading wrapper, `--gradient_checkpointing_cpu_offload`)."""

    def run(tokens: torch.Tensor, context: torch.Tensor, *rest: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out_tokens, out_context = block(tokens.to(device), context.to(device), *rest)
        return _to_offload(out_tokens), _to_offload(out_context)

    return run


class FramePackTransformer(HunyuanVideoFramepackTransformer3DModel):
    """FramePack DiT: diffusers' module tree with our own forward pass (see the module docstring).

    Args:
        attn_mode: attention kernel, one of `ATTN_MODES` (text-refiner attention always uses SDPA with a mask,
            as in the reference).
        rope_scaling_timestep_threshold: if set, forward calls with timestep >= this value multiply the
            spatial RoPE positions (y, x) of every group by `rope_scaling_factor`.
        rope_scaling_factor: see above (0.5 for 2x resolution, ~0.7 for 1.5x).
        **config: constructor arguments of `HunyuanVideoFramepackTransformer3DModel` (diffusers config keys).
            The image projection and history embedders are always built.
    """

    def __init__(
        self,
        *,
        attn_mode: str = "sdpa",
        rope_scaling_timestep_threshold: float | None = None,
        rope_scaling_factor: float = 0.5,
        **config: Any,
    ) -> None:
        config.update(has_image_proj=True, has_clean_x_embedder=True)
        super().__init__(**config)
        self.rope_scaling_timestep_threshold = rope_scaling_timestep_threshold
        self.rope_scaling_factor = rope_scaling_factor
        self.attn_mode = "sdpa"
        self.training_checkpointing = False
        self.checkpointing_cpu_offload = False
        self.block_swapper = None  # `framepack_cli.models.block_swap.enable_block_swap` sets it
        self._attn_processor = FramePackAttnProcessor(sdpa_attention)
        for block in (*self.transformer_blocks, *self.single_transformer_blocks):
            block.attn.processor = self._attn_processor
        self.set_attn_mode(attn_mode)

    def set_attn_mode(self, attn_mode: str) -> None:
        """Switch the attention kernel of all dual/single-stream blocks (`auto`: see `choose_attention`, for the
        model's current device and dtype).

        Raises:
            FramepackError: unknown mode or missing package (names the package to install).
        """
        if canonical(attn_mode) == "auto":
            attn_mode, _ = choose_attention(attn_mode, self.x_embedder.proj.weight.dtype,
                                            self.x_embedder.proj.weight.device)
        self._attn_processor.attention_fn = resolve_attention(attn_mode)
        self.attn_mode = attn_mode

    @property
    def split_attn(self) -> bool:
        """`--split_attn`: every batch attends sample by sample (same result, less attention memory)."""
        return self._attn_processor.split

    @split_attn.setter
    def split_attn(self, value: bool) -> None:
        self._attn_processor.split = bool(value)

    # -- training: activation checkpointing ----------------------------------------------------------

    def enable_training_checkpointing(self, cpu_offload: bool = False) -> None:
        """`--gradient_checkpointing` (and `--gradient_checkpointing_cpu_offload`): while gradients are enabled,
        every block and the reference's other sub-calls (patch embedders of x and the 1x/2x/4x history,
        timestep/guidance/text conditioning, token refiner, image projection, final norm, `proj_out`) run under
        non-reentrant `torch.utils.checkpoint` (RNG state preserved, so dropout masks are recomputed identically).

        With `cpu_offload` the activations kept between checkpointed blocks live in host memory: the image and
        text token streams enter the block loop on the CPU, each block moves them to the model's device, runs,
        and hands its outputs back to the CPU (what the checkpoint keeps for backward), and the last block's
        output returns to the device for the output head. The shared conditioning (`temb`, RoPE) stays on the
        device. Calls without gradients (sampling) are unchanged either way.
        """
        self.training_checkpointing = True
        self.checkpointing_cpu_offload = bool(cpu_offload)

    def disable_training_checkpointing(self) -> None:
        self.training_checkpointing = False
        self.checkpointing_cpu_offload = False

    def _checkpointing(self) -> bool:
        return self.training_checkpointing and torch.is_grad_enabled()

    def _ckpt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, checkpointed when training checkpointing is on and gradients are enabled."""
        if self._checkpointing():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # -- forward pieces (kept separate so caches / block swap can wrap the block loop later) ----------

    def _spatial_rope_scale(self, timestep: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(timestep, dtype=torch.float32)
        if self.rope_scaling_timestep_threshold is None:
            return ones
        # Per sample, so a batch mixing timesteps above and below the threshold stays exact.
        return torch.where(timestep >= self.rope_scaling_timestep_threshold, ones * self.rope_scaling_factor, ones)

    def _embed_image_stream(
        self,
        hidden_states: torch.Tensor,
        latent_indices: torch.Tensor | None,
        history: list[tuple[str, torch.Tensor | None, torch.Tensor | None]],
        spatial_scale: torch.Tensor,
        cache: ForwardCache | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, _, t, h, w = hidden_states.shape
        pt = self.config.patch_size_t
        tokens = self._ckpt(self.x_embedder, hidden_states.to(self.x_embedder.proj.weight.dtype))
        args = (b, t // pt, (h, w), hidden_states.device, latent_indices, history, spatial_scale)
        if cache is None:
            clean, rope = self._embed_history(*args)
        else:
            # The history tokens and every RoPE table are the same on each step of a section: once per section,
            # keyed by the input tensors (identity) and the RoPE scale (rope scaling switches at a timestep).
            refs = (latent_indices, *(x for _, latents, indices in history for x in (latents, indices)))
            scale = None if self.rope_scaling_timestep_threshold is None else tuple(spatial_scale.tolist())
            key = ("image_stream", b, t, h, w, scale, tuple(id(r) for r in refs))
            clean, rope = cache.memo(key, refs, lambda: self._embed_history(*args))
        return (tokens if clean is None else torch.cat([clean, tokens], dim=1)), rope

    def _embed_history(
        self, b: int, tn: int, hw: tuple[int, int], dev: torch.device, latent_indices: torch.Tensor | None,
        history: list[tuple[str, torch.Tensor | None, torch.Tensor | None]], spatial_scale: torch.Tensor,
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """The clean-history tokens `[4x | 2x | 1x]` (None without history) and the RoPE of the whole image stream
        `[4x | 2x | 1x | noisy]`: everything of the image stream but the noisy tokens themselves."""
        dtype = self.x_embedder.proj.weight.dtype
        axes, theta = tuple(self.config.rope_axes_dim), float(self.config.rope_theta)
        h, w = hw
        hp, wp = h // self.config.patch_size, w // self.config.patch_size
        if latent_indices is None:
            latent_indices = torch.arange(tn, device=dev)
        idx = _batch_indices(latent_indices, b, tn, "latent_indices", dev)
        cos, sin = rope_grid(idx, hp, wp, spatial_scale, axes, theta)
        groups = [(None, cos, sin)]

        embedder = self.clean_x_embedder
        convs = {
            "1x": (embedder.proj, (1, 1, 1), 1),
            "2x": (embedder.proj_2x, (2, 4, 4), 2),
            "4x": (embedder.proj_4x, (4, 8, 8), 4),
        }
        for name, latents, indices in history:
            if latents is None:
                continue  # one-frame no_post / no_2x / no_4x: the group is simply absent
            if indices is None:
                raise ValueError(f"clean latents {name} were given without their frame indices")
            conv, multiples, pool = convs[name]
            grid = self._ckpt(conv, _pad_replicate(latents.to(dtype), multiples))
            idx = _batch_indices(indices, b, latents.shape[2], f"clean_latent indices ({name})", dev)
            g_cos, g_sin = rope_grid(idx, hp, wp, spatial_scale, axes, theta, pool=pool)
            if grid.shape[2:].numel() != g_cos.shape[1] or grid.shape[3:] != (-(-hp // pool), -(-wp // pool)):
                raise ValueError(
                    f"clean latents {name} have spatial size {tuple(latents.shape[3:])}, expected the noisy "
                    f"latents' {(h, w)}"
                )
            groups.append((grid.flatten(2).transpose(1, 2), g_cos, g_sin))

        # The reference prepends 1x, then 2x, then 4x: final order [4x | 2x | 1x | noisy].
        groups.reverse()
        clean = [g[0] for g in groups[:-1]]
        rope = (torch.cat([g[1] for g in groups], dim=1), torch.cat([g[2] for g in groups], dim=1))
        return (torch.cat(clean, dim=1) if clean else None), rope

    def _conditioning(
        self, timestep: torch.Tensor, pooled_projections: torch.Tensor, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        tte = self.time_text_embed
        dtype = pooled_projections.dtype
        emb = tte.timestep_embedder(tte.time_proj(timestep).to(dtype))
        # guidance=None drops the distilled-CFG term (the diffusers forward crashes instead).
        if tte.guidance_embedder is not None and guidance is not None:
            emb = emb + tte.guidance_embedder(tte.time_proj(guidance).to(dtype))
        return emb + tte.text_embedder(pooled_projections)

    def _embed_context(
        self,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        timestep: torch.Tensor,
        image_embeddings: torch.Tensor | None,
        n_img: int,
        cache: ForwardCache | None = None,
    ) -> tuple[torch.Tensor, tuple[int, ...] | None]:
        b = encoder_hidden_states.shape[0]
        mask = encoder_attention_mask.bool()
        encoder_hidden_states, mask = _crop_padded_text(encoder_hidden_states, mask)
        # The token refiner takes the timestep: not step-invariant, computed every call.
        text = self._ckpt(self.context_embedder, encoder_hidden_states, timestep, mask)
        if image_embeddings is not None:
            # SigLIP tokens go first: with right-padded text every valid context token is then a prefix.
            def project() -> torch.Tensor:
                return self._ckpt(self.image_projection, image_embeddings.to(text.dtype))

            img = project() if cache is None else cache.memo(
                ("image_projection", id(image_embeddings), text.dtype), (image_embeddings,), project)
            text = torch.cat([img, text], dim=1)
            mask = torch.cat([mask.new_ones(b, img.shape[1]), mask], dim=1)
        valid = mask.sum(dim=1)
        prefix = torch.arange(mask.shape[1], device=mask.device)[None] < valid[:, None]
        if not torch.equal(mask, prefix):
            raise ValueError("encoder_attention_mask must be right-padded (valid text tokens first)")
        lens = [int(v) for v in valid.tolist()]
        if min(lens) == 0:
            raise ValueError("every sample needs at least one context token (text or image embeddings)")
        # Tokens past the longest valid context are never attended by anyone: drop them. For batch 1 this is
        # the reference's crop to the valid tokens (no mask at all).
        context = text[:, : max(lens)]
        if len(set(lens)) == 1:
            return context, None
        return context, tuple(n_img + n for n in lens)

    def _run_blocks(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        temb: torch.Tensor,
        seq_lens: tuple[int, ...] | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = (*self.transformer_blocks, *self.single_transformer_blocks)
        sw = self.block_swapper
        if sw is not None:
            sw.begin(training=torch.is_grad_enabled())
        checkpointing = self._checkpointing()
        device = tokens.device
        offload = checkpointing and self.checkpointing_cpu_offload
        diffusers_ckpt = not checkpointing and torch.is_grad_enabled() and self.gradient_checkpointing
        if offload:
            tokens, context = _to_offload(tokens), _to_offload(context)
        n = len(blocks)
        for i, block in enumerate(blocks):
            if sw is not None:
                # Backward markers (identity forward): block i's backward is use 2n-1-i, block i-1's comes next.
                tokens, context = mark(sw, 2 * n - 1 - i, 2 * n - i if i else -1, tokens, context)
                sw.enter(i)
            if checkpointing:
                fn = _offloaded(block, device) if offload else block
                tokens, context = torch.utils.checkpoint.checkpoint(
                    fn, tokens, context, temb, seq_lens, rope, use_reentrant=False)
            elif diffusers_ckpt:
                tokens, context = self._gradient_checkpointing_func(block, tokens, context, temb, seq_lens, rope)
            else:
                tokens, context = block(tokens, context, temb, seq_lens, rope)
            if sw is not None:
                sw.leave(i)
        if sw is not None and n:
            tokens, context = mark(sw, -1, n, tokens, context)  # the backward starts with the last block
        return tokens.to(device), context.to(device)

    def _output_head(self, tokens: torch.Tensor, temb: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, _, t, h, w = shape
        p, pt = self.config.patch_size, self.config.patch_size_t
        tn, hn, wn = t // pt, h // p, w // p
        x = self._ckpt(self.norm_out, tokens[:, -tn * hn * wn :], temb)
        # proj_out is kept in float32 by load_dit ("high_quality_fp32_output"): the velocity is float32.
        x = self._ckpt(self.proj_out, x.to(self.proj_out.weight.dtype)).float()
        # Output features are ordered (c, pt, ph, pw).
        x = x.reshape(b, tn, hn, wn, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, -1, tn * pt, hn * p, wn * p)

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
        latent_indices: torch.Tensor | None = None,
        clean_latents: torch.Tensor | None = None,
        clean_latent_indices: torch.Tensor | None = None,
        clean_latents_2x: torch.Tensor | None = None,
        clean_latent_2x_indices: torch.Tensor | None = None,
        clean_latents_4x: torch.Tensor | None = None,
        clean_latent_4x_indices: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        cache: ForwardCache | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity (≈ noise − x0) of the noisy latents.

        Args:
            hidden_states: noisy latents [B, 16, T, h, w].
            timestep: sigma·1000, scalar or [B] (used in float32, as musubi does).
            encoder_hidden_states: LLaMA text features [B, L, text_embed_dim], right zero-padded.
            encoder_attention_mask: bool [B, L], valid tokens first; None = all valid.
            pooled_projections: CLIP pooled [B, pooled_projection_dim].
            guidance: embedded CFG scale·1000, scalar or [B]; rounded to the model dtype like the reference
                (bf16: 10000 -> 9984). None drops the guidance embedding term.
            latent_indices: frame positions of the noisy latents, [T], [1, T] or [B, T]; default arange(T).
            clean_latents: 1x history [B, 16, T1, h, w] or None (group skipped).
            clean_latent_indices: its frame positions, [B, T1] (or shared [T1] / [1, T1]).
            clean_latents_2x: 2x history [B, 16, T2, h, w] or None.
            clean_latent_2x_indices: its frame positions.
            clean_latents_4x: 4x history [B, 16, T4, h, w] or None.
            clean_latent_4x_indices: its frame positions.
            image_embeddings: SigLIP last_hidden_state [B, 729, image_proj_dim] (None = no image tokens).
            cache: one section's caches (`framepack_cli.models.step_cache`, used only without gradients): the
                step-invariant work (history tokens, RoPE tables, image projection) is computed once per section,
                and a step cache may skip the block stack.

        Returns:
            Velocity [B, 16, T, h, w] in float32.
        """
        b = hidden_states.shape[0]
        dev, dtype = hidden_states.device, self.x_embedder.proj.weight.dtype
        timestep = _batch_vector(timestep, b, torch.float32, dev)
        if guidance is not None:
            guidance = _batch_vector(guidance, b, dtype, dev)
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.bool, device=dev)

        if torch.is_grad_enabled():
            cache = None  # training: every tensor keeps its graph
        tokens, rope = self._embed_image_stream(
            hidden_states,
            latent_indices,
            [
                ("1x", clean_latents, clean_latent_indices),
                ("2x", clean_latents_2x, clean_latent_2x_indices),
                ("4x", clean_latents_4x, clean_latent_4x_indices),
            ],
            self._spatial_rope_scale(timestep),
            cache,
        )
        temb = self._ckpt(self._conditioning, timestep, pooled_projections.to(dtype), guidance)
        context, seq_lens = self._embed_context(
            encoder_hidden_states.to(dtype), encoder_attention_mask, timestep, image_embeddings, tokens.shape[1], cache
        )
        step_cache = cache.section.step_cache if cache is not None else None
        if step_cache is None:
            tokens, _ = self._run_blocks(tokens, context, temb, seq_lens, rope)
        else:
            tokens = step_cache.run(cache.branch, tokens,
                                    lambda x: self._run_blocks(x, context, temb, seq_lens, rope)[0],
                                    lambda: self._first_modulation(tokens, temb))
        return self._output_head(tokens, temb, hidden_states.shape)

    def _first_modulation(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The first block's modulated image-stream input (TeaCache's signal)."""
        block = self.transformer_blocks[0] if len(self.transformer_blocks) else self.single_transformer_blocks[0]
        return block.norm1(tokens, emb=temb)[0] if hasattr(block, "norm1") else block.norm(tokens, emb=temb)[0]


# --------------------------------------------------------------------------------------------------
# Configuration: config.json or tensor shapes
# --------------------------------------------------------------------------------------------------


def _dit_prefix(infos: dict[str, TensorInfo]) -> str:
    for p in _KNOWN_PREFIXES:
        if p + "x_embedder.proj.weight" in infos:
            return p
    raise ModelFormatError("not a FramePack DiT: no x_embedder.proj.weight tensor")


def _count_blocks(keys: list[str], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_dit_config(infos: dict[str, TensorInfo]) -> dict[str, Any]:
    """Architecture of a FramePack DiT from tensor names and shapes alone (no weights loaded).

    The head size (128), RoPE axes (16, 56, 56) and theta (256) are constants of the real model that the
    tensors do not encode; everything else is read from shapes. A known key prefix is allowed.

    Args:
        infos: tensor infos from `read_header_infos`.

    Returns:
        Diffusers config keys (`_CONFIG_KEYS` plus `has_image_proj` / `has_clean_x_embedder`).

    Raises:
        ModelFormatError: a tensor needed to infer the architecture is missing or inconsistent.
    """
    prefix = _dit_prefix(infos)
    keys = [k[len(prefix) :] for k in infos if k.startswith(prefix)]

    def shape(name: str) -> tuple[int, ...]:
        info = infos.get(prefix + name)
        if info is None:
            raise ModelFormatError(f"not a complete FramePack DiT: tensor {name!r} is missing")
        return info.shape

    inner, in_channels, patch_t, patch, _ = shape("x_embedder.proj.weight")
    num_layers = _count_blocks(keys, r"^transformer_blocks\.(\d+)\.")
    num_single = _count_blocks(keys, r"^single_transformer_blocks\.(\d+)\.")
    norm_q = (
        "transformer_blocks.0.attn.norm_q.weight" if num_layers else "single_transformer_blocks.0.attn.norm_q.weight"
    )
    has_qk_norm = prefix + norm_q in infos
    head_dim = shape(norm_q)[0] if has_qk_norm else HEAD_DIM
    if inner % head_dim:
        raise ModelFormatError(f"FramePack DiT inner dim {inner} is not a multiple of the head size {head_dim}")
    if num_layers:
        mlp_hidden = shape("transformer_blocks.0.ff.net.0.proj.weight")[0]
    elif num_single:
        mlp_hidden = shape("single_transformer_blocks.0.proj_mlp.weight")[0]
    else:
        raise ModelFormatError("not a complete FramePack DiT: no transformer blocks")
    return {
        "in_channels": in_channels,
        "out_channels": shape("proj_out.weight")[0] // (patch_t * patch * patch),
        "num_attention_heads": inner // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": num_layers,
        "num_single_layers": num_single,
        "num_refiner_layers": _count_blocks(keys, r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\."),
        "mlp_ratio": mlp_hidden / inner,
        "patch_size": patch,
        "patch_size_t": patch_t,
        "qk_norm": "rms_norm" if has_qk_norm else None,
        "guidance_embeds": prefix + "time_text_embed.guidance_embedder.linear_1.weight" in infos,
        "text_embed_dim": shape("context_embedder.proj_in.weight")[1],
        "pooled_projection_dim": shape("time_text_embed.text_embedder.linear_1.weight")[1],
        "rope_theta": ROPE_THETA,
        "rope_axes_dim": list(ROPE_AXES_DIM),
        "image_proj_dim": shape("image_projection.up.weight")[1],
        "has_image_proj": True,
        "has_clean_x_embedder": True,
    }


def _is_dit_config(raw: dict) -> bool:
    """A config.json beside the weights may belong to something else (a VAE dropped in the same folder)."""
    name = str(raw.get("_class_name", ""))
    return ("Transformer" in name and "Hunyuan" in name) or "num_single_layers" in raw


def dit_config_from_json(raw: dict) -> dict[str, Any]:
    """The DiT constructor arguments a diffusers-style config.json sets (unknown keys and extras ignored).

    Args:
        raw: parsed config.json (e.g. lllyasviel's FramePackI2V_HY config).

    Returns:
        Only the `_CONFIG_KEYS` present in `raw`, normalised to plain Python types.
    """
    out: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if key in _INT_KEYS:
            value = int(value)
        elif key in ("mlp_ratio", "rope_theta"):
            value = float(value)
        elif key == "rope_axes_dim":
            value = [int(v) for v in value]
        elif key == "guidance_embeds":
            value = bool(value)
        out[key] = value
    return out


def load_dit(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_mode: str = "sdpa",
    split_attn: bool = False,
    flag: str = "--dit",
    rope_scaling_timestep_threshold: float | None = None,
    rope_scaling_factor: float = 0.5,
    loras: Sequence[LoraSpec] | None = None,
    lora_verbose: bool = False,
    fp8: str | None = None,
    fp8_fast: bool = False,
) -> FramePackTransformer:
    """Load a FramePack DiT from any supported layout, ready for inference (eval, no grads).

    Layouts: single file with bare diffusers keys (Kijai), any shard of an lllyasviel
    `diffusion_pytorch_model-0000i-of-0000N.safetensors` set, a directory or HF snapshot (also its
    `transformer/` subfolder), and keys under a `diffusion_model.` / `model.diffusion_model.` prefix.
    A DiT config.json beside the weights sets the architecture; otherwise it is inferred from shapes.
    Pre-quantised fp8 files (float8_e4m3fn, plain or with `scale_weight` scales) load their Linear weights as
    stored (`framepack_cli.models.fp8.Fp8Linear`); other fp8 tensors are dequantised to `dtype`.

    Args:
        path: what the user passed for `flag`.
        device: where the weights are loaded (streamed tensor by tensor: RAM holds one tensor at a time).
        dtype: weight dtype (bf16 / fp16 / fp32, torch dtype or name). `proj_out` stays float32.
        attn_mode: attention kernel, see `resolve_attention` (`auto`: `choose_attention` for `device`, `dtype`).
        split_attn: attend each sample of a batch separately (`--split_attn`).
        flag: CLI flag named in error messages.
        rope_scaling_timestep_threshold: see `FramePackTransformer`.
        rope_scaling_factor: see `FramePackTransformer`.
        loras: LoRA/LoHa/LoKr files merged into the weights (`framepack_cli.models.lora.plan_merge`: checked
            from the file headers before any weight is read; float32 arithmetic after the cast to `dtype` and
            before any quantisation).
        lora_verbose: list the unused keys of each LoRA in the report.
        fp8: "fp8" (plain cast) or "fp8_scaled" (block scales): the block Linears are quantised tensor by
            tensor as they are read, after the LoRA merge (`framepack_cli.models.fp8`).
        fp8_fast: choose the scale layout `torch._scaled_mm` can apply on `device` (see `enable_fp8_fast`).

    Returns:
        The model, with `config_source` ("config.json" or "tensor shapes"), `source_files`, `lora_report`
        (one line per LoRA, empty without LoRAs) and `fp8_report` (lines about fp8, empty without) attributes.

    Raises:
        ModelFormatError: wrong kind of file (VAE, LoRA, ...), truncated file, missing shards, keys / shapes
            that do not fit the architecture, or fp8 in a scheme this tool cannot read.
        FramepackError: unknown dtype or unavailable attention mode.
    """
    from framepack_cli.models import fp8 as fp8mod
    from framepack_cli.models.detect import FP8_IGNORED_KEYS, FP8_IGNORED_SUFFIXES, fp8_scheme

    path = Path(path)
    dtype = torch_dtype(dtype)
    if fp8 not in (None, *fp8mod.MODES):
        raise FramepackError(f"fp8 mode {fp8!r} is unknown (fp8 or fp8_scaled)")
    if canonical(attn_mode) == "auto":
        attn_mode, _ = choose_attention(attn_mode, dtype, torch.device(device))
    resolve_attention(attn_mode)  # fail before reading gigabytes
    files = resolve_dit_files(path)
    shown = path if path.is_file() else files[0]
    infos = read_header_infos(files)
    detected = expect_kind(shown, infos, "dit", flag)
    prefix = detected.prefix
    try:
        scheme = fp8_scheme(infos, prefix)
    except ModelFormatError as e:
        raise ModelFormatError(f"{flag}: {shown} {e.message}", hint=e.hint) from None
    if scheme is not None and loras:
        raise ModelFormatError(
            f"{flag}: {shown} is already in fp8 ({scheme.describe()}): merging a LoRA into fp8 weights loses "
            "most of its effect", hint="use the bf16 DiT file with --fp8_scaled")

    try:
        config = infer_dit_config(infos)
    except ModelFormatError as e:
        raise ModelFormatError(f"{flag}: {shown}: {e.message}") from None
    source = "tensor shapes"
    raw = read_config_json(files)
    if raw is not None and _is_dit_config(raw):
        config.update(dit_config_from_json(raw))
        source = "config.json"
    if sum(config["rope_axes_dim"]) != config["attention_head_dim"]:
        raise ModelFormatError(
            f"{flag}: {shown}: head size {config['attention_head_dim']} does not fit the RoPE axes "
            f"{config['rope_axes_dim']}"
        )

    with torch.device("meta"):
        model = FramePackTransformer(
            attn_mode=attn_mode,
            rope_scaling_timestep_threshold=rope_scaling_timestep_threshold,
            rope_scaling_factor=rope_scaling_factor,
            **config,
        )
    # The file's tensors by bare name (ComfyUI-style files may bundle other components under other prefixes:
    # only the DiT's are kept), checked against the architecture before any weight is read.
    header = {k[len(prefix) :]: v for k, v in infos.items() if k.startswith(prefix)}
    ignored = {k for k in header if k in FP8_IGNORED_KEYS or k.endswith(FP8_IGNORED_SUFFIXES)}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    scale_keys = {k for k in header if k.endswith(".scale_weight")}
    mismatch = key_mismatch(expected, set(header) - ignored - scale_keys)
    if mismatch:
        raise ModelFormatError(f"{flag}: {shown} does not match the FramePack DiT layout ({source}): {mismatch} keys")
    bad = {k for k in expected if tuple(header[k].shape) != tuple(expected[k])}
    if bad:
        k = sorted(bad)[0]
        raise ModelFormatError(
            f"{flag}: {shown}: tensor shapes do not match the architecture from {source} "
            f"(e.g. {k}: file {tuple(header[k].shape)}, model {tuple(expected[k])}; {len(bad)} in all)"
        )

    # Which Linears hold fp8 weights: the file's own (pre-quantised), or the targets of --fp8 / --fp8_scaled.
    report: list[str] = []
    keep_fp8: set[str] = set()  # weight keys stored as fp8 in the model
    quantise: dict[str, str] = {}  # weight key -> scale layout ("none" for plain --fp8)
    if scheme is not None:
        for k, info in header.items():
            mod_name = k.rsplit(".", 1)[0]
            if info.dtype != "F8_E4M3" or k in ignored or not k.endswith(".weight") or mod_name == "proj_out":
                continue
            mod = model.get_submodule(mod_name)
            if isinstance(mod, torch.nn.Linear):
                sk = mod_name + ".scale_weight"
                fp8mod.convert_linear(mod, dtype, tuple(header[sk].shape) if sk in header else None, dtype)
                keep_fp8.add(k)
        n_up = scheme.n_fp8 - len(keep_fp8)
        report.append(f"{flag}: {shown.name} is pre-quantised, {scheme.describe()}: {len(keep_fp8)} Linear weights "
                      "load as stored" + (f", {n_up} other tensors are dequantised to {str(dtype)[6:]}" if n_up
                                           else "") + (f" (--{fp8} does not quantise it again)" if fp8 else ""))
    elif fp8 is not None:
        layout = "block"
        if fp8 == "fp8_scaled" and fp8_fast:
            layout = fp8mod.fast_support(device)[0] or "block"
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and fp8mod.is_target(name + ".weight"):
                out, inp = mod.weight.shape
                lay = "none" if fp8 == "fp8" else ("channel" if layout == "block" and inp % fp8mod.BLOCK_SIZE
                                                   else layout)
                shape = {"none": None, "block": (out, inp // fp8mod.BLOCK_SIZE, 1), "channel": (out, 1),
                         "tensor": (1,)}[lay]
                fp8mod.convert_linear(mod, dtype, shape, dtype)
                quantise[name + ".weight"] = lay
        n_params = sum(expected[k].numel() for k in quantise)
        report.append(f"--{fp8}: {len(quantise)} block Linears ({n_params:,} parameters) stored as float8_e4m3fn"
                      + ("" if fp8 == "fp8" else f", {layout} scales"))

    lora_plan = None
    if loras:
        from framepack_cli.models.lora import plan_merge

        # From the headers: a LoRA for another model fails before gigabytes of weights are read.
        lora_plan = plan_merge(loras, {k: v.shape for k, v in header.items()}, verbose=lora_verbose)

    def assign(key: str, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each tensor as it is read: cast, LoRA merge, then fp8 quantisation (so no full copy is ever held)."""
        if not key.startswith(prefix):
            return {}
        k = key[len(prefix) :]
        if k in ignored or k not in expected and k not in scale_keys:
            return {}
        if k in keep_fp8:
            return {k: v.to(device=device)}
        if k in scale_keys:
            w = k[: -len("scale_weight")] + "weight"
            return {k: v.to(device=device, dtype=dtype)} if w in keep_fp8 else {}
        if v.dtype == fp8mod.FP8_DTYPE:  # an fp8 tensor of the file outside a Linear: dequantise it
            sk = k[: -len("weight")] + "scale_weight" if k.endswith(".weight") else None
            scale = scale_values.get(sk) if sk else None
            v = fp8mod.dequantize(v.to(device), scale, torch.float32)
        if v.is_floating_point():
            # The output projection runs in float32 (reference: high_quality_fp32_output_for_inference).
            v = v.to(device=device, dtype=torch.float32 if k.startswith("proj_out.") else dtype)
        else:
            return {k: v.to(device=device)}
        if lora_plan is not None:
            # After the cast, so a bf16 file loaded as float32 gets an unrounded float32 merge.
            with torch.no_grad():
                v = lora_plan.apply(k, v)
        if k in quantise:
            mode = "fp8" if quantise[k] == "none" else "fp8_scaled"
            q, scale = fp8mod.quantize(v, mode, dtype, layout=quantise[k] if mode == "fp8_scaled" else "block")
            out = {k: q}
            if scale is not None:
                out[k[: -len("weight")] + "scale_weight"] = scale
            return out
        return {k: v}

    # Scales of fp8 tensors that are dequantised (not Linear weights), read up front (they are tiny).
    scale_values: dict[str, torch.Tensor] = {}
    unkept = [k for k in scale_keys if k[: -len("scale_weight")] + "weight" not in keep_fp8]
    if unkept and any(f.suffix != ".safetensors" for f in files):
        raise ModelFormatError(f"{flag}: {shown}: scaled fp8 tensors outside Linears are only read from "
                               ".safetensors files", hint="use the bf16 file")
    if unkept:
        from safetensors.torch import safe_open

        for f in files:
            if f.suffix != ".safetensors":
                continue
            with safe_open(str(f), framework="pt", device="cpu") as h:
                for key in h.keys():
                    if key.startswith(prefix) and key[len(prefix) :] in unkept:
                        scale_values[key[len(prefix) :]] = h.get_tensor(key).to(device=device, dtype=torch.float32)

    def stream_dtype(key: str, stored: torch.dtype) -> torch.dtype:
        # Each tensor is cast as it is read (streamed through one staging buffer: never a second copy of the
        # model in RAM); fp8 tensors and scales come as stored (`assign` handles them).
        k = key[len(prefix) :]
        if stored == fp8mod.FP8_DTYPE or k in keep_fp8 or k in scale_keys:
            return stored
        return torch.float32 if k.startswith("proj_out.") else dtype

    # ComfyUI-style files may bundle other components under other prefixes: only the DiT's keys are read.
    state = load_state_dict(files, device="cpu", keep=lambda key: key.startswith(prefix), dtype_for=stream_dtype,
                            transform=assign)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ModelFormatError(f"{flag}: {shown}: some model tensors were not loaded")
    model.split_attn = split_attn
    model.requires_grad_(False)
    model.eval()
    model.config_source = source
    model.source_files = files
    model.lora_report = lora_plan.report if lora_plan is not None else []
    model.fp8_report = report
    return model
