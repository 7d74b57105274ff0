"""`--memory auto`: choose fp8 / block swap / VAE chunking from free VRAM, RAM, the model and the request.

A pure planner (no torch, no devices): `plan_memory(...)` takes the numbers (free GPU memory, total RAM, the DiT's
sizes read from its header, the request's resolution / window / sections / batch, the run's dtype) and returns a
`MemoryPlan`: the settings and a one-line description. The engine injects the real numbers
(`framepack_cli.engine.generate.apply_memory_plan`); tests inject a table of GPUs.

The estimate (bytes, `i` = bytes per element of the run's dtype, `d` of the VAE's):

    usable GPU memory   (free - RESERVE) * SAFETY                     RESERVE 1 GiB (CUDA context, cuBLAS
                                                                      workspace), SAFETY 0.90 (fragmentation)
    DiT resident        non-block weights (proj_out float32)
                        + every block's bytes, minus the Linear weights of the swapped blocks
                        + per block list with swapped blocks, one block's Linear weights (the prefetch buffer)
    block bytes         plain: params * i; --fp8_scaled: the block Linear weights outside the AdaLN norms (the
                        fp8 targets) 1 byte each, their per-64 scales (out * in/64) at i, the rest at i;
                        --fp8 the same without scales
    activations         ACT_K * tokens * hidden * i * batch     ACT_K 20 = x, norm(x), q, k, v, attention out,
                                                                float32 RoPE copies of q and k (4), the 4x MLP
                                                                projection and its activation (8), the single
                                                                block's concat (5) - live at once in one block;
                                                                attention itself is memory-efficient (SDPA)
    tokens              (lh/2)(lw/2) * (noisy frames + 2 + 2/4 + 16/16 * 1/4)   + 729 SigLIP + 512 text
                        = grid * (window + 2.75) + 1241 (one-frame: grid * (1 + clean images + 0.75) + 1241)
    VAE decode          VAE weights + frames * h' * w' * 128 channels * d * (5 plain, 3 with --vae_chunk_size)
                        + the decoded chunk 3 * frames * H * W * (d + 4)      h' x w' = H x W, or one tile
                        with tiling; frames = 4 * (latents of the decode chunk - 1) + 1 (2W + 1 latents with
                        --decode stream / blend, all with bulk); stream adds the mid-block keys / values of
                        every latent frame, 2 * latents * (H/8) * (W/8) * 512 * d
    host RAM            with blocks swapped, the model is loaded in RAM and each swapped block's Linear weights
                        move into one host buffer of its own (`dit_host_peak`): DiT bytes - swapped + host
                        copies + one block (the copy in progress) + models parked in RAM + RAM_RESERVE 4 GiB
                        <= total RAM. With --use_pinned_memory_for_block_swap each buffer comes from PyTorch's
                        pinned-memory allocator, which rounds every request up to a power of two
                        (`pinned_size`): the real bf16 dual block's 680 MB take 1 GiB, a single block's 283 MB
                        512 MiB (at --blocks_to_swap 38: 41 GiB of pinned RAM for 24 GiB of weights)

Choice, in order (the first that fits wins, so more VRAM never gives more swapping or fp8):

1. the run's dtype, swapping the fewest blocks, while at most half of the block weights are swapped
   (`BF16_SWAP_SHARE`; beyond that every step moves more than half the model over PCIe);
2. `--fp8_scaled` (plain `--fp8` is never chosen: the same memory, worse quality), the fewest swapped blocks;
3. nothing fits: `fits=False`; `MemoryPlan.error()` is the one-line exit-3 error with what would help.

The VAE is planned separately (it runs after the DiT is released): none, then `--vae_chunk_size 32` (exact), then
spatial tiles of 256, 128, 64 px (slightly lower quality). Settings the user gave are kept as given and only the
others are chosen (`Fixed`). `--blocks_to_swap N` is split over the two block lists as the reference does:
N // 2 dual-stream blocks and (N - N // 2) * 2 + 1 single-stream ones (N = 38: 19 + 39).

Everything here is an estimate on the conservative side; it was not measured on a GPU in this repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from framepack_cli.errors import ResourceError
from framepack_cli.options.base import DEFAULT_DECODE

KiB, MiB, GiB = 2**10, 2**20, 2**30
RESERVE = 1 * GiB
SAFETY = 0.90
RAM_RESERVE = 4 * GiB
ACT_K = 20
CONTEXT_TOKENS = 729 + 512
BF16_SWAP_SHARE = 0.5
MAX_SWAP = 38
VAE_CHANNELS = 128  # the decoder's last up block runs at full resolution with 128 channels
VAE_MID_CHANNELS = 512  # the decoder's mid block (its attention's keys / values are kept by --decode stream)
VAE_K_PLAIN, VAE_K_CHUNKED = 5, 3
VAE_LADDER: tuple[tuple[int | None, int | None], ...] = ((None, None), (32, None), (32, 256), (32, 128), (32, 64))
FP8_BLOCK = 64  # --fp8_scaled: one scale per 64 input channels

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
_STORED = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
           "F8_E4M3": 1, "F8_E5M2": 1}


def fmt(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


# --------------------------------------------------------------------------------------------------------
# the model's sizes, from its header
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSize:
    """Parameter counts of one transformer block."""

    params: int  # everything in the block
    linear: int  # the 2-D Linear weights (what block swap moves)
    fp8: int  # the fp8 targets: Linear weights outside the AdaLN norms
    scales: int  # --fp8_scaled scales of those targets (out * in / 64 each)

    def nbytes(self, itemsize: int, fp8: str | None) -> int:
        if fp8 is None:
            return self.params * itemsize
        return self.fp8 + (self.params - self.fp8) * itemsize + (self.scales * itemsize if fp8 == "fp8_scaled" else 0)

    def linear_bytes(self, itemsize: int, fp8: str | None) -> int:
        if fp8 is None:
            return self.linear * itemsize
        return self.fp8 + (self.linear - self.fp8) * itemsize + (self.scales * itemsize if fp8 == "fp8_scaled" else 0)


@dataclass(frozen=True)
class DitSize:
    """What the planner needs of a DiT: block counts and sizes, the rest, the width."""

    double: int
    single: int
    double_block: BlockSize
    single_block: BlockSize
    other: int  # parameters outside the blocks (proj_out excluded)
    proj_out: int  # float32 whatever the dtype
    hidden: int

    @property
    def params(self) -> int:
        return (self.double * self.double_block.params + self.single * self.single_block.params + self.other
                + self.proj_out)

    def nbytes(self, itemsize: int, fp8: str | None = None) -> int:
        return (self.double * self.double_block.nbytes(itemsize, fp8) + self.single * self.single_block.nbytes(
            itemsize, fp8) + self.other * itemsize + self.proj_out * 4)


_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.*)$")


def dit_size(infos: dict, prefix: str = "") -> DitSize:
    """`DitSize` from header infos (`{key: TensorInfo}`); block 0 of each list stands for its list."""
    blocks: dict[str, dict[int, list[int]]] = {"transformer_blocks": {}, "single_transformer_blocks": {}}
    other = proj_out = 0
    hidden = 3072
    for key, info in infos.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        if k == "x_embedder.proj.weight":
            hidden = info.shape[0]
        m = _BLOCK.match(k)
        if m is None:
            if k.startswith("proj_out."):
                proj_out += info.numel
            else:
                other += info.numel
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        acc = blocks[kind].setdefault(idx, [0, 0, 0, 0])
        acc[0] += info.numel
        if rest.endswith(".weight") and len(info.shape) == 2:
            acc[1] += info.numel
            if "norm" not in rest:
                out, inp = info.shape
                acc[2] += info.numel
                acc[3] += out * (inp // FP8_BLOCK if inp % FP8_BLOCK == 0 else 1)

    def size(kind: str) -> BlockSize:
        first = blocks[kind].get(0, [0, 0, 0, 0])
        return BlockSize(*first)

    return DitSize(len(blocks["transformer_blocks"]), len(blocks["single_transformer_blocks"]),
                   size("transformer_blocks"), size("single_transformer_blocks"), other, proj_out, hidden)


def vae_bytes(infos: dict, prefix: str, itemsize: int) -> int:
    """The VAE's weights in its run dtype (floating tensors at `itemsize`)."""
    return sum(i.numel * (itemsize if i.dtype.startswith(("F", "BF")) else _STORED.get(i.dtype, 8))
               for k, i in infos.items() if k.startswith(prefix))


# --------------------------------------------------------------------------------------------------------
# the request and the plan
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What one run asks for (the largest job when several share the loaded DiT)."""

    height: int
    width: int
    window: int = 9
    sections: int = 1
    one_frame: bool = False
    clean_images: int = 1  # one-frame: clean latents beside the noisy one (control images)
    batch: int = 1  # samples per DiT call
    bulk_decode: bool = False
    decode: str | None = None  # --decode (stream / blend / bulk); None: the default (bulk with bulk_decode)

    @property
    def tokens(self) -> int:
        grid = -(-self.height // 16) * -(-self.width // 16)
        frames = (1 + self.clean_images + 0.75) if self.one_frame else (self.window + 2.75)
        return int(grid * frames) + CONTEXT_TOKENS

    @property
    def bulk(self) -> bool:
        """The whole latent is decoded in one pass (`--bulk_decode` / `--decode bulk`)."""
        return self.bulk_decode or self.decode == "bulk"

    @property
    def stream_kv_elements(self) -> int:
        """Elements the streamed decode keeps across chunks: the mid-block attention's keys and values of every
        latent frame (`VAE_MID_CHANNELS` wide, at latent resolution); 0 for the other decodes."""
        mode = "bulk" if self.bulk else self.decode or DEFAULT_DECODE
        if self.one_frame or mode != "stream":
            return 0
        total = self.sections * self.window + 1
        return 2 * total * -(-self.height // 8) * -(-self.width // 8) * VAE_MID_CHANNELS

    @property
    def decode_frames(self) -> int:
        total = 1 if self.one_frame else self.sections * self.window + 1
        # stream and blend decode at most 2W + 1 latents at a time (plan.sections.stream_chunks / decode_chunks)
        chunk = 1 if self.one_frame else total if self.bulk else min(2 * self.window + 1, total)
        return 4 * (chunk - 1) + 1


@dataclass(frozen=True)
class Fixed:
    """Settings the user gave (kept as they are); None = auto chooses."""

    fp8: str | None | bool = False  # False = not given; None = given as off; "fp8" / "fp8_scaled"
    blocks_to_swap: int | None = None
    vae: tuple[int | None, int | None] | None = None  # (chunk, tile) as given


def swap_split(n: int, double: int, single: int) -> tuple[int, int]:
    """(dual-stream, single-stream) blocks swapped for `--blocks_to_swap n`, the reference's split, capped so
    that one block of each list stays on the GPU."""
    if n <= 0:
        return 0, 0
    d, s = n // 2, (n - n // 2) * 2 + 1
    return min(d, max(double - 1, 0)), min(s, max(single - 1, 0))


def dit_resident(size: DitSize, itemsize: int, fp8: str | None, swap: int) -> tuple[int, int]:
    """(DiT bytes on the GPU, Linear-weight bytes swapped out to RAM) for one fp8 / swap setting."""
    d, s = swap_split(swap, size.double, size.single)
    db, sb = size.double_block, size.single_block
    swapped = d * db.linear_bytes(itemsize, fp8) + s * sb.linear_bytes(itemsize, fp8)
    prefetch = (db.linear_bytes(itemsize, fp8) if d else 0) + (sb.linear_bytes(itemsize, fp8) if s else 0)
    return size.nbytes(itemsize, fp8) - swapped + prefetch, swapped


def pinned_size(nbytes: int) -> int:
    """Bytes PyTorch's pinned (page-locked) host allocator takes for a request of `nbytes`: the next power of
    two (its caching host allocator rounds every request up, `CachingHostAllocator`)."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


def host_copies(size: DitSize, itemsize: int, fp8: str | None, swap: int, pinned: bool = False) -> int:
    """RAM the swapped blocks' host copies take while the DiT runs: one buffer per swapped block holding its
    Linear weights (`pinned`: each rounded up by `pinned_size`)."""
    d, s = swap_split(swap, size.double, size.single)
    db, sb = size.double_block.linear_bytes(itemsize, fp8), size.single_block.linear_bytes(itemsize, fp8)
    if pinned:
        db, sb = pinned_size(db), pinned_size(sb)
    return d * db + s * sb


def dit_host_peak(size: DitSize, itemsize: int, fp8: str | None, swap: int, pinned: bool = False) -> int:
    """Peak RAM of loading a DiT with `swap` blocks swapped: the whole model is loaded into RAM, then block by
    block the swapped Linear weights are copied into their host buffers (the loaded ones freed after each
    block) before the rest moves to the GPU: model - swapped + host copies + the last block's weights (its
    loaded copy and its buffer exist together). 0 without swap (the DiT streams to the GPU)."""
    if swap <= 0:
        return 0
    d, s = swap_split(swap, size.double, size.single)
    _, swapped = dit_resident(size, itemsize, fp8, swap)
    last = (size.single_block.linear_bytes(itemsize, fp8) if s else size.double_block.linear_bytes(itemsize, fp8)
            if d else 0)
    return size.nbytes(itemsize, fp8) - swapped + host_copies(size, itemsize, fp8, swap, pinned) + last


def activation_bytes(size: DitSize, req: Request, itemsize: int) -> int:
    return ACT_K * req.tokens * size.hidden * itemsize * req.batch


def dit_need(size: DitSize, req: Request, itemsize: int, fp8: str | None, swap: int) -> tuple[int, int, int]:
    """(GPU bytes while sampling, bytes swapped to RAM, activation bytes) for one setting."""
    resident, swapped = dit_resident(size, itemsize, fp8, swap)
    act = activation_bytes(size, req, itemsize)
    return resident + act, swapped, act


def vae_need(vae: int, req: Request, vae_itemsize: int, chunk: int | None, tile: int | None) -> int:
    h, w = req.height, req.width
    th, tw = (min(h, tile), min(w, tile)) if tile else (h, w)
    k = VAE_K_CHUNKED if chunk else VAE_K_PLAIN
    f = req.decode_frames
    return (vae + f * th * tw * VAE_CHANNELS * vae_itemsize * k + 3 * f * h * w * (vae_itemsize + 4)
            + req.stream_kv_elements * vae_itemsize)


def usable(free: int) -> int:
    return int(max(free - RESERVE, 0) * SAFETY)


def stream_chunk_latents(total: int, window: int, height: int, width: int, vae_itemsize: int, free: int | None,
                         *, chunk: int | None = None, tile: int | None = None) -> int:
    """Latents of the first `--decode stream` chunk: the largest that the free GPU memory takes (fewer chunks, so
    fewer GroupNorm seams; the whole latent decodes as bulk when it fits), never fewer than the blended decode's
    `2W + 1`. `free`: bytes free on the GPU with the VAE loaded (None: not a GPU, the default chunk).

    Per pixel frame a chunk needs `h' * w' * 128 * d * k + 3 * H * W * (d + 4)` (`vae_need`); the keys / values the
    stream keeps are counted for the whole latent.
    """
    base = min(2 * window + 1, total)
    if free is None or total <= base:
        return base
    th, tw = (min(height, tile), min(width, tile)) if tile else (height, width)
    k = VAE_K_CHUNKED if chunk else VAE_K_PLAIN
    per_frame = th * tw * VAE_CHANNELS * vae_itemsize * k + 3 * height * width * (vae_itemsize + 4)
    kv = 2 * total * -(-height // 8) * -(-width // 8) * VAE_MID_CHANNELS * vae_itemsize
    frames = (usable(free) - kv) // per_frame
    return max(base, min(total, (frames - 1) // 4 + 1))


@dataclass(frozen=True)
class MemoryPlan:
    """The chosen settings, the estimates behind them and the line that says so."""

    fp8: str | None  # None, "fp8" or "fp8_scaled"
    blocks_to_swap: int
    vae_chunk_size: int | None
    vae_tile: int | None
    dit_bytes: int
    vae_bytes: int
    free: int
    fits: bool
    dtype: str = "bfloat16"
    request: Request | None = None
    given: tuple[str, ...] = ()  # flags the user fixed
    smaller: tuple[int, int] | None = None  # a --video_size that would fit with everything on
    notes: tuple[str, ...] = field(default_factory=tuple)

    def settings(self) -> str:
        parts = [{"fp8_scaled": "--fp8_scaled", "fp8": "--fp8"}.get(self.fp8 or "", f"{self.dtype} DiT")]
        if self.blocks_to_swap:
            parts.append(f"--blocks_to_swap {self.blocks_to_swap}")
        if self.vae_chunk_size:
            parts.append(f"--vae_chunk_size {self.vae_chunk_size}")
        if self.vae_tile:
            parts.append(f"--vae_spatial_tile_sample_min_size {self.vae_tile}")
        return " ".join(parts)

    @property
    def line(self) -> str:
        """`Memory: auto chose --fp8_scaled --blocks_to_swap 6 --vae_chunk_size 32 (sampling about 11.2 GiB, ...)`."""
        given = f"; kept as given: {', '.join(self.given)}" if self.given else ""
        return (f"Memory: auto chose {self.settings()} (estimated: sampling {fmt(self.dit_bytes)}, VAE decode "
                f"{fmt(self.vae_bytes)}, of {fmt(self.free)} free on the GPU{given})")

    def updates(self) -> dict:
        """The options fields this plan sets."""
        return {"fp8": self.fp8 == "fp8", "fp8_scaled": self.fp8 == "fp8_scaled",
                "blocks_to_swap": self.blocks_to_swap, "vae_chunk_size": self.vae_chunk_size,
                "vae_spatial_tile_sample_min_size": self.vae_tile}

    def error(self, device: str = "cuda") -> ResourceError:
        """The one line (exit 3) for a request that does not fit even with everything on."""
        req = self.request
        size = f" at {req.height}x{req.width}" if req else ""
        what = "sampling" if self.dit_bytes > usable(self.free) else "VAE decode"
        need = self.dit_bytes if what == "sampling" else self.vae_bytes
        helps = []
        if self.smaller:
            helps.append(f"--video_size {self.smaller[0]} {self.smaller[1]} would fit")
        else:
            helps.append("a smaller --video_size")
        if req and not req.one_frame and what == "sampling":
            helps.append("a smaller --latent_window_size")
        if req and req.bulk and what == "VAE decode":
            helps.insert(0, "--decode stream instead of --bulk_decode / --decode bulk")
        helps.append("free GPU memory (other processes) or a larger GPU")
        return ResourceError(
            f"not enough GPU memory{size}: even with {self.settings()}, {what} needs about {fmt(need)} "
            f"(estimate, incl. {fmt(RESERVE)} reserve and {round((1 - SAFETY) * 100)}% margin), {device} has "
            f"{fmt(self.free)} free", hint=", ".join(helps))


def _fits_ram(size: DitSize, itemsize: int, fp8: str | None, swap: int, total_ram: int | None, host: int,
              pinned: bool = False) -> bool:
    if total_ram is None or not swap:
        return True
    return dit_host_peak(size, itemsize, fp8, swap, pinned) + host + RAM_RESERVE <= total_ram


def _choose_dit(size, req, itemsize, free, total_ram, host, fixed: Fixed, can_fp8: bool, max_swap: int,
                pinned: bool = False):
    """(fp8, swap, need) of the first setting that fits, or None."""
    budget = usable(free)
    block_weights = size.double * size.double_block.linear + size.single * size.single_block.linear
    if fixed.fp8 is not False:
        ladder = [fixed.fp8]
    else:
        ladder = [None] + (["fp8_scaled"] if can_fp8 else [])
    swaps = [fixed.blocks_to_swap] if fixed.blocks_to_swap is not None else list(range(0, max_swap + 1))
    for fp8 in ladder:
        for n in swaps:
            need, swapped, _ = dit_need(size, req, itemsize, fp8, n)
            if (fp8 is None and fixed.fp8 is False and fixed.blocks_to_swap is None and can_fp8
                    and swapped > BF16_SWAP_SHARE * block_weights * itemsize):
                break  # rule 1: past half the block weights, fp8_scaled is the better trade
            if need <= budget and _fits_ram(size, itemsize, fp8, n, total_ram, host, pinned):
                return fp8, n, need
    return None


def _choose_vae(vae, req, vae_itemsize, free, fixed: Fixed):
    ladder = [fixed.vae] if fixed.vae is not None else list(VAE_LADDER)
    for chunk, tile in ladder:
        need = vae_need(vae, req, vae_itemsize, chunk, tile)
        if need <= usable(free):
            return chunk, tile, need
    return None


def plan_memory(size: DitSize, req: Request, *, free_vram: int, total_ram: int | None = None, dtype: str = "bfloat16",
                vae: int = 0, vae_dtype: str = "float16", host_bytes: int = 0, fixed: Fixed | None = None,
                can_fp8: bool = True, max_swap: int = MAX_SWAP, given: tuple[str, ...] = (),
                pinned: bool = False) -> MemoryPlan:
    """Choose fp8 / block swap / VAE settings that fit (see the module docstring for the estimate and order).

    Args:
        size: the DiT (`dit_size`); req: the request; free_vram: free GPU bytes now.
        total_ram: CPU RAM in bytes (None: not checked); host_bytes: models parked in RAM meanwhile.
        dtype / vae_dtype: the run's DiT and VAE dtypes; vae: the VAE's weight bytes in its dtype.
        fixed: settings the user gave; can_fp8 / max_swap: what this build can do (0 = no block swap).
        given: the user's flags, named in the line.
        pinned: `--use_pinned_memory_for_block_swap` (the swapped blocks' host copies in pinned buffers).
    """
    fixed = fixed or Fixed()
    itemsize, vae_itemsize = _ITEMSIZE[dtype], _ITEMSIZE[vae_dtype]
    dit = _choose_dit(size, req, itemsize, free_vram, total_ram, host_bytes, fixed, can_fp8, max_swap, pinned)
    dec = _choose_vae(vae, req, vae_itemsize, free_vram, fixed)
    if dit is not None and dec is not None:
        (fp8, swap, need), (chunk, tile, vneed) = dit, dec
        return MemoryPlan(fp8, swap, chunk, tile, need, vneed, free_vram, True, dtype, req, given)
    # Nothing fits: report "everything on" (the given settings where fixed, else the most saving ones).
    fp8 = fixed.fp8 if fixed.fp8 is not False else ("fp8_scaled" if can_fp8 else None)
    swap = fixed.blocks_to_swap if fixed.blocks_to_swap is not None else max_swap
    chunk, tile = fixed.vae if fixed.vae is not None else VAE_LADDER[-1]
    need = dit_need(size, req, itemsize, fp8, swap)[0]
    vneed = vae_need(vae, req, vae_itemsize, chunk, tile)
    smaller = None
    h, w = req.height, req.width
    for scale in [x / 20 for x in range(19, 3, -1)]:
        sh, sw = max(16, int(h * scale) // 16 * 16), max(16, int(w * scale) // 16 * 16)
        small = Request(sh, sw, req.window, req.sections, req.one_frame, req.clean_images, req.batch,
                        req.bulk_decode, req.decode)
        if (_choose_dit(size, small, itemsize, free_vram, total_ram, host_bytes, fixed, can_fp8, max_swap, pinned)
                and _choose_vae(vae, small, vae_itemsize, free_vram, fixed)):
            smaller = (sh, sw)
            break
    return MemoryPlan(fp8, swap, chunk, tile, need, vneed, free_vram, False, dtype, req, given, smaller)
