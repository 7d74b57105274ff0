"""Registry of subcommands: path, options model, runner. Options are pydantic-only modules (fast to import);
runners are imported only when their command runs (they pull in torch).

A test asserts that every command here has its options model and its runner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class CommandSpec:
    path: tuple[str, ...]
    options: str  # "module:Class"
    runner: str  # "module:function", called with the validated options (and the progress sink, if it takes `sink`)
    help: str
    epilog: str | None = None
    group_help: str | None = None  # help of the parent group (first spec of a group sets it)
    refuse_first: str | None = None  # "module:function" of an engine not built yet: refuses before parsing


def load_options(spec: CommandSpec) -> type[BaseModel]:
    module, _, cls = spec.options.partition(":")
    return getattr(importlib.import_module(module), cls)


GEN_EPILOG = (
    "Example: framepack generate --dit dit/ --vae vae.safetensors --text_encoder1 te1/ "
    "--text_encoder2 clip_l.safetensors --image_encoder sigclip.safetensors --image_path start.png "
    "--prompt 'A cat walks on the grass.' "
    "--video_size 512 768 --video_seconds 5 --save_path out/"
)

CACHE_HELP = "Prepare a dataset for training: latent caches first, then text caches (same --dataset_config)."
LORA_HELP = "Inspect, convert and merge FramePack LoRA files."
CACHE_LATENTS_EPILOG = (
    "Example: framepack cache latents --dataset_config dataset.toml --vae vae.safetensors "
    "--image_encoder sigclip.safetensors --vae_chunk_size 32"
)
CACHE_TEXT_EPILOG = (
    "Example: framepack cache text --dataset_config dataset.toml --text_encoder1 te1/ "
    "--text_encoder2 clip_l.safetensors --batch_size 16"
)
TRAIN_EPILOG = (
    "Example: framepack train --dit dit/ --dataset_config dataset.toml --mixed_precision bf16 "
    "--optimizer_type adamw8bit --learning_rate 2e-4 --gradient_checkpointing --timestep_sampling shift "
    "--discrete_flow_shift 3.0 --network_dim 32 --max_train_epochs 16 --save_every_n_epochs 1 --seed 42 "
    "--output_dir out --output_name my-lora"
)

DOWNLOAD_EPILOG = (
    "Example: framepack download --dry_run (what would be fetched, and the space needed); framepack download "
    "--variant both; framepack download --components vae,tokenizers --models_dir /data/models"
)

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        ("generate",), "framepack_cli.options.generate:GenerateOptions", "framepack_cli.engine.generate:run",
        "Generate a video from a start image (vanilla inverted anti-drifting FramePack, or --f1).",
        epilog=GEN_EPILOG,
    ),
    CommandSpec(
        ("one-frame",), "framepack_cli.options.generate:OneFrameOptions", "framepack_cli.engine.generate:run",
        "Edit a single image with one-frame inference (--one_frame_inference, control images and masks).",
    ),
    CommandSpec(
        ("kisekae",), "framepack_cli.options.generate:KisekaeOptions", "framepack_cli.engine.generate:run",
        "Kisekaeichi: dress the start image with a reference image (one-frame recipe as defaults).",
    ),
    CommandSpec(
        ("inspect",), "framepack_cli.options.inspect:InspectOptions", "framepack_cli.cli.reports:inspect",
        "Say what a weights file or directory is: DiT, VAE, text encoder, SigLIP or LoRA, its format and dtype.",
    ),
    CommandSpec(
        ("doctor",), "framepack_cli.options.doctor:DoctorOptions", "framepack_cli.cli.reports:doctor",
        "Say what this machine can run: torch/CUDA, GPUs and free memory, RAM, disk, attention kernels, video "
        "codecs, the settings --memory auto would choose, and the models in --models_dir.",
    ),
    CommandSpec(
        ("cache", "latents"), "framepack_cli.options.cache:CacheLatentsOptions",
        "framepack_cli.engine.cache_latents:run_latents",
        "VAE-encode a dataset into FramePack latent caches (video sections, --f1, or --one_frame images).",
        epilog=CACHE_LATENTS_EPILOG, group_help=CACHE_HELP,
    ),
    CommandSpec(
        ("cache", "text"), "framepack_cli.options.cache:CacheTextOptions", "framepack_cli.engine.cache_text:run_text",
        "Encode every caption of a dataset with LLaMA and CLIP-L into FramePack text caches.",
        epilog=CACHE_TEXT_EPILOG, group_help=CACHE_HELP,
    ),
    CommandSpec(
        ("train",), "framepack_cli.options.train:TrainOptions", "framepack_cli.engine.train:run",
        "Train a FramePack LoRA (or LoHa/LoKr) from latent and text caches (plain, or under accelerate launch).",
        epilog=TRAIN_EPILOG,
    ),
    CommandSpec(
        ("lora", "inspect"), "framepack_cli.options.lora:LoraInspectOptions",
        "framepack_cli.cli.reports:lora_inspect",
        "Say what a LoRA file is: layout, network type, rank, alpha, targets and metadata.",
        group_help=LORA_HELP,
    ),
    CommandSpec(
        ("lora", "convert"), "framepack_cli.options.lora:LoraConvertOptions",
        "framepack_cli.engine.lora_tools:run_convert",
        "Convert a FramePack LoRA between the musubi, diffusers and ComfyUI key layouts.",
        group_help=LORA_HELP,
    ),
    CommandSpec(
        ("lora", "merge"), "framepack_cli.options.lora:LoraMergeOptions", "framepack_cli.engine.lora_tools:run_merge",
        "Merge LoRA/LoHa/LoKr files into a FramePack DiT and save it.",
        group_help=LORA_HELP,
    ),
    CommandSpec(
        ("download",), "framepack_cli.options.download:DownloadOptions", "framepack_cli.engine.download:run",
        "Download the FramePack weights (DiT, F1 DiT, VAE, text encoders, SigLIP, tokenizers) from the Hugging Face "
        "Hub into the models directory; every command then finds them without model flags.",
        epilog=DOWNLOAD_EPILOG,
    ),
    CommandSpec(
        ("ui",), "framepack_cli.options.ui:UiOptions", "framepack_cli.ui.launch:run",
        "Start the local web app (Gradio): generate with a job queue kept on disk, models loaded once. Listens on "
        "127.0.0.1 unless --listen (which needs --auth). Needs the extra: pip install \"framepack-cli[ui]\".",
        epilog="Example: framepack ui --models_dir ~/models --save_path outputs/ (then open http://127.0.0.1:7860)",
    ),
)
