"""Full-width synthetic FramePack DiT checkpoints (3072 wide, 24 heads, the real block structure, few blocks)
and a peak-RSS measurement of `load_dit`, for tests and bench/bench_load_rss.py.

Nothing is committed: the checkpoint is written at test time into a temporary folder. The architecture is the
real model's (`REAL_CONFIG`, reference spec §1.1) with fewer blocks; the tensors are zeros (loading cost does not
depend on the values). `python -m tests.fullwidth_dit measure PATH DTYPE` loads PATH in a fresh process and
prints `{"before": ..., "peak": ..., "weights": ...}` (bytes; peak RSS before and after `load_dit`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The released FramePack DiT (lllyasviel/FramePackI2V_HY config.json; reference spec §1.1).
REAL_CONFIG = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
    "num_layers": 20, "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2,
    "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096,
    "pooled_projection_dim": 768, "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56], "image_proj_dim": 1152,
}


def meta_model(**overrides):
    """The DiT built on the meta device (no memory) with the real config, `overrides` applied."""
    import torch

    from framepack_cli.models.transformer import FramePackTransformer

    with torch.device("meta"):
        return FramePackTransformer(**{**REAL_CONFIG, **overrides})


def real_infos() -> dict:
    """Header infos (`TensorInfo`, BF16) of the real 13 B DiT, from its module tree on the meta device."""
    from framepack_cli.models.tensor_info import TensorInfo

    return {k: TensorInfo("BF16", tuple(v.shape)) for k, v in meta_model().state_dict().items()}


def write_fullwidth_dit(folder: Path, *, double: int = 1, single: int = 1, refiner: int = 1, shards: int = 1,
                        dtype: str = "bfloat16", fp8: str | None = None) -> Path:
    """Write a full-width DiT with `double` dual-stream and `single` single-stream blocks into `folder`.

    `fp8`: a pre-quantised file (Kijai / musubi style): the block Linears (`is_fp8_target`) as float8_e4m3fn,
    with `scale_weight` block scales (out, in / 64, 1) in `dtype` for "fp8_scaled".
    Returns the file to pass as `--dit` (the first shard when `shards` > 1; shards are written one at a time,
    so the writer never holds more than one shard).
    """
    import torch
    from safetensors.torch import save_file

    from framepack_cli.models.detect import is_fp8_target

    folder.mkdir(parents=True, exist_ok=True)
    shapes = {k: tuple(v.shape) for k, v in meta_model(num_layers=double, num_single_layers=single,
                                                          num_refiner_layers=refiner).state_dict().items()}
    tdtype = getattr(torch, dtype)
    keys = sorted(shapes)
    total = sum(_numel(s) for s in shapes.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for k in keys:  # contiguous groups of about equal size
        groups[min(shards - 1, acc * shards // max(total, 1))].append(k)
        acc += _numel(shapes[k])
    if shards == 1:
        names = ["diffusion_pytorch_model.safetensors"]
    else:
        names = [f"diffusion_pytorch_model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    for name, group in zip(names, groups, strict=True):
        sd = {}
        for k in group:
            if fp8 is not None and is_fp8_target(k) and len(shapes[k]) == 2:
                sd[k] = torch.zeros(shapes[k], dtype=torch.float8_e4m3fn)
                if fp8 == "fp8_scaled":
                    out, inp = shapes[k]
                    sd[k[: -len("weight")] + "scale_weight"] = torch.ones((out, inp // 64, 1), dtype=tdtype)
            else:
                sd[k] = torch.zeros(shapes[k], dtype=tdtype)
        save_file(sd, str(folder / name))
        del sd
    return folder / names[0]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def loaded_bytes(infos: dict, dtype: str) -> int:
    """Bytes of the DiT once loaded in `dtype` (proj_out float32, as `load_dit` keeps it)."""
    size = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    return sum(i.numel * (4 if k.startswith("proj_out.") else size) for k, i in infos.items())


def peak_rss() -> int:
    """This process's peak resident set size in bytes: /proc/self/status VmHWM, else ru_maxrss.

    VmHWM belongs to the address space, so it starts afresh at exec; ru_maxrss is inherited from the parent
    across fork + exec (a test process that just wrote a 1.5 GB checkpoint would hide the whole load)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(path: str, dtype: str, kwargs: dict | None = None) -> dict:
    """Peak RSS (bytes) before and after `load_dit(path, dtype=dtype, **kwargs)`, in this process."""
    import torch  # imported before the baseline is taken

    from framepack_cli.models.loading import read_header_infos, resolve_dit_files
    from framepack_cli.models.transformer import load_dit

    infos = read_header_infos(resolve_dit_files(path))
    before = peak_rss()
    model = load_dit(path, dtype=dtype, **(kwargs or {}))
    for p in model.parameters():  # fault in every page (a memory-mapped model would be resident only on use)
        p.detach().reshape(-1).view(torch.uint8)[::4096].sum()  # bytes: also for fp8 tensors
    peak = peak_rss()
    assert not any(p.is_meta for p in model.parameters())
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    largest = max(i.numel for i in infos.values()) * 4  # the largest tensor in float32 (quantising works in it)
    return {"before": before, "peak": peak, "weights": loaded_bytes(infos, dtype), "model": held,
            "largest_f32": largest}


def measure_in_subprocess(path: Path, dtype: str, *, kwargs: dict | None = None, timeout: float = 600) -> dict:
    """`measure` in a fresh interpreter (so nothing this process holds counts); returns its numbers plus
    `ratio` = (peak - before) / weights and `model_ratio` = (peak - before) / model (what the loaded model
    holds: smaller than `weights` with fp8)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-m", "tests.fullwidth_dit", "measure", str(path), dtype,
                          json.dumps(kwargs or {})], cwd=root,
                         env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"measuring {path} failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["ratio"] = (res["peak"] - res["before"]) / res["weights"]
    res["model_ratio"] = (res["peak"] - res["before"]) / res["model"]
    return res


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) == 5 else None)))
    else:
        sys.exit("usage: python -m tests.fullwidth_dit measure PATH DTYPE [KWARGS_JSON]")
