"""TeaCache / MagCache and the per-section memo on the tiny golden DiT: time ratio and PSNR against no cache.

Run by hand (not in CI):  PYTHONPATH=$PWD python bench/bench_step_cache.py [--quick] [--steps 25]

A generation of N sections (3 and 30; --quick: 2 and 4) on the golden `unit/dit_vanilla` section (vanilla layout,
1x/2x/4x history, SigLIP tokens, real text), one noise draw per section, the flow UniPC sampler, the DiT in float32
on this machine, one thread. Times are process CPU time (robust on a shared machine; wall time on an idle one
is the same ratio). Each row's ratio is its sampling time over the uncached run of the same section count measured in
the same process; PSNR is over the sampled latents against that uncached run (peak = the uncached latents' range).
The last row is one DiT forward with the section memo warm (history tokens, RoPE, SigLIP projection) over one
without. TeaCache/MagCache settings are the defaults users get (0.15; built-in ratios, 0.24, K 6, retention 0.2).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
CONTEXT_KEYS = ("latent_indices", "clean_latents", "clean_latent_indices", "clean_latents_2x",
                "clean_latent_2x_indices", "clean_latents_4x", "clean_latent_4x_indices")
CONFIGS = {
    "no cache": None,
    "TeaCache 0.15": dict(teacache_thresh=0.15),
    "MagCache built-in": dict(magcache_mag_ratios="0"),
}


def _setup():
    from safetensors.torch import load_file

    from framepack_cli.engine.denoiser import TextCond
    from framepack_cli.models.transformer import load_dit

    t = load_file(str(GOLDEN / "unit" / "dit_vanilla.safetensors"))
    inp = {k[3:]: v for k, v in t.items() if k.startswith("in.")}
    dit = load_dit(GOLDEN / "models" / "dit_single.safetensors")
    pos = TextCond(inp["encoder_hidden_states"], inp["encoder_attention_mask"].bool(), inp["pooled_projections"])
    return dit, inp, pos


def _settings(name):
    from types import SimpleNamespace

    from framepack_cli.models.step_cache import settings_from_options

    extra = CONFIGS[name]
    if extra is None:
        return None
    base = dict(teacache_thresh=None, magcache_mag_ratios=None, magcache_calibration=False, magcache_threshold=0.24,
                magcache_k=6, magcache_retention_ratio=0.2)
    return settings_from_options(SimpleNamespace(**{**base, **extra}))


@torch.no_grad()
def generate(dit, inp, pos, sections: int, steps: int, settings) -> tuple[float, torch.Tensor, int, int]:
    """Sampling time, the sections' latents, computed and total steps."""
    from framepack_cli.engine.denoiser import make_model_fn
    from framepack_cli.models.step_cache import StepCache
    from framepack_cli.plan.schedules import flow_mu, flow_sigmas
    from framepack_cli.sampling.unipc import sample_unipc

    shape = inp["hidden_states"].shape
    sigmas = flow_sigmas(steps, flow_mu(shape[2] * shape[3] * shape[4] // 4, 3.0))
    gen = torch.Generator().manual_seed(1)
    outs, computed, elapsed = [], 0, 0.0
    for _ in range(sections):
        cache = StepCache(settings, steps) if settings is not None else None
        fn = make_model_fn(dit, positive=pos, negative=None, image_embeddings=inp["image_embeddings"],
                           guidance_scale=1.0, guidance_rescale=0.0, embedded_cfg_scale=10.0,
                           context={k: inp[k] for k in CONTEXT_KEYS}, dtype=torch.float32,
                           device=torch.device("cpu"), step_cache=cache)
        noise = torch.randn(shape, generator=gen)
        t0 = time.process_time()
        outs.append(sample_unipc(fn, noise, sigmas))
        elapsed += time.process_time() - t0
        computed += len(cache.computed) if cache is not None else steps
    return elapsed, torch.cat(outs, dim=2), computed, steps * sections


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (x - ref).double().pow(2).mean().item()
    peak = (ref.max() - ref.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


@torch.no_grad()
def forward_memo_ratio(dit, inp, pos, repeats: int) -> float:
    """One forward with the section memo warm over one without (median of `repeats`)."""
    from framepack_cli.models.step_cache import SectionCache

    kw = dict(hidden_states=inp["hidden_states"], timestep=inp["timestep"], encoder_hidden_states=pos.llama_vec,
              encoder_attention_mask=pos.llama_mask, pooled_projections=pos.clip_pooler, guidance=inp["guidance"],
              image_embeddings=inp["image_embeddings"], **{k: inp[k] for k in CONTEXT_KEYS})
    fc = SectionCache().branch("pos")
    dit(**kw, cache=fc)  # warm the memo
    plain, memo = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        dit(**kw)
        plain.append(time.process_time() - t0)
        t0 = time.process_time()
        dit(**kw, cache=fc)
        memo.append(time.process_time() - t0)
    plain.sort()
    memo.sort()
    return memo[len(memo) // 2] / plain[len(plain) // 2]


def measure(quick: bool = False, steps: int | None = None, sections: tuple[int, ...] | None = None) -> list[dict]:
    """Rows `{row, ratio, note}`: time relative to the uncached run of the same section count."""
    torch.manual_seed(0)
    dit, inp, pos = _setup()
    steps = steps or (10 if quick else 25)
    rows = []
    for n in sections or ((2, 4) if quick else (3, 30)):
        base_t, base, _, total = generate(dit, inp, pos, n, steps, None)
        rows.append({"row": f"{n} sections x {steps} steps, no cache", "ratio": 1.0,
                     "note": f"{base_t:.1f} s, {total} DiT steps"})
        for name in list(CONFIGS)[1:]:
            t, out, computed, total = generate(dit, inp, pos, n, steps, _settings(name))
            rows.append({"row": f"{n} sections x {steps} steps, {name}", "ratio": t / base_t,
                         "note": f"PSNR {psnr(out, base):.1f} dB, {total - computed} of {total} steps skipped "
                                 f"(ideal ratio {computed / total:.2f})"})
    ratio = forward_memo_ratio(dit, inp, pos, 3 if quick else 9)
    rows.append({"row": "one DiT forward, section memo warm", "ratio": ratio,
                 "note": "history tokens + RoPE + SigLIP projection once per section"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 and 4 sections of 10 steps")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps per section (default 25; quick 10)")
    ap.add_argument("--sections", type=int, nargs="+", default=None, help="section counts (default 3 30)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = measure(a.quick, a.steps, tuple(a.sections) if a.sections else None)
    width = max(len(r["row"]) for r in rows)
    print(f"{'row':<{width}}  {'ratio':>6}  note")
    for r in rows:
        print(f"{r['row']:<{width}}  {r['ratio']:>6.3f}  {r['note']}")


if __name__ == "__main__":
    main()
