"""Options of `framepack cache latents` and `framepack cache text`.

Every option of the reference caching scripts (musubi-tuner `fpack_cache_latents.py` and
`fpack_cache_text_encoder_outputs.py`, same names and defaults) plus ours (`--image_encoder_dtype`,
`--text_encoder_dtype`, `--tokenizer1/2`). Each model's dtype: the table of `framepack_cli.engine.precision`
(auto), or its own flag (`--vae_dtype` takes any dtype here; the reference refuses every value).
Cross-field rules run here, before any model loads, and name the flags in their messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from framepack_cli.options.base import OptionsBase, check_file
from framepack_cli.options.generate import FOUND, F, models_dir_field

DATASET = "Dataset"
MODELS = "Models"
MODE = "FramePack mode"
VAE = "VAE memory"
RUN = "Run"
DEBUG = "Debug preview"

DTYPES = Literal["auto", "float32", "bfloat16", "float16"]

# `framepack train` still accepts --vae_dtype only as the reference's no-op float16 (its trainer is not built).
VAE_DTYPE_MESSAGE = (
    "FramePack's VAE always encodes in float16 (the reference refuses any other --vae_dtype and its caches are "
    "float16); leave it unset, or pick the compute dtype with --dtype"
)


def check_dataset_config(value: str | None, flag: str = "--dataset_config") -> list[str]:
    """The dataset config must exist and be .toml or .json (the reference picks the parser by extension)."""
    if value is None:
        return []
    try:
        check_file(value, flag)
    except ValueError as e:
        return [str(e)]
    if Path(value).suffix.lower() not in (".toml", ".json"):
        return [f"{flag}: expected a .toml or .json dataset config, got {value}"]
    return []


def check_vae_dtype(value: str | None) -> str | None:
    """`--vae_dtype` is accepted only as the no-op `float16` (what FramePack always uses)."""
    if value is not None and value != "float16":
        raise ValueError(VAE_DTYPE_MESSAGE)
    return value


class CacheLatentsOptions(OptionsBase):
    """VAE-encode a dataset into FramePack latent caches (one file per section, or per image in one-frame mode)."""

    # --- dataset
    dataset_config: str = F(..., "Dataset config (.toml or .json) listing the image/video datasets and their "
                            "cache directories. Relative paths in it are read from the working directory, else "
                            "beside the config (paths in JSONL lines: beside the JSONL file).", panel=DATASET)
    batch_size: int | None = F(None, "Items encoded at once; also the batch_size of datasets that set none "
                               "(as in the reference).", panel=DATASET, ge=1)
    num_workers: int | None = F(None, "Threads that load and resize images/frames (default: CPU count - 1).",
                                panel=DATASET, ge=1)
    skip_existing: bool = F(False, "Skip items whose cache files all exist, are complete and were made with the "
                            "same settings (--f1/--one_frame/--one_frame_no_2x/4x, window size, resolution); "
                            "the others are cached again. Resumes an interrupted run.", panel=DATASET)
    keep_cache: bool = F(False, "Keep stale *_fp.safetensors files (not produced by this run) in the cache "
                         "directories. Default: delete those that framepack wrote for the same dataset; files of other "
                         "tools, of other datasets and users' files are always kept (the summary lists them).",
                         panel=DATASET)
    strict: bool = F(False, "Refuse the whole run (exit 2, before any model loads) when a clip is too short for one "
                     "section (4 * fp_latent_window_size + 1 frames) or for every target_frames value. Default: "
                     "skip such clips with a warning and list them in the summary.", panel=DATASET)

    # --- models
    vae: str | None = F(None, "VAE weights: file or directory." + FOUND, panel=MODELS)
    vae_dtype: DTYPES = F("auto", "VAE dtype, also the dtype the latents are stored in: auto = float16 on CUDA "
                          "(the reference's caches), float32 on CPU. The key suffixes name it; trainers strip them.",
                          panel=MODELS)
    image_encoder: str | None = F(None, "SigLIP image encoder: file or directory." + FOUND, panel=MODELS)
    models_dir: str | None = models_dir_field(MODELS)
    image_encoder_dtype: DTYPES = F("auto", "SigLIP dtype, also the dtype its embeddings are stored in: auto = "
                                    "float16 on CUDA (the reference's caches), float32 on CPU.", panel=MODELS)
    device: str | None = F(None, "Device (default: cuda if available, else cpu).", panel=MODELS)
    disable_cudnn_backend: bool = F(False, "Disable cuDNN (torch.backends.cudnn.enabled = False).", panel=MODELS)

    # --- FramePack mode
    f1: bool = F(False, "FramePack-F1 section layout (forward sampling); train with the F1 DiT.", panel=MODE)
    one_frame: bool = F(False, "One-frame caches: image datasets with control images (one-frame, Kisekaeichi, "
                        "1f-mc training).", panel=MODE)
    one_frame_no_2x: bool = F(False, "One-frame: omit the 2x clean-latent indices (needs --one_frame).", panel=MODE)
    one_frame_no_4x: bool = F(False, "One-frame: omit the 4x clean-latent indices (needs --one_frame).", panel=MODE)

    # --- VAE memory
    vae_tiling: bool = F(False, "Spatial VAE tiling with 256 px tiles (may lower quality slightly).", panel=VAE)
    vae_chunk_size: int | None = F(None, "Chunk the VAE's causal convolutions along width (exact; 32 recommended, "
                                   "16 or 8 if memory is short).", panel=VAE, ge=1)
    vae_spatial_tile_sample_min_size: int | None = F(
        None, "VAE tile size in pixels, turns tiling on (64 or 32 if still short of memory).", panel=VAE, ge=8)

    # --- debug
    debug_mode: Literal["image", "console", "video"] | None = F(
        None, "Preview the prepared items instead of caching (no model is loaded): image = OpenCV window, "
        "console = ASCII art, video = write .mp4/.jpg beside the cache paths.", panel=DEBUG, unbuilt=True)
    console_width: int = F(80, "Width of the console preview (--debug_mode console, not built yet).", panel=DEBUG,
                           ge=1)
    console_back: str | None = F(None, "Background colour of the console preview (--debug_mode, not built yet).",
                                 panel=DEBUG)
    console_num_images: int | None = F(None, "Console preview: show this many items per dataset without waiting "
                                       "for keys (--debug_mode, not built yet).", panel=DEBUG, ge=1)

    @classmethod
    def model_flags(cls, given: dict) -> tuple[str, ...]:
        """The models model resolution fills (`cli.models`): none for --debug_mode previews."""
        return () if given.get("debug_mode") else ("--vae", "--image_encoder")

    @model_validator(mode="after")
    def _cross(self):
        errs = check_dataset_config(self.dataset_config)
        if self.f1 and self.one_frame:
            errs.append("--f1 and --one_frame cannot be combined: F1 caches video sections, one-frame caches "
                        "single images; pick one")
        for name in ("one_frame_no_2x", "one_frame_no_4x"):
            if getattr(self, name) and not self.one_frame:
                errs.append(f"--{name} needs --one_frame")
        if self.debug_mode is None:
            for name in ("vae", "image_encoder"):
                if getattr(self, name) is None:
                    errs.append(f"--{name}: required to cache latents (only --debug_mode runs without models)")
        for name in ("vae", "image_encoder"):
            try:
                check_file(getattr(self, name), f"--{name}")
            except ValueError as e:
                errs.append(str(e))
        if errs:
            raise ValueError("\n".join(errs))
        return self


class CacheTextOptions(OptionsBase):
    """Encode every caption of a dataset with LLaMA and CLIP-L into FramePack text-encoder caches."""

    # --- dataset
    dataset_config: str = F(..., "Dataset config (.toml or .json) listing the datasets and their cache "
                            "directories. Relative paths in it are read from the working directory, else beside "
                            "the config (paths in JSONL lines: beside the JSONL file).", panel=DATASET)
    batch_size: int | None = F(None, "Items handed to the encoder at once (captions are still encoded one by one); "
                               "also the batch_size of datasets that set none.", panel=DATASET, ge=1)
    num_workers: int | None = F(None, "Accepted for compatibility: captions are read while the dataset config is "
                                "validated.", panel=DATASET, ge=1)
    skip_existing: bool = F(False, "Skip items whose text cache exists, is complete and holds the same caption.",
                            panel=DATASET)
    keep_cache: bool = F(False, "Keep stale *_fp_te.safetensors files (not produced by this run). Default: "
                         "delete those that framepack wrote for the same dataset; files of other tools, of other "
                         "datasets and users' files are always kept (the summary lists them).", panel=DATASET)

    # --- models
    text_encoder1: str | None = F(None, "LLaMA text encoder: Comfy-Org single file, first shard, or directory."
                                  + FOUND, panel=MODELS)
    text_encoder2: str | None = F(None, "CLIP-L text encoder: single file or directory." + FOUND, panel=MODELS)
    models_dir: str | None = models_dir_field(MODELS)
    tokenizer1: str | None = F(None, "LLaMA tokenizer directory (default: tokenizer/ beside the weights, then the "
                               "HF cache).", panel=MODELS)
    tokenizer2: str | None = F(None, "CLIP tokenizer directory (default: tokenizer_2/ beside the weights, then the "
                               "HF cache).", panel=MODELS)
    fp8_llm: bool = F(False, "Store the LLaMA text encoder in fp8 (less memory, slightly different caches).",
                      panel=MODELS)
    text_encoder_dtype: DTYPES = F("auto", "LLaMA and CLIP-L dtype, also the dtype their outputs are stored in: "
                                   "auto = float16 on CUDA (the reference's caches), float32 on CPU.", panel=MODELS)
    device: str | None = F(None, "Device (default: cuda if available, else cpu).", panel=MODELS)

    @classmethod
    def model_flags(cls, given: dict) -> tuple[str, ...]:
        """The models model resolution fills (`cli.models`)."""
        return ("--text_encoder1", "--text_encoder2")

    @model_validator(mode="after")
    def _cross(self):
        errs = check_dataset_config(self.dataset_config)
        for name in ("text_encoder1", "text_encoder2"):
            if getattr(self, name) is None:
                errs.append(f"--{name}: required to cache text")
        for name in ("text_encoder1", "text_encoder2", "tokenizer1", "tokenizer2"):
            try:
                check_file(getattr(self, name), f"--{name}")
            except ValueError as e:
                errs.append(str(e))
        if errs:
            raise ValueError("\n".join(errs))
        return self
