"""Options of `framepack download`: fetch the FramePack weights into the models directory.

What is fetched from where is `framepack_cli.plan.model_catalog`; the engine asks the hub for sizes and hashes.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from framepack_cli.options.base import OptionsBase, check_output_dir
from framepack_cli.options.generate import F
from framepack_cli.plan.model_catalog import COMPONENT_NAMES, dit_source

# Names of the positional form kept from 0.1 (`framepack download dit vae`): each maps to (components, variants).
LEGACY_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "all": (COMPONENT_NAMES, ("framepack", "f1")),
    "dit": (("dit",), ("framepack",)),
    "dit-f1": (("dit",), ("f1",)),
    "vae": (("vae",), ()),
    "text-encoder1": (("text_encoder1",), ()),
    "text-encoder2": (("text_encoder2",), ()),
    "image-encoder": (("image_encoder",), ()),
    "tokenizers": (("tokenizers",), ()),
}


class ModelName(str, Enum):
    """The 0.1 positional names (an Enum: typer lists choices of positional lists only for Enums)."""

    ALL = "all"
    DIT = "dit"
    DIT_F1 = "dit-f1"
    VAE = "vae"
    TEXT_ENCODER1 = "text-encoder1"
    TEXT_ENCODER2 = "text-encoder2"
    IMAGE_ENCODER = "image-encoder"
    TOKENIZERS = "tokenizers"


def default_models_dir() -> Path:
    """`$FRAMEPACK_HOME/models`, else `~/.cache/framepack/models`."""
    home = os.environ.get("FRAMEPACK_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "framepack") / "models"


class DownloadOptions(OptionsBase):
    """Download the FramePack weights from the Hugging Face Hub (resumable, checked against the hub's hashes)."""

    names: list[ModelName] | None = F(
        None, "Shorthand kept from 0.1: any of all, dit, dit-f1, vae, text-encoder1, text-encoder2, image-encoder, "
        "tokenizers (instead of --components / --variant).", argument=True, metavar="NAME")
    variant: Literal["framepack", "f1", "both"] = F(
        "framepack", "Which DiT: framepack (vanilla, lllyasviel/FramePackI2V_HY), f1 "
        "(lllyasviel/FramePack_F1_I2V_HY_20250503) or both.")
    models_dir: str | None = F(
        None, "Target folder, in the Hugging Face cache layout (default: $FRAMEPACK_HOME/models, else "
        "~/.cache/framepack/models). Commands look there for the models they are not given (give them the same "
        "--models_dir for another folder than the default).", aliases=("--dir",), metavar="DIR")
    components: list[str] | None = F(
        None, f"What to fetch (comma list or several values): {', '.join(COMPONENT_NAMES)}. Default: all of them; "
        "dit is the DiT of --variant.", variadic=True, metavar="NAME...")
    dit_format: Literal["sharded", "single", "fp8"] = F(
        "sharded", "DiT files: sharded (lllyasviel, bf16), single (Kijai/HunyuanVideo_comfy bf16 file) or fp8 "
        "(Kijai's float8_e4m3fn file; --variant framepack only).")
    dry_run: bool = F(False, "Print what would be fetched and the disk space needed, then stop.")

    @field_validator("components")
    @classmethod
    def _components(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = [p.strip() for item in v for p in item.split(",") if p.strip()]
        bad = [p for p in out if p not in COMPONENT_NAMES]
        if bad:
            raise ValueError(f"--components: {', '.join(repr(b) for b in bad)} not among "
                             f"{', '.join(COMPONENT_NAMES)} (comma list, e.g. --components dit,vae)")
        if not out:
            raise ValueError(f"--components: give at least one of {', '.join(COMPONENT_NAMES)}")
        return out

    @model_validator(mode="after")
    def _cross(self):
        errs: list[str] = []
        if self.names and ({"components", "variant"} & self.model_fields_set):
            errs.append("NAME... cannot be combined with --components / --variant; use one form "
                        "(e.g. framepack download --variant f1 --components dit,vae)")
        if "dit" in self.selected_components:
            for variant in self.variants:
                try:
                    dit_source(variant, self.dit_format)
                except ValueError as e:
                    errs.append(str(e))
        try:
            check_output_dir(self.models_dir, "--models_dir")
        except ValueError as e:
            errs.append(str(e))
        if errs:
            raise ValueError("\n".join(errs))
        return self

    # --- derived values the engine reads
    @property
    def selected_components(self) -> list[str]:
        """The components to fetch, in catalog order (`dit` = the DiT of each of `variants`)."""
        if self.names:
            wanted = {c for n in self.names for c in LEGACY_NAMES[ModelName(n).value][0]}
        else:
            wanted = set(self.components or COMPONENT_NAMES)
        return [c for c in COMPONENT_NAMES if c in wanted]

    @property
    def variants(self) -> list[str]:
        """The DiT variants (`framepack`, `f1`) the `dit` component means."""
        if self.names:
            chosen = {v for n in self.names for v in LEGACY_NAMES[ModelName(n).value][1]}
            return [v for v in ("framepack", "f1") if v in chosen]
        return ["framepack", "f1"] if self.variant == "both" else [self.variant]

    @property
    def target_dir(self) -> Path:
        return Path(self.models_dir).expanduser() if self.models_dir is not None else default_models_dir()
