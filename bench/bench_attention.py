"""One DiT forward on a mid-size synthetic FramePack DiT: attention kernels, --split_attn, --compile, fp8, bf16.

    PYTHONPATH=$PWD python bench/bench_attention.py [--quick] [--device cpu|cuda] [--no-compile]

The model: 8 heads x 128 (1024 wide), 2 dual-stream + 4 single-stream blocks, random weights, written once to a
temporary safetensors file and loaded with `load_dit` (so fp8 / fp8_scaled are the real loading path). Token
counts: a 256x256 and a 640x640 video (16x16 and 40x40 tokens per latent frame); the full run uses 2 noisy
frames + 1 history frame (768 / 4800 image tokens), `--quick` 1 noisy frame (256 / 1600), plus 64 text and 729
image-embedding tokens. Each row is the median wall time of one forward (after a warm-up call, which for
--compile includes compiling; the cases' calls interleaved round by round), as a ratio to `sdpa float32` at the
same token count, measured in the same run.

Rows: sdpa float32 (baseline), sdpa bfloat16, split_attn (batch 2, against batch-2 sdpa in the note), compile
(inductor; float32), fp8 and fp8_scaled (bfloat16 compute), and on CUDA every optional kernel that is installed
(flash, flash3, sageattn, xformers) in bfloat16. Speed is never asserted anywhere; this prints what it measured.
`measure(quick)` returns the rows for bench/run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 8, "attention_head_dim": 128, "num_layers": 2,
    "num_single_layers": 4, "num_refiner_layers": 1, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1,
    "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 256, "pooled_projection_dim": 128,
    "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56], "image_proj_dim": 144,
}


def _write_model(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from framepack_cli.models.transformer import FramePackTransformer

    torch.manual_seed(0)
    model = FramePackTransformer(**CONFIG)
    with torch.no_grad():
        for p in model.parameters():  # small random weights keep activations finite through the blocks
            p.normal_(0, 0.02)
    path = folder / "bench_dit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _inputs(px: int, quick: bool, batch: int, device):
    import torch

    g = torch.Generator().manual_seed(1)
    lat = px // 8
    t = 1 if quick else 2
    kw = {
        "hidden_states": torch.randn(batch, 16, t, lat, lat, generator=g),
        "timestep": torch.full((batch,), 900.0),
        "encoder_hidden_states": torch.randn(batch, 64, CONFIG["text_embed_dim"], generator=g),
        "encoder_attention_mask": torch.ones(batch, 64, dtype=torch.bool),
        "pooled_projections": torch.randn(batch, CONFIG["pooled_projection_dim"], generator=g),
        "guidance": torch.full((batch,), 10000.0),
        "latent_indices": torch.arange(1, t + 1)[None].expand(batch, t),
        "image_embeddings": torch.randn(batch, 729, CONFIG["image_proj_dim"], generator=g),
    }
    if not quick:
        kw["clean_latents"] = torch.randn(batch, 16, 1, lat, lat, generator=g)
        kw["clean_latent_indices"] = torch.zeros(batch, 1)
    return {k: v.to(device) for k, v in kw.items()}


def _cases(device, compile_rows: bool) -> list[tuple[str, dict, int]]:
    """(row name, load_dit kwargs + extras, batch)."""
    import torch

    cases = [("sdpa float32", {"dtype": "float32"}, 1), ("sdpa bfloat16", {"dtype": "bfloat16"}, 1),
             ("sdpa float32 batch 2", {"dtype": "float32"}, 2),
             ("split_attn float32 batch 2", {"dtype": "float32", "split_attn": True}, 2)]
    if compile_rows:
        cases.append(("compile (inductor) float32", {"dtype": "float32", "compile": True}, 1))
    cases += [("fp8 (bfloat16 compute)", {"dtype": "bfloat16", "fp8": "fp8"}, 1),
              ("fp8_scaled (bfloat16 compute)", {"dtype": "bfloat16", "fp8": "fp8_scaled"}, 1)]
    if device.type == "cuda":
        from framepack_cli.models.attention import AUTO_ORDER, _fits, _import_problem

        cap = torch.cuda.get_device_capability(device)
        for mode in AUTO_ORDER:
            if _fits(mode, torch.bfloat16, device, cap) is None and _import_problem(mode) is None:
                cases.append((f"{mode} bfloat16", {"dtype": "bfloat16", "attn_mode": mode}, 1))
    return cases


def measure(quick: bool = False, device: str | None = None, compile_rows: bool | None = None,
            sizes: tuple[int, ...] = (256, 640), only: tuple[str, ...] | None = None) -> list[dict]:
    """The rows (see the module docstring). Every model is loaded first and the timed calls are interleaved
    (one call of each case per round, median over the rounds), so a machine whose load drifts (shared CPUs)
    skews every row alike. `compile_rows` None: on, except `quick` on a CPU (compiling takes minutes there)."""
    import torch

    from framepack_cli.models.compile import CompileSettings, compile_blocks
    from framepack_cli.models.transformer import load_dit

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if compile_rows is None:
        compile_rows = not (quick and dev.type == "cpu")
    rounds = 3 if quick else 7
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_model(Path(tmp))
        models = {}
        batches = {}
        warnings: list[str] = []
        for name, opts, batch in _cases(dev, compile_rows):
            if only is not None and name != "sdpa float32" and not name.startswith(only):
                continue
            opts = dict(opts)
            do_compile = opts.pop("compile", False)
            model = load_dit(path, device=dev, **opts)
            if do_compile:
                torch._dynamo.reset()
                if compile_blocks(model, CompileSettings(), warnings.append, device=dev) is None:
                    rows.append({"row": f"attention {name}", "ratio": float("nan"), "note": warnings[-1]})
                    continue
            models[name], batches[name] = model, batch
        for size, px in ((f"{px}²", px) for px in sizes):
            inputs = {b: _inputs(px, quick, b, dev) for b in set(batches.values())}
            times: dict[str, list[float]] = {name: [] for name in models}
            with torch.no_grad():
                for name, model in models.items():
                    model(**inputs[batches[name]])  # warm-up (and compiling)
                sync()
                for _ in range(rounds):
                    for name, model in models.items():
                        t0 = time.perf_counter()
                        model(**inputs[batches[name]])
                        sync()
                        times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(t) for name, t in times.items()}
            for name in models:
                note = f"{med[name] * 1000:.0f} ms"
                if name.startswith("split_attn"):
                    note += f", {med[name] / med['sdpa float32 batch 2']:.2f}x batch-2 sdpa"
                compiled = getattr(models[name], "compiled_blocks", None)
                if compiled is not None and compiled.failed:
                    note += f", fell back to eager: {compiled.failed}"
                rows.append({"row": f"attention {name} {size}", "ratio": med[name] / med["sdpa float32"],
                             "note": note})
        if not compile_rows:
            rows.append({"row": "attention compile", "ratio": float("nan"),
                         "note": "not measured (quick run on a CPU: compiling takes minutes)"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 noisy frame, 3 rounds, no compile rows on a CPU")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the --compile rows (minutes on a CPU)")
    ap.add_argument("--compile", action="store_true", help="the --compile rows also with --quick on a CPU")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 640], help="video sides in pixels")
    ap.add_argument("--only", nargs="+", default=None, help="rows starting with these names (and the baseline)")
    args = ap.parse_args()
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, device {args.device or 'auto'}")
    print(f"{'row':<52} {'ratio':>6}  note")
    compile_rows = False if args.no_compile else True if args.compile else None
    for r in measure(args.quick, args.device, compile_rows, tuple(args.sizes),
                     tuple(args.only) if args.only else None):
        print(f"{r['row']:<52} {r['ratio']:>6.2f}  {r['note']}")


if __name__ == "__main__":
    main()
