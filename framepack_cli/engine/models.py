"""Load each model once, when first needed, and let it go when the pipeline is done with it.

The pipeline asks for a model (`vae()`, `image_encoder()`, `text()`, `dit()`) and releases it after its
phase. In batch and single runs a released model is deleted, so only one big model is resident at a time.
With `keep=True` (interactive mode) it stays loaded: parked in CPU memory when the device is a GPU, so the
next prompt does not pay for loading again.
"""

from __future__ import annotations

from typing import Any

import torch

from framepack_cli.engine.context import free_memory
from framepack_cli.engine.progress import ProgressSink


def vae_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The reference runs the VAE in float16 on GPUs; float32 stays float32."""
    return torch.float16 if (device.type == "cuda" and dtype != torch.float32) else dtype


class Models:
    """Lazily loaded models of one run; model settings come from `opts` (the first job's options).

    Args:
        opts: validated generate/one-frame options (model paths, dtypes, VAE and attention settings).
        device / dtype: compute device and dtype.
        sink: progress messages ("Loading ...").
        keep: keep released models (parked on the CPU when the device is a GPU).
    """

    def __init__(self, opts, device: torch.device, dtype: torch.dtype, sink: ProgressSink, *, keep: bool = False):
        self.opts = opts
        self.device = device
        self.dtype = dtype
        self.sink = sink
        self.keep = keep
        self._loaded: dict[str, Any] = {}
        self.lora_report: list[str] = []

    # -- loading -------------------------------------------------------------------------------------------
    def vae(self):
        from framepack_cli.models.vae import load_vae

        if "vae" not in self._loaded:
            o = self.opts
            self.sink.message(f"Loading VAE {o.vae}")
            self._loaded["vae"] = load_vae(
                o.vae, device=self.device, dtype=vae_dtype(self.device, self.dtype), chunk_size=o.vae_chunk_size,
                spatial_tile_sample_min_size=o.vae_spatial_tile_sample_min_size, tiling=o.vae_tiling,
            )
        return self._on_device("vae")

    def image_encoder(self):
        from framepack_cli.models.image_encoder import load_image_encoder

        if "image_encoder" not in self._loaded:
            self.sink.message(f"Loading image encoder {self.opts.image_encoder}")
            self._loaded["image_encoder"] = load_image_encoder(self.opts.image_encoder, device=self.device,
                                                               dtype=self.dtype)
        return self._on_device("image_encoder")

    def text(self):
        """`(te1, tok1, te2, tok2)`."""
        from framepack_cli.models.text_encoders import load_text_encoder1, load_text_encoder2, load_tokenizers

        if "text" not in self._loaded:
            o = self.opts
            self.sink.message(f"Loading text encoders {o.text_encoder1}, {o.text_encoder2}")
            tok1, tok2 = load_tokenizers(o.text_encoder1, o.text_encoder2, o.tokenizer1, o.tokenizer2)
            te1 = load_text_encoder1(o.text_encoder1, device=self.device, dtype=self.dtype, fp8=o.fp8_llm)
            te2 = load_text_encoder2(o.text_encoder2, device=self.device, dtype=self.dtype)
            self._loaded["text"] = (te1, tok1, te2, tok2)
        return self._on_device("text")

    def dit(self):
        from framepack_cli.models.transformer import load_dit

        if "dit" not in self._loaded:
            o = self.opts
            self.sink.message(f"Loading DiT {o.dit}")
            kwargs = {}
            if o.lora_weight:
                from framepack_cli.engine.loras import lora_specs_from_options

                kwargs["loras"] = lora_specs_from_options(o)
                kwargs["lora_verbose"] = o.verbose
            dit = load_dit(o.dit, device=self.device, dtype=self.dtype, attn_mode=o.attn_mode,
                           rope_scaling_timestep_threshold=o.rope_scaling_timestep_threshold,
                           rope_scaling_factor=o.rope_scaling_factor, **kwargs)
            for line in getattr(dit, "lora_report", None) or []:
                self.sink.message(line)
            self._loaded["dit"] = dit
        return self._on_device("dit")

    # -- placement -----------------------------------------------------------------------------------------
    def _on_device(self, name: str):
        m = self._loaded[name]
        if self.device.type == "cuda":
            for mod in m if isinstance(m, tuple) else (m,):
                if hasattr(mod, "to") and not isinstance(mod, type):
                    try:
                        mod.to(self.device)
                    except TypeError:  # tokenizers have no .to
                        pass
        return m

    def release(self, name: str) -> None:
        """Done with a model for now: delete it, or park it on the CPU when `keep` is set."""
        if name not in self._loaded:
            return
        if self.keep:
            if self.device.type == "cuda":
                m = self._loaded[name]
                for mod in m if isinstance(m, tuple) else (m,):
                    if isinstance(mod, torch.nn.Module) or hasattr(mod, "model"):
                        mod.to("cpu")
        else:
            del self._loaded[name]
        free_memory(self.device)

    def park_vae(self) -> None:
        """The VAE is needed again for decoding: move it off the GPU while the DiT runs (never deleted)."""
        if "vae" in self._loaded and self.device.type == "cuda":
            self._loaded["vae"].to("cpu")
            free_memory(self.device)
