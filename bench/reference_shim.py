"""Run the reference's FramePack generator (kohya-ss/musubi-tuner `fpack_generate_video.py`) on small or
synthetic models, in float32 on CPU, for bench/bench_reference.py.

    $FRAMEPACK_REFERENCE_PYTHON bench/reference_shim.py TOKENIZERS_DIR -- <generator arguments>

Runs under the reference's own virtual environment (stdlib + what the reference installs; nothing of
framepack_cli is imported). The reference hard-codes the 13 B model shapes, its hub tokenizers and fp16/bf16;
this launcher changes only those, at run time, as the golden data's own generation did (golden README §6):
- the DiT's constructor arguments are inferred from the checkpoint's tensor shapes;
- the VAE's block widths / layers / groups come from the `config.json` beside its weights (when there is one);
- the hub tokenizers ("hunyuanvideo-community/HunyuanVideo") are read from TOKENIZERS_DIR/tokenizer{,_2};
- the generator's, the loaders' and the sampler's float16/bfloat16 become float32 (the DiT file's dtype is
  kept as it is; write it in float32).
It also prints one `REFSHIM_TIMING name seconds` line per stage to stderr (load / text encoding / DiT
sampling / VAE decode), read by the bench.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
import types


def _header(path: str) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
    head.pop("__metadata__", None)
    return {k: v["shape"] for k, v in head.items()}


def dit_kwargs(path: str) -> dict:
    """The packed DiT's constructor arguments that depend on its size, from the tensor shapes (head_dim 128)."""
    if os.path.isdir(path):
        path = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))[0]
    shapes = _header(path)

    def count(prefix: str) -> int:
        idx = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        return max(idx) + 1 if idx else 0

    inner = shapes["x_embedder.proj.weight"][0]
    ff = shapes["transformer_blocks.0.ff.net.0.proj.weight"][0] if count("transformer_blocks.") else 4 * inner
    return {
        "num_attention_heads": inner // 128,
        "num_layers": count("transformer_blocks."),
        "num_single_layers": count("single_transformer_blocks."),
        "num_refiner_layers": count("context_embedder.token_refiner.refiner_blocks."),
        "mlp_ratio": ff / inner,
        "text_embed_dim": shapes["context_embedder.proj_in.weight"][1],
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        "image_proj_dim": shapes["image_projection.up.weight"][1],
    }


class _Timer:
    def __init__(self):
        self.t = {}

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0

        return timed

    def report(self):
        for k, v in self.t.items():
            sys.stderr.write(f"REFSHIM_TIMING {k} {v:.4f}\n")


def _torchvision_stand_in() -> None:
    """The three torchvision calls the FramePack generator makes, when torchvision cannot be imported.

    PyPI's torchvision wheel for torch 2.13 links the CUDA libtorch, which the CPU-only torch build lacks, so
    on a CPU machine the reference cannot import it. The generator only uses `utils.make_grid` (on one image:
    the image itself) and `io.write_png` / `io.write_video` (in frame_pack/utils.py, not on the FramePack
    generator's path); `transforms.functional` is imported by a module it imports. PNGs are written by Pillow.
    """
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - ImportError or the wheel's RuntimeError (missing CUDA operators)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    import diffusers  # noqa: F401 - both look torchvision up once, at import: they see it missing
    import numpy as np
    import transformers  # noqa: F401
    from PIL import Image

    def make_grid(x, nrow=8, **_):
        if x.dim() == 4 and x.shape[0] == 1:
            return x.squeeze(0)
        raise NotImplementedError("reference_shim: make_grid of more than one image")

    def write_png(x, filename, compression_level=6):
        Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy())).save(filename,
                                                                             compress_level=compression_level)

    tv = types.ModuleType("torchvision")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.make_grid = make_grid
    tv.io = types.ModuleType("torchvision.io")
    tv.io.write_png = write_png
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    for mod in (tv, tv.utils, tv.io, tv.transforms, tv.transforms.functional):
        sys.modules[mod.__name__] = mod


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--":
        sys.exit("usage: reference_shim.py TOKENIZERS_DIR -- <generator arguments>")
    tok_dir, gen_args = argv[0], argv[2:]
    ref = os.environ.get("FRAMEPACK_REFERENCE", "")
    if ref:
        sys.path.insert(0, os.path.join(ref, "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()

    import torch

    _torchvision_stand_in()
    f32 = types.ModuleType("torch")  # the reference's modules see float16/bfloat16 as float32
    f32.__dict__.update({"__getattr__": lambda name: getattr(torch, name)})
    f32.bfloat16 = torch.float32
    f32.float16 = torch.float32

    # wan/modules/t5.py (imported by the generator) calls torch.cuda.current_device() in a default argument at
    # import, which raises on a CPU-only torch; the Wan T5 is never built here. Restored right after the import.
    current_device = torch.cuda.current_device
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: "cpu"
    try:
        from musubi_tuner import fpack_generate_video as gen
    finally:
        torch.cuda.current_device = current_device
    from musubi_tuner.frame_pack import framepack_utils as fpu
    from musubi_tuner.frame_pack import hunyuan_video_packed_inference as dit_inf
    from musubi_tuner.frame_pack import k_diffusion_hunyuan as kdh
    from musubi_tuner.hunyuan_model import autoencoder_kl_causal_3d as vae_mod
    from musubi_tuner.hunyuan_model import vae as hv_vae

    for mod in (gen, fpu, kdh, hv_vae):
        mod.torch = f32
    sys.stderr.write(f"REFSHIM_TIMING import {time.perf_counter() - t_start:.4f}\n")

    # tokenizers from a local folder instead of the hub
    def local(cls):
        orig = cls.from_pretrained

        def from_pretrained(name, *a, subfolder=None, **k):
            if name == "hunyuanvideo-community/HunyuanVideo":
                return orig(os.path.join(tok_dir, subfolder or ""), *a, **k)
            return orig(name, *a, subfolder=subfolder, **k)

        return types.SimpleNamespace(from_pretrained=from_pretrained)

    fpu.LlamaTokenizerFast = local(fpu.LlamaTokenizerFast)
    fpu.CLIPTokenizer = local(fpu.CLIPTokenizer)
    fe = os.path.join(tok_dir, "feature_extractor", "preprocessor_config.json")
    if os.path.exists(fe):
        with open(fe) as f:
            fpu.FEATURE_EXTRACTOR_CONFIG = {**fpu.FEATURE_EXTRACTOR_CONFIG, **json.load(f)}

    # the VAE's widths from the config.json beside its weights
    vae_cfg: dict = {}
    orig_load_vae = hv_vae.load_vae

    def load_vae(*a, vae_path=None, **k):
        cfg = os.path.join(os.path.dirname(vae_path), "config.json")
        vae_cfg.clear()
        if os.path.exists(cfg):
            with open(cfg) as f:
                vae_cfg.update(json.load(f))
        return orig_load_vae(*a, vae_path=vae_path, **k)

    fpu.hunyuan_load_vae = load_vae
    orig_from_config = vae_mod.AutoencoderKLCausal3D.from_config.__func__

    def from_config(cls, config, *a, **k):
        config = dict(config)
        config.update({key: vae_cfg[key] for key in ("block_out_channels", "layers_per_block", "norm_num_groups")
                       if key in vae_cfg})
        return orig_from_config(cls, config, *a, **k)

    vae_mod.AutoencoderKLCausal3D.from_config = classmethod(from_config)

    # the DiT's size from its tensor shapes
    dit_cfg: dict = {}
    orig_load_packed = gen.load_packed_model

    def load_packed_model(device, dit_path, *a, **k):
        dit_cfg.update(dit_kwargs(dit_path))
        return orig_load_packed(device, dit_path, *a, **k)

    gen.load_packed_model = load_packed_model
    orig_init = dit_inf.HunyuanVideoTransformer3DModelPackedInference.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **{**k, **dit_cfg})

    dit_inf.HunyuanVideoTransformer3DModelPackedInference.__init__ = init

    # stage timings (a stage's time includes the stages it calls: prepare_inputs holds the encoders' loads)
    timer = _Timer()
    gen.sample_hunyuan = timer.wrap("dit_sampling", gen.sample_hunyuan)
    for name in ("load_vae", "load_text_encoder1", "load_text_encoder2", "load_image_encoders"):
        setattr(gen, name, timer.wrap("load_encoders_vae", getattr(gen, name)))
    gen.load_dit_model = timer.wrap("load_dit", gen.load_dit_model)
    gen.prepare_i2v_inputs = timer.wrap("prepare_inputs", gen.prepare_i2v_inputs)
    gen.decode_latent = timer.wrap("vae_decode", gen.decode_latent)
    gen.save_output = timer.wrap("write", gen.save_output)

    sys.argv = ["fpack_generate_video.py", *gen_args]
    try:
        gen.main()
    finally:
        timer.report()
        sys.stderr.write(f"REFSHIM_TIMING total {time.perf_counter() - t_start:.4f}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
