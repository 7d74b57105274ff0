"""VAE decode time and fidelity of `--decode stream` / `blend` / `bulk`: time ratios against blend (today's default,
the reference's overlapping decode) and PSNR of each against the whole-sequence decode (bulk).

Run by hand (not in CI):  python bench/bench_decode.py [--quick] [--wide-only | --tiny-only]

Cases (each decoded by all three modes in the same process, best of `repeats` runs each):
* tiny golden: the golden VAE (32 channels) on the golden 3-section latent the tiny DiT generated
  (e2e/vanilla_sections, 28 latents at 48x64) and on a 10-section latent (91 latents) encoded by the same VAE
  from a smooth moving pattern;
* wide synthetic: the real HunyuanVideo decoder layout (4 blocks, 2 resnets each, mid attention, 2 time
  upsamplers) at larger width, random weights (seeded), never saved; its latents are encoded by its own encoder
  from the same kind of moving pattern, so they are what that decoder expects.

PSNR is over the final uint8 frames (what the writers receive): 10 log10(255^2 / MSE); `inf` = identical.
Time is the whole `decode_to` call into in-memory sinks (VAE, uint8 conversion, blending), VAE load excluded;
on a shared machine it is noisy, so each note also gives the decoder's work (pixel frames decoded) against blend's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
MODES = ("blend", "stream", "bulk")


class _Collect:
    def __init__(self) -> None:
        self.frames: list[torch.Tensor] = []

    def write(self, frames) -> None:
        self.frames.append(torch.as_tensor(frames))

    def video(self) -> torch.Tensor:
        return torch.cat(self.frames, dim=0)


def decode(vae, latent: torch.Tensor, window: int, mode: str) -> tuple[torch.Tensor, float]:
    """(uint8 frames [T, H, W, 3], seconds) of one decode of a CTHW latent."""
    from framepack_cli.engine.writing import decode_to

    sink = _Collect()
    t0 = time.perf_counter()
    decode_to([sink], lambda: vae, latent, window, mode=mode)
    return sink.video(), time.perf_counter() - t0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def moving_pattern(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth clip `[1, 3, frames, H, W]` in [-1, 1]: drifting sinusoids with a slowly changing colour."""
    g = torch.Generator().manual_seed(seed)
    fx, fy, ph = (torch.rand(3, 3, generator=g) * torch.tensor([[6.0], [6.0], [6.28]])).unbind(0)
    t = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1)
    chans = [torch.sin(fx[c] * (x + 0.01 * t) * 6.28 + fy[c] * y * 6.28 + ph[c] + 0.02 * t) for c in range(3)]
    return (0.8 * torch.stack(chans)).unsqueeze(0)


def encode_long(vae, sections: int, window: int, height: int, width: int) -> torch.Tensor:
    """A CTHW latent of `1 + sections * window` frames encoded by `vae` from `moving_pattern`, a section at a time
    (the encoder is causal, so each later piece starts with 4 overlapping frames and drops its first latent)."""
    from framepack_cli.models.vae import vae_encode

    frames = 4 * sections * window + 1
    clip = moving_pattern(frames, height, width)
    parts = [vae_encode(vae, clip[:, :, : 4 * window + 1])]
    for s in range(1, sections):
        a = 4 * s * window
        parts.append(vae_encode(vae, clip[:, :, a - 4 * window : a + 4 * window + 1])[:, :, window + 1:])
    return torch.cat(parts, dim=2)[0]


def wide_vae(channels: tuple[int, ...], layers: int, seed: int = 0):
    """The HunyuanVideo VAE architecture at `channels` width with seeded random weights (never saved)."""
    from diffusers import AutoencoderKLHunyuanVideo

    from framepack_cli.models.vae import HUNYUAN_VAE_SCALING_FACTOR, HunyuanVideoVAE, _use_frame_causal_attention

    torch.manual_seed(seed)
    n = len(channels)
    model = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=channels, layers_per_block=layers,
        down_block_types=("HunyuanVideoDownBlock3D",) * n, up_block_types=("HunyuanVideoUpBlock3D",) * n,
        norm_num_groups=32, act_fn="silu", mid_block_add_attention=True, scaling_factor=HUNYUAN_VAE_SCALING_FACTOR,
        spatial_compression_ratio=8, temporal_compression_ratio=4)
    model.eval().requires_grad_(False)
    model.use_framewise_encoding = model.use_framewise_decoding = False
    _use_frame_causal_attention(model)
    return HunyuanVideoVAE(model=model, scaling_factor=HUNYUAN_VAE_SCALING_FACTOR)


def vae_frames(mode: str, latents: int, window: int) -> int:
    """Pixel frames the VAE decoder produces in `mode` (its work, independent of the machine's load): overlapping
    chunks count twice in blend."""
    from framepack_cli.plan.sections import decode_chunks, stream_chunks

    if mode == "bulk":
        return 4 * (latents - 1) + 1
    chunks = decode_chunks(latents, window) if mode == "blend" else stream_chunks(latents, window)
    return sum(4 * (b - a - 1) + 1 for a, b in chunks) + (3 * (len(chunks) - 1) if mode == "stream" else 0)


def measure_case(name: str, vae, latent: torch.Tensor, window: int, repeats: int, verbose: bool = False
                 ) -> list[dict]:
    out: dict[str, tuple[torch.Tensor, float]] = {}
    for mode in MODES:  # warm-up (first calls allocate and pick kernels), not timed
        decode(vae, latent[:, : 2 * window + 3], window, mode)
    for _ in range(repeats):  # modes interleaved, so a busy spell of the machine hits them alike
        for mode in MODES:
            frames, t = decode(vae, latent, window, mode)
            out[mode] = (frames, min(t, out[mode][1] if mode in out else math.inf))
    bulk = out["bulk"][0]
    base = out["blend"][1]
    rows = []
    for mode in MODES:
        frames, t = out[mode]
        assert frames.shape == bulk.shape, (mode, frames.shape, bulk.shape)
        p = psnr(frames, bulk)
        work = vae_frames(mode, latent.shape[1], window) / vae_frames("blend", latent.shape[1], window)
        rows.append({"row": f"decode {name}: {mode}", "ratio": t / base, "seconds": t, "psnr": p, "work": work,
                     "note": f"{frames.shape[0]} frames, PSNR vs bulk {p:.1f} dB, {t:.2f} s, "
                             f"VAE frames {work:.2f}x blend's"})
        if verbose:
            print(f"  {rows[-1]['row']}: {rows[-1]['ratio']:.2f}x, {rows[-1]['note']}", file=sys.stderr, flush=True)
    return rows


def measure(quick: bool = False, *, tiny: bool = True, wide: bool = True, verbose: bool = False) -> list[dict]:
    """Rows `{row, ratio (time / blend's time in the same case), note (PSNR vs bulk)}` for bench/run.py."""
    from safetensors.torch import load_file

    from framepack_cli.models.vae import load_vae

    repeats = 1 if quick else 3
    rows: list[dict] = []
    window = 9
    if tiny:
        vae = load_vae(GOLDEN / "models" / "vae.safetensors")
        lat = load_file(str(GOLDEN / "e2e" / "vanilla_sections.safetensors"))["latent"]
        rows += measure_case(f"tiny golden, generated {lat.shape[1]} latents {lat.shape[2] * 8}x{lat.shape[3] * 8}",
                             vae, lat, window, repeats, verbose)
        for sections in (4,) if quick else (4, 10):
            long = encode_long(vae, sections, window, 48, 64)
            rows += measure_case(f"tiny golden, encoded {long.shape[1]} latents 48x64", vae, long, window,
                                 repeats, verbose)
    if wide:
        channels, size = ((64, 64, 128, 128), 32) if quick else ((64, 128, 256, 256), 32)
        vae = wide_vae(channels, layers=2)
        for sections in (3,) if quick else (4, 10):
            long = encode_long(vae, sections, window, size, size)
            rows += measure_case(f"wide synthetic {list(channels)}, {long.shape[1]} latents {size}x{size}", vae,
                                 long, window, repeats, verbose)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller cases, one repeat")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--tiny-only", action="store_true")
    g.add_argument("--wide-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = measure(a.quick, tiny=not a.wide_only, wide=not a.tiny_only, verbose=True)
    width = max(len(r["row"]) for r in rows)
    print(f"{'case / mode':<{width}}  time vs blend  note")
    for r in rows:
        print(f"{r['row']:<{width}}  {r['ratio']:>12.2f}x  {r['note']}")


if __name__ == "__main__":
    main()
