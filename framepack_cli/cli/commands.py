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
    runner: str  # "module:function", called with the validated options
    help: str
    epilog: str | None = None
    group_help: str | None = None  # help of the parent group (first spec of a group sets it)
    no_args_is_help: bool = True


def load_options(spec: CommandSpec) -> type[BaseModel]:
    module, _, cls = spec.options.partition(":")
    return getattr(importlib.import_module(module), cls)


GEN_EPILOG = (
    "Example: framepack generate --dit dit/ --vae vae.safetensors --text_encoder1 te1/ "
    "--text_encoder2 clip_l.safetensors --image_encoder sigclip.safetensors --image_path start.png "
    "--prompt 'A cat walks on the grass.' "
    "--video_size 512 768 --video_seconds 5 --save_path out/"
)

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        ("generate",), "framepack_cli.options.generate:GenerateOptions", "framepack_cli.engine.generate:run",
        "Generate a video from a start image (vanilla inverted anti-drifting FramePack, or --f1).",
        epilog=GEN_EPILOG,
    ),
    CommandSpec(
        ("one-frame",), "framepack_cli.options.generate:OneFrameOptions", "framepack_cli.engine.one_frame:run",
        "Edit a single image with one-frame inference (--one_frame_inference, control images and masks).",
    ),
    CommandSpec(
        ("kisekae",), "framepack_cli.options.generate:KisekaeOptions", "framepack_cli.engine.one_frame:run_kisekae",
        "Kisekaeichi: dress the start image with a reference image (one-frame recipe as defaults).",
    ),
    CommandSpec(
        ("inspect",), "framepack_cli.options.inspect:InspectOptions", "framepack_cli.engine.inspect:run",
        "Say what a weights file or directory is: DiT, VAE, text encoder, SigLIP or LoRA, its format and dtype.",
    ),
)
