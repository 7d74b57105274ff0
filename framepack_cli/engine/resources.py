"""Memory and size checks before anything loads; out-of-memory failures as one line with exit 3.

Up-front checks (`check_request`), from the file headers and the settings, in milliseconds:

1. Sanity bounds (`BOUNDS`, exit 2, `--force` skips them): more sections, a larger window or video size, or
   more steps than any real run uses are refused as likely typos (`--video_seconds 100000` planned 83 333
   sections and was killed by the kernel hours later, without a message).
2. Memory (exit 3): the models load one phase at a time and each is released (or parked in CPU RAM) before
   the next loads, so the GPU must hold the largest single phase, not the sum:

       VAE encode      VAE weights + the input image and the first convolution's output
       image encoder   SigLIP weights
       text encoders   LLaMA (fp8 linears with --fp8_llm) + CLIP-L weights
       sampling        DiT weights (proj_out in float32) + activations of one section
       VAE decode      VAE weights + the decoded pixels of one decode chunk (all frames with --decode bulk)

   Weights are the tensors' element counts from the headers times the size of the dtype each model runs in
   (`framepack_cli.engine.precision`), not the file's dtype. Activations are *lower bounds* (the hidden
   states and the 4x-wide MLP activation of one block for every token of a section; the decoded pixels), so
   a refused request cannot fit, and a GPU refusal is never skipped, not even by `--force`. CPU RAM must
   also hold what stays there during each phase: the VAE (parked during sampling), the models that
   `--interactive` keeps, the history latents of all sections and the decoded chunk in float32. On the CPU
   every phase is in RAM. With `--blocks_to_swap` on a GPU the DiT is loaded into RAM first (a "loading the
   DiT" phase: the model, its swapped blocks moving into their host buffers, which pinned memory rounds up to a
   power of two: `memory_plan.dit_host_peak`), and the host copies stay in RAM while sampling. With `--force`
   the RAM need may use free swap too (RAM + swap is what the machine
   has; past that the kernel kills the run without a message, so that is refused even with `--force`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.options.base import decode_mode
from framepack_cli.options.generate import MAX_SECTIONS, MAX_SIDE, MAX_STEPS, MAX_WINDOW
from framepack_cli.plan.sections import HISTORY_LEN, LATENT_CHANNELS

KiB, MiB, GiB = 2**10, 2**20, 2**30

# Sanity bounds (refused without --force; declared with the option's help). Real runs: the released models use
# a window of 9 (33 frames, about 1.1 s per section at 30 fps), 25 steps and about 640x640; the reference's demo
# caps videos at 120 s (about 110 sections). 1000 sections are about 18 minutes of video at the default window.
MARGIN = 512 * MiB  # CUDA context / allocator slack; also kept free in RAM

CONTEXT_FRAMES = HISTORY_LEN  # history frames of a section (1x, 2x, 4x)
BULK_FIX = "--decode stream instead of --bulk_decode / --decode bulk (the same frames, decoded a chunk at a time)"
ACT_FACTOR = 5  # per token: the block's hidden state plus its 4x-wide MLP activation (a lower bound)


def fmt_bytes(n: float) -> str:
    """`1.5 GiB`, `300 MiB`, `12 KiB`, `100 bytes`."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    if n >= KiB:
        return f"{n / KiB:.0f} KiB"
    return f"{int(n)} bytes"


# --------------------------------------------------------------------------------------------------------
# free memory
# --------------------------------------------------------------------------------------------------------


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def ram() -> tuple[int | None, int | None]:
    """(available, total) CPU RAM in bytes: /proc/meminfo's MemAvailable, else os.sysconf; None when unknown."""
    avail, total = _meminfo("MemAvailable"), _meminfo("MemTotal")
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        if avail is None:
            avail = os.sysconf("SC_AVPHYS_PAGES") * page
        if total is None:
            total = os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        pass
    return avail, total


def swap_free() -> int:
    """Free swap in bytes (0 when unknown)."""
    return _meminfo("SwapFree") or 0


def device_memory(device) -> tuple[int | None, int | None]:
    """(free, total) bytes of `device`: torch.cuda.mem_get_info on CUDA, `ram()` elsewhere."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        try:
            free, total = torch.cuda.mem_get_info(device)
            return int(free), int(total)
        except (RuntimeError, AssertionError):
            return None, None
    return ram()


# --------------------------------------------------------------------------------------------------------
# out of memory while running
# --------------------------------------------------------------------------------------------------------

_CPU_MARKERS = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")
_UNITS = {"bytes": 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": 2**40, "KB": KiB, "MB": MiB, "GB": GiB}
_TRIED = re.compile(r"[Tt]ried to allocate ([\d.]+) ?(bytes|[KMGT]i?B)")
_CAPACITY = re.compile(r"total capacity of ([\d.]+) ([KMGT]iB) of which ([\d.]+) ([KMGT]iB) is free")
_CAPACITY_OLD = re.compile(r"([\d.]+) ([KMGT]iB) total capacity;.*?([\d.]+) ([KMGT]iB) free")


def is_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, a MemoryError, or torch's CPU allocator failing."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(m in text for m in _CPU_MARKERS) or "CUDA out of memory" in text
    return False


def _num(value: str, unit: str) -> int:
    return int(float(value) * _UNITS[unit])


def parse_oom(text: str) -> tuple[int | None, int | None, int | None]:
    """(requested, free, total) bytes from a torch out-of-memory message; None for what it does not say."""
    requested = free = total = None
    m = _TRIED.search(text)
    if m:
        requested = _num(*m.groups())
    m = _CAPACITY.search(text)
    if m:
        total, free = _num(m[1], m[2]), _num(m[3], m[4])
    else:
        m = _CAPACITY_OLD.search(text)
        if m:
            total, free = _num(m[1], m[2]), _num(m[3], m[4])
    return requested, free, total


def oom_error(exc: BaseException, phase: str, device, hint: str) -> ResourceError:
    """The one-line error for an out-of-memory failure during `phase` ("loading the DiT", "VAE decode")."""
    requested, free, total = parse_oom(str(exc))
    if free is None:
        free, total = device_memory(device)
    where = "GPU" if getattr(device, "type", "") == "cuda" else "RAM"
    numbers = []
    if requested is not None:
        numbers.append(f"tried to allocate {fmt_bytes(requested)}")
    if free is not None:
        numbers.append(f"{fmt_bytes(free)} {where} free" + (f" of {fmt_bytes(total)}" if total else ""))
    detail = f": {', '.join(numbers)}" if numbers else ""
    return ResourceError(f"out of memory {phase} on {device}{detail}", hint=hint)


@contextmanager
def oom_guard(phase: str, device, hint: str) -> Iterator[None]:
    """Turn an out-of-memory failure inside the block into `oom_error(...)` (exit 3); other errors pass."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, FramepackError) or not is_oom(e):
            raise
        err = oom_error(e, phase, device, hint)
        del e
        from framepack_cli.engine.context import free_memory

        free_memory(device)
        raise err from None


def advice(phase: str, device, opts=None) -> str:
    """The options that would help in `phase` (only options that are built; the rest said to be coming).

    phase: one of "vae", "image_encoder", "text", "dit", "sampling", "decode".
    """
    cuda = getattr(device, "type", "") == "cuda"
    free = "free GPU memory (other processes) or use a larger GPU" if cuda else "free RAM (close other programs)"
    fp8 = opts is not None and (getattr(opts, "fp8_scaled", False) or getattr(opts, "fp8", False))
    coming = ("" if fp8 else "; --fp8_scaled would lower it") + "; --blocks_to_swap 20 (up to 38) lowers it"
    vae = "--vae_chunk_size 32 (or 16, 8), --vae_spatial_tile_sample_min_size 128 (or 64), a smaller --video_size"
    if phase == "text":
        return free if opts is not None and getattr(opts, "fp8_llm", False) else f"--fp8_llm (LLaMA in fp8), or {free}"
    if phase == "dit":
        return free + (coming if cuda else "")
    if phase == "sampling":
        return ("a smaller --video_size or --latent_window_size, or " + free + (coming if cuda else ""))
    if phase == "vae":
        return f"{vae}, or {free}"
    if phase == "decode":
        bulk = opts is not None and decode_mode(opts) == "bulk"
        return (BULK_FIX + ", " if bulk else "") + f"{vae}, or {free}"
    return free


# --------------------------------------------------------------------------------------------------------
# sanity bounds
# --------------------------------------------------------------------------------------------------------


def check_bounds(opts, sections: int, *, force: bool = False) -> None:
    """Refuse runaway requests (exit 2) unless `force`; all problems at once, one line each.

    Args:
        sections: the planned section count (1 for one-frame jobs).
    """
    if force:
        return
    errs = []
    one_frame = getattr(opts, "one_frame_inference", None) is not None
    if not one_frame and sections > MAX_SECTIONS:
        flag = (f"--video_sections {opts.video_sections}" if opts.video_sections is not None
                else f"--video_seconds {opts.video_seconds:g}")
        errs.append(f"{flag}: {sections} sections planned, more than {MAX_SECTIONS}; refused as a likely mistake "
                    "(pass --force to run it anyway)")
    if opts.latent_window_size > MAX_WINDOW:
        errs.append(f"--latent_window_size {opts.latent_window_size}: more than {MAX_WINDOW} latent frames per "
                    "section (the released models use 9); refused as a likely mistake (pass --force to run it "
                    "anyway)")
    h, w = opts.video_size
    if max(h, w) > MAX_SIDE:
        errs.append(f"--video_size {h} {w}: a side above {MAX_SIDE} px (FramePack is trained at about 640x640); "
                    "refused as a likely mistake (pass --force to run it anyway)")
    if opts.infer_steps > MAX_STEPS:
        errs.append(f"--infer_steps {opts.infer_steps}: more than {MAX_STEPS} steps per section (25 is the "
                    "default); refused as a likely mistake (pass --force to run it anyway)")
    if errs:
        raise FramepackError("\n".join(errs))


# --------------------------------------------------------------------------------------------------------
# memory needs
# --------------------------------------------------------------------------------------------------------

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _itemsize(dtype) -> int:
    return _BYTES[str(dtype).removeprefix("torch.")]


def weight_bytes(infos: dict, prefix: str, itemsize: int, *, fp32=lambda k: False, fp8=lambda k: False) -> int:
    """Bytes of the tensors under `prefix` once loaded: floating tensors at `itemsize` (4 where `fp32(key)`,
    1 where `fp8(key)`), integer tensors at their stored size."""
    stored = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "F8_E4M3": 1, "F8_E5M2": 1}
    total = 0
    for key, info in infos.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        if info.dtype.startswith("F8_"):
            size = 1  # a pre-quantised fp8 tensor stays fp8 (the few outside Linears are upcast: negligible)
        elif info.dtype.startswith(("F", "BF")):
            size = 4 if fp32(k) else 1 if fp8(k) else itemsize
        else:
            size = stored.get(info.dtype, 8)
        total += info.numel * size
    return total


@dataclass(frozen=True)
class Sizes:
    """What the models of a run take once loaded, and the DiT's width."""

    weights: dict[str, int]  # "dit", "vae", "text_encoder1", "text_encoder2", "image_encoder" -> bytes
    hidden: int = 3072
    files: dict[str, str] | None = None  # kind -> file shown in messages
    dit: object = None  # memory_plan.DitSize: the DiT's blocks, for the fp8 / block swap weights on the GPU
    fp8: bool = False  # the DiT's block Linears are fp8 (--fp8 / --fp8_scaled)


def model_sizes(found: dict, precision, *, fp8_llm: bool = False, fp8_dit: bool = False,
                blocks_to_swap: int = 0) -> Sizes:
    """Loaded sizes from `preflight.check_models`' headers (`{kind: (path, infos, prefix)}`); `fp8_dit`:
    `--fp8` / `--fp8_scaled` (the block Linears at 1 byte plus, for the scales, 1/64 of their size);
    `blocks_to_swap` (on a GPU): the DiT's device size leaves out what block swap keeps in CPU memory."""
    dtype_of = {"dit": precision.dit, "vae": precision.vae, "text_encoder1": precision.text_encoder,
                "text_encoder2": precision.text_encoder, "image_encoder": precision.image_encoder}
    from framepack_cli.engine.memory_plan import dit_size

    weights, files = {}, {}
    hidden = 3072
    dit = None
    for kind, (path, infos, prefix) in found.items():
        kw = {}
        if kind == "dit":
            dit = dit_size(infos, prefix)
            kw["fp32"] = lambda k: k.startswith("proj_out.")
            emb = infos.get(prefix + "x_embedder.proj.weight")
            if emb is not None:
                hidden = emb.shape[0]
        if kind == "text_encoder1" and fp8_llm:
            kw["fp8"] = lambda k: k.startswith("layers.") and k.endswith("_proj.weight")
        if kind == "dit" and fp8_dit:
            from framepack_cli.models.detect import is_fp8_target

            kw["fp8"] = is_fp8_target
        weights[kind] = weight_bytes(infos, prefix, _itemsize(dtype_of[kind]), **kw)
        if kind == "dit" and fp8_dit:  # block scales: one value of the run's dtype per 64 weights
            weights[kind] += sum(info.numel for k, info in infos.items() if k.startswith(prefix)
                                 and is_fp8_target(k[len(prefix):])) * _itemsize(dtype_of[kind]) // 64
        if kind == "dit" and blocks_to_swap:
            from framepack_cli.models.block_swap import device_bytes_saved

            shapes = {k[len(prefix):]: tuple(v.shape) for k, v in infos.items() if k.startswith(prefix)}
            weights[kind] -= device_bytes_saved(shapes, blocks_to_swap, 1 if fp8_dit else _itemsize(dtype_of[kind]))
        files[kind] = os.path.basename(str(path).rstrip("/"))
    return Sizes(weights, hidden, files, dit, fp8=fp8_dit)


@dataclass(frozen=True)
class Phase:
    """One phase of a run: what must be on the device at once, and what CPU RAM holds meanwhile."""

    name: str  # "sampling", "VAE decode", ...
    models: tuple[str, ...]  # the model files the phase loads
    device_bytes: int
    detail: str  # how the device need is made up
    host_bytes: int = 0  # CPU-side buffers of the phase besides the device need (latents, decoded frames)
    host_detail: str = ""
    fix: str = ""  # the request settings that lower this phase's need


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def request_phases(opts, sizes: Sizes, precision, sections: int, *, cuda: bool) -> list[Phase]:
    """The phases of one job with their memory needs (see the module docstring).

    Args:
        sections: planned section count (ignored for one-frame jobs).
        cuda: the device is a GPU (decoded frames are then copied to the CPU in float32).
    """
    w = sizes.weights
    h, wd = opts.video_size
    lh, lw = h // 8, wd // 8
    one_frame = getattr(opts, "one_frame_inference", None) is not None
    window = opts.latent_window_size
    latent_frames = 1 if one_frame else window  # (4W - 3 pixel frames + 3) // 4
    grid = _ceil_div(lh, 2) * _ceil_div(lw, 2)
    tokens = (latent_frames + 1) * grid  # noisy frames + at least the start frame's clean tokens
    dit_act = ACT_FACTOR * tokens * sizes.hidden * _itemsize(precision.dit)
    total_latents = 1 if one_frame else sections * window + 1
    history = LATENT_CHANNELS * (total_latents + CONTEXT_FRAMES) * lh * lw * 4 * 2  # history + final copy
    if one_frame:
        chunk = 1
    elif decode_mode(opts) == "bulk":
        chunk = total_latents
    else:
        chunk = min(2 * window + 1, total_latents)
    frames = 4 * (chunk - 1) + 1
    pixels = 3 * frames * h * wd
    vae_b = _itemsize(precision.vae)
    decoded = pixels * vae_b
    host_frames = pixels * (1 + (4 if cuda or vae_b != 4 else 0))  # uint8 frames (+ the float32 copy)
    size = f"{h}x{wd}"
    dit_w, dit_how, swapped, load_peak = w.get("dit", 0), "", 0, 0
    fp8 = "fp8_scaled" if getattr(opts, "fp8_scaled", False) else "fp8" if getattr(opts, "fp8", False) else None
    swap = opts.blocks_to_swap if isinstance(getattr(opts, "blocks_to_swap", 0), int) else 0
    pinned = bool(getattr(opts, "use_pinned_memory_for_block_swap", False))
    if sizes.dit is not None and (fp8 or swap):
        from framepack_cli.engine.memory_plan import dit_host_peak, dit_resident, host_copies

        dit_w, _ = dit_resident(sizes.dit, _itemsize(precision.dit), fp8, swap)
        dit_how = " with " + " ".join(([f"--{fp8}"] if fp8 else []) + ([f"--blocks_to_swap {swap}"] if swap else []))
        if swap and cuda:  # the swapped blocks' host copies stay in RAM; the whole DiT passes through it
            swapped = host_copies(sizes.dit, _itemsize(precision.dit), fp8, swap, pinned)
            load_peak = dit_host_peak(sizes.dit, _itemsize(precision.dit), fp8, swap, pinned)
    te = w.get("text_encoder1", 0) + w.get("text_encoder2", 0)
    many = "" if one_frame else ", fewer sections"
    bulk = BULK_FIX + ", or " if decode_mode(opts) == "bulk" else ""
    what = "sections" if sections != 1 else "section"
    phases = [
        Phase("VAE encode", ("vae",), w.get("vae", 0) + 131 * h * wd * vae_b,
              f"weights {fmt_bytes(w.get('vae', 0))} + {fmt_bytes(131 * h * wd * vae_b)} for one image at {size}",
              fix="a smaller --video_size"),
        Phase("image encoder", ("image_encoder",), w.get("image_encoder", 0),
              f"weights {fmt_bytes(w.get('image_encoder', 0))}"),
        Phase("text encoders", ("text_encoder1", "text_encoder2"), te, f"weights {fmt_bytes(te)}",
              fix="" if opts.fp8_llm else "--fp8_llm (LLaMA in fp8)"),
        Phase("sampling", ("dit",), dit_w + dit_act,
              f"weights {fmt_bytes(dit_w)}{dit_how} + at least {fmt_bytes(dit_act)} activations for {tokens} "
              f"tokens per section at {size}", history + swapped,
              f"{fmt_bytes(history)} for the latents of {sections} {what}"
              + (f" + {fmt_bytes(swapped)} of swapped DiT blocks" + (" (pinned)" if pinned else "")
                 if swapped else ""),
              fix=f"a smaller --video_size or --latent_window_size{many}"),
        Phase("VAE decode", ("vae",), w.get("vae", 0) + decoded,
              f"weights {fmt_bytes(w.get('vae', 0))} + {fmt_bytes(decoded)} for {frames} decoded frames at {size}",
              history // 2 + host_frames, f"{fmt_bytes(history // 2 + host_frames)} for the latents and frames",
              fix=f"{bulk}a smaller --video_size or --latent_window_size"),
    ]
    if load_peak:  # with block swap the DiT loads into RAM before its resident part moves to the GPU
        phases.insert(3, Phase(
            "loading the DiT", ("dit",), dit_w, f"weights {fmt_bytes(dit_w)}{dit_how}", load_peak,
            f"{fmt_bytes(load_peak)} for the DiT loaded in RAM, its swapped blocks copied into "
            + ("pinned " if pinned else "") + "host buffers",
            fix=", ".join((["drop --use_pinned_memory_for_block_swap (pinned buffers are rounded up to a power "
                            "of two)"] if pinned else []) + ([] if fp8 else ["--fp8_scaled"]))))
    return [p for p in phases if all(m in w for m in p.models)]


_NAMES = {"vae": "VAE", "image_encoder": "image encoder", "text_encoder1": "LLaMA", "text_encoder2": "CLIP-L",
          "dit": "DiT"}


def _fix(phase: Phase, device, cuda: bool, *, ram: bool, fp8: bool = False) -> str:
    free = "free RAM (close other programs)" if ram else "free GPU memory (other processes) or use a larger GPU"
    coming = (("" if fp8 else "; --fp8_scaled would lower it") + "; --blocks_to_swap 20 (up to 38) lowers it"
              if cuda and not ram and "dit" in phase.models else "")
    return (f"{phase.fix}, or {free}" if phase.fix else free) + coming


def check_fit(phases: list[Phase], sizes: Sizes, device, *, device_free: int | None, ram_free: int | None,
              swap: int = 0, force: bool = False, resident: tuple[str, ...] = ("vae",)) -> None:
    """Refuse (exit 3) when a phase cannot fit: on CUDA the device memory (`force` never skips it), and CPU RAM
    (with `force`, RAM plus free swap). `device_free` / `ram_free` / `swap` are injected numbers (None = unknown,
    not checked).

    Args:
        resident: models that stay in CPU RAM across phases (the parked VAE, the models --interactive keeps).

    Raises:
        ResourceError: one line: the phase, what it needs and how that is made up, what is free, what helps.
    """
    cuda = getattr(device, "type", "") == "cuda"
    for p in phases:
        parked = sum(sizes.weights.get(m, 0) for m in resident if m not in p.models)
        files = " + ".join(f"{_NAMES[m]} {(sizes.files or {}).get(m, '')}".strip() for m in p.models)
        what = f"{p.name} ({files})"
        if cuda:
            need = p.device_bytes + MARGIN
            if device_free is not None and need > device_free:
                raise ResourceError(
                    f"not enough GPU memory for {what}: needs about {fmt_bytes(need)} ({p.detail}, + "
                    f"{fmt_bytes(MARGIN)} margin), {device} has {fmt_bytes(device_free)} free",
                    hint=_fix(p, device, cuda, ram=False, fp8=sizes.fp8))
            ram_need, parts = p.host_bytes + parked, [p.host_detail] if p.host_detail else []
        else:
            ram_need = p.device_bytes + p.host_bytes + parked
            parts = [p.detail] + ([p.host_detail] if p.host_detail else [])
        if ram_free is None:
            continue
        if parked:
            parts.append(f"{fmt_bytes(parked)} of models kept in RAM")
        limit = ram_free + (swap if force else 0)
        if ram_need + MARGIN > limit:
            have = f"{fmt_bytes(ram_free)} available" + (f" + {fmt_bytes(swap)} swap" if force and swap else "")
            use_swap = ", or pass --force to use swap" if not force and ram_need + MARGIN <= ram_free + swap else ""
            raise ResourceError(
                f"not enough RAM for {what}: needs about {fmt_bytes(ram_need + MARGIN)} ({' + '.join(parts)}), "
                f"{have}", hint=_fix(p, device, cuda, ram=True) + use_swap)


@dataclass
class Budget:
    """What a run checks each job's request against (built once per run in `generate.run`)."""

    sizes: Sizes
    precision: object
    device: object
    resident: tuple[str, ...] = ("vae",)
    force: bool = False

    def check(self, opts, sections: int) -> None:
        """Bounds, then memory, for one job's options, against what is free now."""
        check_bounds(opts, sections, force=self.force)
        cuda = getattr(self.device, "type", "") == "cuda"
        device_free = device_memory(self.device)[0] if cuda else None
        phases = request_phases(opts, self.sizes, self.precision, sections, cuda=cuda)
        check_fit(phases, self.sizes, self.device, device_free=device_free, ram_free=ram()[0], swap=swap_free(),
                  force=self.force, resident=self.resident)
