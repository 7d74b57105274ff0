"""Which dtype each model runs in: one table, used by generate, one-frame, kisekae, the caches and training.

`--dtype` (DiT), `--vae_dtype`, `--text_encoder_dtype` (LLaMA and CLIP-L) and `--image_encoder_dtype` (SigLIP)
each take auto / float32 / bfloat16 / float16; `auto` reads `AUTO`:

| model         | on CUDA  | elsewhere | why (CUDA column = musubi-tuner's fpack_* scripts)                    |
|---------------|----------|-----------|-----------------------------------------------------------------------|
| dit           | bfloat16 | float32   | trained and released in bf16; the reference runs the bf16 weights as is |
| vae           | float16  | float32   | the reference's load_vae is fixed to float16 (inference and caching)   |
| text_encoder  | float16  | float32   | LLaMA and CLIP-L load in float16 (inference and `cache text`)          |
| image_encoder | float16  | float32   | SigLIP loads in float16 (inference and `cache latents`)                |

Off CUDA every model runs in float32 by default: bf16/fp16 matmuls on many CPUs are slow, and float32 is what
the CPU parity tests compare against. `--dtype bfloat16` on the CPU works end to end (half the DiT's RAM; tested
against float32 in tests/integration/test_attention_cli.py). The DiT's `proj_out` stays float32 whatever
`--dtype` says (the reference's high-quality output projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_cli.models.dtypes import torch_dtype

# model -> (auto on CUDA, auto elsewhere)
AUTO: dict[str, tuple[str, str]] = {
    "dit": ("bfloat16", "float32"),
    "vae": ("float16", "float32"),
    "text_encoder": ("float16", "float32"),
    "image_encoder": ("float16", "float32"),
}

# model -> options field that overrides it (its flag is `--<field>`)
FIELDS = {"dit": "dtype", "vae": "vae_dtype", "text_encoder": "text_encoder_dtype",
          "image_encoder": "image_encoder_dtype"}

FP16_DIT_WARNING = ("Warning: --dtype float16: the DiT was trained in bfloat16; float16 may overflow and give "
                    "different results (--dtype auto uses bfloat16 on CUDA)")


def model_dtype(model: str, choice: str | None, device: torch.device) -> torch.dtype:
    """The dtype of `model` for the option value `choice` (None or "auto" = the table) on `device`."""
    if choice is None or choice == "auto":
        cuda, other = AUTO[model]
        choice = cuda if device.type == "cuda" else other
    return torch_dtype(choice)


@dataclass(frozen=True)
class Precision:
    """The dtype of every model of a run."""

    dit: torch.dtype
    vae: torch.dtype
    text_encoder: torch.dtype
    image_encoder: torch.dtype

    def names(self) -> dict[str, str]:
        """`{"dit": "bfloat16", ...}` (for metadata and messages)."""
        return {m: str(getattr(self, m)).removeprefix("torch.") for m in AUTO}


def resolve_precision(device: torch.device, **choices: str | None) -> Precision:
    """Every model's dtype from the per-model choices (missing = auto), e.g. `resolve_precision(dev, vae="float32")`.

    Raises:
        KeyError: an unknown model name or dtype name (the options models only let the four names through).
    """
    unknown = set(choices) - set(AUTO)
    if unknown:
        raise KeyError(f"unknown model(s) {sorted(unknown)}")
    return Precision(**{m: model_dtype(m, choices.get(m), device) for m in AUTO})


def precision_for(opts, device: torch.device) -> Precision:
    """The precision of a run from its options; a command without a model's flag uses that model's auto."""
    return resolve_precision(device, **{m: getattr(opts, f, None) for m, f in FIELDS.items()})


def dtype_source(opts, model: str, device: torch.device) -> str:
    """How a model's dtype was chosen, for messages: `--dtype float32` or `--dtype auto on cpu`."""
    choice = getattr(opts, FIELDS[model], None) or "auto"
    return f"--{FIELDS[model]} {choice}" + (f" on {device.type}" if choice == "auto" else "")
