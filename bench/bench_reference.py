"""Side by side with the reference (kohya-ss/musubi-tuner's fpack_generate_video.py): the same generation on
the same CPU and weights, each as a whole command, alternating, several repeats.

    FRAMEPACK_REFERENCE=/path/to/musubi-tuner FRAMEPACK_REFERENCE_PYTHON=/path/to/its/venv/bin/python \\
        PYTHONPATH=$PWD python bench/bench_reference.py [--quick] [--repeats N]

The model: a synthetic FramePack DiT of about 185 M parameters (8 heads x 128, 2 dual-stream + 4 single-stream
blocks, 2 refiner blocks; random weights N(0, 0.02), float32 on disk) whose text / pooled / image widths are
read from the encoders' config.json, with the golden tiny VAE, LLaMA, CLIP and SigLIP (`--quick`: a 2-head,
1 + 1 block DiT, 1 section, 1 repeat). The run: 256x256, 4 steps, 1 and 2 sections, seed 42, start image,
`--output_type latent_images`, float32, SDPA, on the CPU. The reference runs through bench/reference_shim.py
(which only swaps in the small shapes, local tokenizers and float32); ours through bench/framepack_timed.py
(`framepack generate` with stage timers). Both print `REFSHIM_TIMING stage seconds` lines.

Rows (ratio = ours / the reference's, medians over the repeats): whole-command wall time; DiT sampling time
(every sampler call); ours with `--teacache_thresh 0.15` and with MagCache (built-in ratios) against the
reference uncached, with the PSNR of our cached frames against the reference's uncached frames; the PSNR of
the uncached pair is the equal-output check (same seed -> the same noise -> the same latents).
Set-up of the reference (never part of this repo):
    git --git-dir=<bare musubi-tuner repo> --work-tree=/tmp/musubi checkout -f HEAD -- .
    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.13.0 <musubi's pinned requirements>
    /tmp/refvenv/bin/pip install --no-deps -e /tmp/musubi
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("FRAMEPACK_GOLDEN", REPO.parent / "shared" / "golden"))
if not (GOLDEN / "models").is_dir():
    GOLDEN = Path("/work/shared/golden")
BENCH = REPO / "bench"
PROMPT = "A cat walks on the grass."

SETUP = ("set FRAMEPACK_REFERENCE to a musubi-tuner checkout and FRAMEPACK_REFERENCE_PYTHON to the python of a "
         "venv with torch==2.13.0 and musubi's pinned requirements (see bench/bench_reference.py's docstring)")


def reference_paths() -> tuple[Path, Path] | str:
    """(checkout, python) of the reference, or why it is not set up."""
    ref, py = os.environ.get("FRAMEPACK_REFERENCE"), os.environ.get("FRAMEPACK_REFERENCE_PYTHON")
    if not ref or not py:
        return f"reference not set up: {SETUP}"
    if not (Path(ref) / "src" / "musubi_tuner" / "fpack_generate_video.py").is_file():
        return f"reference not set up: FRAMEPACK_REFERENCE={ref} has no src/musubi_tuner/fpack_generate_video.py"
    if not os.access(py, os.X_OK):
        return f"reference not set up: FRAMEPACK_REFERENCE_PYTHON={py} is not an executable"
    return Path(ref), Path(py)


def dit_config(models: Path, quick: bool) -> dict:
    """The synthetic DiT's config: widths of the text / pooled / image inputs from the encoders' configs."""
    def hidden(sub: str) -> int:
        return int(json.loads((models / sub / "config.json").read_text())["hidden_size"])

    heads, dual, single, refiner = (2, 1, 1, 1) if quick else (8, 2, 4, 2)
    return {
        "in_channels": 16, "out_channels": 16, "num_attention_heads": heads, "attention_head_dim": 128,
        "num_layers": dual, "num_single_layers": single, "num_refiner_layers": refiner, "mlp_ratio": 4.0,
        "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True,
        "text_embed_dim": hidden("text_encoder"), "pooled_projection_dim": hidden("text_encoder_2"),
        "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56], "image_proj_dim": hidden("image_encoder"),
    }


def write_dit(folder: Path, config: dict) -> tuple[Path, int]:
    """A random-weight DiT of `config` as one float32 safetensors file; returns (path, parameter count)."""
    import torch
    from safetensors.torch import save_file

    from framepack_cli.models.transformer import FramePackTransformer

    torch.manual_seed(0)
    model = FramePackTransformer(**config)
    with torch.no_grad():
        for p in model.parameters():  # small random weights keep activations finite through the blocks
            p.normal_(0, 0.02)
    path = folder / "synthetic_dit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, sum(p.numel() for p in model.parameters())


def common_args(dit: Path, sections: int, quick: bool) -> list[str]:
    size = "128" if quick else "256"
    return ["--dit", str(dit), "--vae", str(GOLDEN / "models" / "vae" / "diffusion_pytorch_model.safetensors"),
            "--attn_mode", "sdpa", "--device", "cpu", "--output_type", "latent_images", "--video_size", size, size,
            "--infer_steps", "4", "--seed", "42", "--video_sections", str(sections), "--prompt", PROMPT,
            "--image_path", str(GOLDEN / "inputs" / "start.png")]


def ours_cmd(dit: Path, sections: int, out: Path, quick: bool, extra: list[str] = ()) -> list[str]:
    m = GOLDEN / "models"
    return [sys.executable, str(BENCH / "framepack_timed.py"), "generate", *common_args(dit, sections, quick),
            "--text_encoder1", str(m / "text_encoder"), "--text_encoder2", str(m / "clip_l_tiny.safetensors"),
            "--image_encoder", str(m / "sigclip_tiny.safetensors"), "--save_path", str(out), *extra]


def ref_cmd(py: Path, dit: Path, sections: int, out: Path, quick: bool) -> list[str]:
    # the reference reads its encoders from a hunyuanvideo-community-style folder (text_encoder/, ...): the
    # same bytes as the files ours is given
    m = GOLDEN / "models"
    return [str(py), str(BENCH / "reference_shim.py"), str(m), "--", *common_args(dit, sections, quick),
            "--text_encoder1", str(m), "--text_encoder2", str(m), "--image_encoder", str(m),
            "--save_path", str(out)]


def timed(cmd: list[str], env: dict) -> tuple[float, dict[str, float], str]:
    """Wall seconds, the REFSHIM_TIMING stages (plus `cpu`: the command's user + system seconds) and stderr of
    one whole command."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{Path(cmd[1]).name} exited {r.returncode}: {r.stderr.strip()[-400:]}")
    stages = {"cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
    for line in r.stderr.splitlines():
        if line.startswith("REFSHIM_TIMING "):
            _, k, v = line.split()
            stages[k] = stages.get(k, 0.0) + float(v)
    return wall, stages, r.stderr


def frames(out: Path):
    """The PNG frames one run wrote under `out` (its only image folder), as one uint8 array [T, H, W, 3]."""
    import numpy as np
    from PIL import Image

    pngs = sorted(out.rglob("*.png"))
    if not pngs:
        raise RuntimeError(f"no PNG frames under {out}")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])


def latent(out: Path):
    from safetensors.torch import load_file

    (f,) = sorted(out.rglob("*_latent.safetensors"))
    return load_file(str(f))["latent"].float().reshape(-1)


def psnr(a, b) -> float:
    import numpy as np

    if a.shape != b.shape:
        return math.nan
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def skipped_note(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if "skipped" in ln.lower()]
    return lines[-1][:90] if lines else ""


def measure(quick: bool = False, repeats: int | None = None) -> list[dict]:
    paths = reference_paths()
    if isinstance(paths, str):
        return [{"row": "reference side by side", "ratio": math.nan, "note": paths}]
    ref, py = paths
    if not (GOLDEN / "models").is_dir():
        return [{"row": "reference side by side", "ratio": math.nan, "note": f"no golden models at {GOLDEN}"}]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRAMEPACK_REFERENCE": str(ref), "HF_HUB_OFFLINE": "1"}
    repeats = repeats or (1 if quick else 3)
    section_counts = (1,) if quick else (1, 2)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_reference_") as tmp:
        tmp_path = Path(tmp)
        dit, n_params = write_dit(tmp_path, dit_config(GOLDEN / "models", quick))
        size = "128x128" if quick else "256x256"
        desc = f"{n_params / 1e6:.0f} M-param synthetic DiT, {size}, 4 steps"
        run_no = 0

        def run(kind: str, cmd_for) -> tuple[float, dict, str, Path]:
            nonlocal run_no
            run_no += 1
            out = tmp_path / f"{kind}{run_no}"
            wall, stages, err = timed(cmd_for(out), env)
            sys.stderr.write(f"  {kind}: {wall:.1f} s {json.dumps({k: round(v, 2) for k, v in stages.items()})}\n")
            return wall, stages, err, out

        for sections in section_counts:
            ours, theirs = [], []
            for i in range(repeats):  # alternating, the order swapped every repeat
                pair = [("ours", lambda o, s=sections: ours_cmd(dit, s, o, quick)),
                        ("reference", lambda o, s=sections: ref_cmd(py, dit, s, o, quick))]
                for kind, make in (pair if i % 2 == 0 else pair[::-1]):
                    (ours if kind == "ours" else theirs).append(run(kind, make))
            wall_o = statistics.median(r[0] for r in ours)
            wall_r = statistics.median(r[0] for r in theirs)
            dit_o = statistics.median(r[1].get("dit_sampling", math.nan) for r in ours)
            dit_r = statistics.median(r[1].get("dit_sampling", math.nan) for r in theirs)
            cpu_o = statistics.median(r[1]["cpu"] for r in ours)
            cpu_r = statistics.median(r[1]["cpu"] for r in theirs)
            fr_o, fr_r = frames(ours[-1][3]), frames(theirs[-1][3])
            lat_diff = float((latent(ours[-1][3]) - latent(theirs[-1][3])).abs().max())
            tag = f"{sections} section{'s' if sections > 1 else ''}"
            rows.append({"row": f"{tag}: wall, ours / reference", "ratio": wall_o / wall_r,
                         "note": f"{wall_o:.1f} s vs {wall_r:.1f} s (CPU time {cpu_o / cpu_r:.2f}x); {desc}; "
                                 f"equal output: PSNR "
                                 f"{psnr(fr_o, fr_r):.1f} dB, latent max diff {lat_diff:.1e}"})
            rows.append({"row": f"{tag}: DiT sampling, ours / reference", "ratio": dit_o / dit_r,
                         "note": f"{dit_o:.1f} s vs {dit_r:.1f} s"})
            for stage in ("prepare_inputs", "load_dit", "write"):
                so = statistics.median(r[1].get(stage, math.nan) for r in ours)
                sr = statistics.median(r[1].get(stage, math.nan) for r in theirs)
                label = {"prepare_inputs": "encoders: load + encode", "load_dit": "DiT load",
                         "write": "VAE decode + writing"}[stage]
                rows.append({"row": f"{tag}: {label}, ours / reference", "ratio": so / sr,
                             "note": f"{so:.2f} s vs {sr:.2f} s"})
            if sections != section_counts[0]:
                continue
            for name, extra in (("--teacache_thresh 0.15", ["--teacache_thresh", "0.15"]),
                                ("MagCache (--magcache_mag_ratios 0)", ["--magcache_mag_ratios", "0"])):
                cached = [run("cached", lambda o, x=extra, s=sections: ours_cmd(dit, s, o, quick, x))
                          for _ in range(repeats)]
                wall_c = statistics.median(r[0] for r in cached)
                note = skipped_note(cached[-1][2])
                rows.append({"row": f"{tag}: ours {name} / reference uncached", "ratio": wall_c / wall_r,
                             "note": f"{wall_c:.1f} s; PSNR {psnr(frames(cached[-1][3]), fr_r):.1f} dB vs the "
                                     f"reference's uncached frames" + (f"; {note}" if note else "")})
    return rows


def main() -> None:
    args = sys.argv[1:]
    quick = "--quick" in args
    repeats = int(args[args.index("--repeats") + 1]) if "--repeats" in args else None
    for r in measure(quick, repeats):
        ratio = "-" if math.isnan(r["ratio"]) else f"{r['ratio']:.2f}x"
        print(f"{r['row']:<58} {ratio:>7}  {r['note']}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
