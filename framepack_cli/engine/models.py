"""Load each model once, when first needed, and let it go when the pipeline is done with it.

The pipeline asks for a model (`vae()`, `image_encoder()`, `text()`, `dit()`) and releases it after its
phase. A released model is deleted unless its name is in `keep`, so in batch and single runs only one big
model is resident at a time. `--interactive` keeps the models every prompt needs (parked in CPU memory when
the device is a GPU), see `INTERACTIVE_KEEP`. Every model loads in the dtype of the precision table
(`framepack_cli.engine.precision`); an out-of-memory failure while loading is one line naming the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from framepack_cli.engine.context import free_memory
from framepack_cli.engine.precision import Precision
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.engine.resources import advice, oom_guard

ALL_MODELS = frozenset({"dit", "vae", "image_encoder", "text"})
# Every prompt needs the DiT, the VAE (start image, decode) and SigLIP (start image; 0.8 GB in fp16); the text
# encoders (16 GB with the real LLaMA) only for a prompt whose encoding is not remembered yet.
INTERACTIVE_KEEP = frozenset({"dit", "vae", "image_encoder"})
TEXT_MEMO = 64  # prompt encodings remembered per run ([512, 4096] float32 each: 8 MB)


def _module_refs(model) -> list:
    """Weak references to the parts of a loaded model that hold weights: torch modules and wrappers of one
    (`.model`); tokenizers and other small parts are left out (the caller may still hold them). Empty when
    there is none (or one takes no weak reference): the caller then collects, as before."""
    import weakref

    refs = []
    for part in model if isinstance(model, tuple) else (model,):
        if isinstance(part, torch.nn.Module) or isinstance(getattr(part, "model", None), torch.nn.Module):
            try:
                refs.append(weakref.ref(part))
            except TypeError:
                return []
    return refs


def keep_line(keep: frozenset[str]) -> str:
    """The line `--interactive` prints at start about what stays loaded between prompts."""
    if keep >= ALL_MODELS:
        return "Interactive mode: every model stays loaded between prompts (--keep_models)."
    return ("Interactive mode: the DiT, VAE and image encoder stay loaded between prompts; the text encoders are "
            "reloaded for new prompts (--keep_models keeps them too, about 16 GB more RAM with the real weights).")


class Models:
    """Lazily loaded models of one run; model settings come from `opts` (the first job's options).

    Args:
        opts: validated generate/one-frame options (model paths, VAE and attention settings).
        device: compute device.
        precision: every model's dtype (`framepack_cli.engine.precision.precision_for`).
        sink: progress messages ("Loading ...").
        keep: names of the models ("dit", "vae", "image_encoder", "text") kept when released (parked on the
            CPU when the device is a GPU); the others are deleted and loaded again when needed.
    """

    def __init__(self, opts, device: torch.device, precision: Precision, sink: ProgressSink, *,
                 keep: frozenset[str] = frozenset()):
        self.opts = opts
        self.device = device
        self.precision = precision
        self.sink = sink
        self.keep = frozenset(keep)
        self._loaded: dict[str, Any] = {}
        self._adopted: set[str] = set()
        self.text_cache: dict = {}  # (prompt, system prompt) -> TextCond, across jobs of the run
        self.lora_report: list[str] = []

    @property
    def dtype(self) -> torch.dtype:
        """The DiT's dtype (what the sampler feeds it)."""
        return self.precision.dit

    def _guard(self, what: str, paths: tuple, kind: str):
        """Say what loads; an out-of-memory failure inside names the model and its file(s)."""
        self.sink.message(f"Loading {what} {', '.join(str(p) for p in paths)}")
        names = ", ".join(Path(str(p)).name for p in paths)
        return oom_guard(f"loading the {what} {names}", self.device, advice(kind, self.device, self.opts))

    # -- loading -------------------------------------------------------------------------------------------
    def vae(self):
        from framepack_cli.models.vae import load_vae

        if "vae" not in self._loaded:
            o = self.opts
            with self._guard("VAE", (o.vae,), "vae"):
                self._loaded["vae"] = load_vae(
                    o.vae, device=self.device, dtype=self.precision.vae, chunk_size=o.vae_chunk_size,
                    spatial_tile_sample_min_size=o.vae_spatial_tile_sample_min_size, tiling=o.vae_tiling,
                )
        return self._on_device("vae")

    def image_encoder(self):
        from framepack_cli.models.image_encoder import load_image_encoder

        if "image_encoder" not in self._loaded:
            with self._guard("image encoder", (self.opts.image_encoder,), "image_encoder"):
                self._loaded["image_encoder"] = load_image_encoder(self.opts.image_encoder, device=self.device,
                                                                   dtype=self.precision.image_encoder)
        return self._on_device("image_encoder")

    def text(self):
        """`(te1, tok1, te2, tok2)`."""
        from framepack_cli.models.text_encoders import load_text_encoder1, load_text_encoder2, load_tokenizers

        if "text" not in self._loaded:
            o = self.opts
            dtype = self.precision.text_encoder
            with self._guard("text encoders", (o.text_encoder1, o.text_encoder2), "text"):
                tok1, tok2 = load_tokenizers(o.text_encoder1, o.text_encoder2, o.tokenizer1, o.tokenizer2)
                te1 = load_text_encoder1(o.text_encoder1, device=self.device, dtype=dtype, fp8=o.fp8_llm)
                te2 = load_text_encoder2(o.text_encoder2, device=self.device, dtype=dtype)
            self._loaded["text"] = (te1, tok1, te2, tok2)
        return self._on_device("text")

    def dit(self):
        from framepack_cli.models.transformer import load_dit

        if "dit" not in self._loaded:
            o = self.opts
            kwargs = {}
            if o.lora_weight:
                from framepack_cli.engine.loras import lora_specs_from_options

                kwargs["loras"] = lora_specs_from_options(o)
                kwargs["lora_verbose"] = o.verbose
            from framepack_cli.models import block_swap

            fp8 = "fp8_scaled" if o.fp8_scaled else "fp8" if o.fp8 else None
            n = getattr(o, "blocks_to_swap", 0) or 0
            swap = bool(n) and block_swap.swap_supported(self.device)
            if n and not swap:
                from framepack_cli.models.block_swap import NO_CUDA_WARNING

                self.sink.message(NO_CUDA_WARNING.format(n=n, device=self.device.type))
            from framepack_cli.engine.preflight import check_attention

            # --attn_mode auto: the kernel for this device and dtype, said in one line (preflight checked it).
            attn_mode, note = check_attention(o.attn_mode, self.precision.dit, self.device)
            if note is not None:
                self.sink.message(note)
            with self._guard("DiT", (o.dit,), "dit"):
                # With block swap the DiT loads to the CPU; the swapper then moves all but the swapped
                # blocks' Linear weights to the GPU.
                dit = load_dit(o.dit, device="cpu" if swap else self.device, dtype=self.precision.dit,
                               attn_mode=attn_mode, split_attn=getattr(o, "split_attn", False),
                               rope_scaling_timestep_threshold=o.rope_scaling_timestep_threshold,
                               rope_scaling_factor=o.rope_scaling_factor, fp8=fp8, fp8_fast=o.fp8_fast, **kwargs)
                if swap:
                    block_swap.enable_block_swap(dit, n, self.device, pinned=o.use_pinned_memory_for_block_swap)
                    counts = len(dit.transformer_blocks), len(dit.single_transformer_blocks)
                    self.sink.message(block_swap.describe(*counts, n, o.use_pinned_memory_for_block_swap))
            for line in (getattr(dit, "lora_report", None) or []) + (getattr(dit, "fp8_report", None) or []):
                self.sink.message(line)
            if o.fp8_fast:
                from framepack_cli.models.fp8 import enable_fp8_fast

                enable_fp8_fast(dit, self.device, self.sink.message)
            if getattr(o, "compile", False):
                from framepack_cli.models.compile import CompileSettings, compile_blocks

                settings = CompileSettings.from_options(o)
                if compile_blocks(dit, settings, self.sink.message, device=self.device) is not None:
                    self.sink.message(settings.describe())
            self._loaded["dit"] = dit
        return self._on_device("dit")

    def adopt(self, name: str, model) -> None:
        """Use a model the caller already holds (the training DiT with its LoRA) instead of loading one: it is
        returned as is (never moved) and never released; the caller owns it."""
        self._loaded[name] = model
        self._adopted.add(name)

    def disown(self, name: str) -> None:
        """Forget an adopted model (the caller keeps it; nothing is moved or freed)."""
        if name in self._adopted:
            self._adopted.discard(name)
            self._loaded.pop(name, None)

    def remember_text(self, key, cond) -> None:
        if len(self.text_cache) >= TEXT_MEMO:
            self.text_cache.pop(next(iter(self.text_cache)))
        self.text_cache[key] = cond

    # -- placement -----------------------------------------------------------------------------------------
    def _on_device(self, name: str):
        m = self._loaded[name]
        if name in self._adopted:
            return m
        if self.device.type == "cuda":
            for mod in m if isinstance(m, tuple) else (m,):
                if getattr(mod, "block_swapper", None) is not None:
                    continue  # placed by the swapper: resident part on the GPU, swapped blocks on the CPU
                if hasattr(mod, "to") and not isinstance(mod, type):
                    try:
                        mod.to(self.device)
                    except TypeError:  # tokenizers have no .to
                        pass
        return m

    def release(self, name: str) -> None:
        """Done with a model for now: park it on the CPU when it is in `keep`, else delete it."""
        if name not in self._loaded or name in self._adopted:
            return
        if name in self.keep:
            if self.device.type != "cuda":
                return  # kept where it is: nothing was freed, nothing to collect
            m = self._loaded[name]
            for mod in m if isinstance(m, tuple) else (m,):
                if getattr(mod, "block_swapper", None) is not None:
                    continue  # a swapped DiT stays as the swapper placed it (its swapped part is on the CPU)
                if isinstance(mod, torch.nn.Module) or hasattr(mod, "model"):
                    mod.to("cpu")
        else:
            refs = _module_refs(self._loaded.pop(name))
            if self.device.type != "cuda" and refs and all(r() is None for r in refs):
                # Off CUDA the only work of free_memory is a full gc.collect() (0.3-0.4 s with torch,
                # transformers and diffusers imported); a model nothing else references is already freed.
                return
        free_memory(self.device)

    def park_vae(self) -> None:
        """The VAE is needed again for decoding: move it off the GPU while the DiT runs (never deleted)."""
        if "vae" in self._loaded and self.device.type == "cuda":
            self._loaded["vae"].to("cpu")
            free_memory(self.device)
