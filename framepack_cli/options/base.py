"""Base of every options model. Pydantic only: no torch import here, so `--help` and validation are instant.

An options model is the single source of truth for a subcommand's flags: `framepack_cli.cli.build` turns
each field into a typer option that accepts both spellings (`--video_size` and `--video-size`), with the
field's `description` as help text. Per-field CLI details go in `json_schema_extra` via `cli(...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class OptionsBase(BaseModel):
    """Strict and frozen: an unknown option is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def cli(
    *,
    variadic: bool = False,
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
    panel: str | None = None,
    argument: bool = False,
    hidden: bool = False,
) -> dict[str, Any]:
    """CLI details for a field, for `Field(json_schema_extra=cli(...))`.

    Args:
        variadic: musubi-style `nargs="*"` option: `--lora_weight a.safetensors b.safetensors` (also repeatable).
        aliases: extra flag names (e.g. the reference's `--sdpa`-style spellings), each given with dashes.
        metavar: name of the value in help.
        panel: help section the option is listed under.
        argument: a positional argument instead of an option.
        hidden: accepted but not listed in help (reference spellings kept for compatibility).
    """
    return {
        "cli": {
            "variadic": variadic, "aliases": aliases, "metavar": metavar, "panel": panel,
            "argument": argument, "hidden": hidden,
        }
    }


def flag_name(field: str) -> str:
    """The musubi spelling of a field's flag (`video_size` -> `--video_size`), used in every message."""
    return "--" + field


def check_file(value: str | None, flag: str) -> str | None:
    """Existing file or directory, else a ValueError naming the flag and the path."""
    if value is None:
        return None
    if not Path(value).exists():
        raise ValueError(f"{flag}: file not found: {value}")
    return value


def check_files(values: list[str] | None, flag: str) -> None:
    missing = [v for v in values or [] if not Path(v).exists()]
    if missing:
        raise ValueError(f"{flag}: file not found: {', '.join(missing)}")
