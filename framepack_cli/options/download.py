"""Options of `framepack download`: fetch the FramePack weights into the models directory."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from framepack_cli.options.base import OptionsBase
from framepack_cli.options.generate import F


class ModelName(str, Enum):
    """Downloadable components (an Enum: typer lists choices of positional lists only for Enums)."""

    ALL = "all"
    DIT = "dit"
    DIT_F1 = "dit-f1"
    VAE = "vae"
    TEXT_ENCODER1 = "text-encoder1"
    TEXT_ENCODER2 = "text-encoder2"
    IMAGE_ENCODER = "image-encoder"
    TOKENIZERS = "tokenizers"


MODEL_NAMES = tuple(m.value for m in ModelName)


def default_models_dir() -> Path:
    """`$FRAMEPACK_HOME/models`, else `~/.cache/framepack/models`."""
    home = os.environ.get("FRAMEPACK_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "framepack") / "models"


class DownloadOptions(OptionsBase):
    """Download FramePack weights from the Hugging Face Hub."""

    names: list[ModelName] = F(
        ..., "What to fetch, one or more of: dit (FramePack), dit-f1 (FramePack-F1), vae, text-encoder1 (LLaMA), "
        "text-encoder2 (CLIP-L), image-encoder (SigLIP), tokenizers, or all.", argument=True, metavar="NAME")
    dir: str | None = F(None, "Target directory (default: $FRAMEPACK_HOME/models, else ~/.cache/framepack/models).")

    @property
    def components(self) -> list[str]:
        """The names to fetch, in a fixed order, with `all` expanded."""
        given = {ModelName(n).value for n in self.names}
        wanted = set(MODEL_NAMES[1:]) if "all" in given else given
        return [n for n in MODEL_NAMES[1:] if n in wanted]

    @property
    def models_dir(self) -> Path:
        return Path(self.dir) if self.dir is not None else default_models_dir()
