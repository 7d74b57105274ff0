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
    required: str | None = None,
    unbuilt: bool = False,
) -> dict[str, Any]:
    """CLI details for a field, for `Field(json_schema_extra=cli(...))`.

    Args:
        variadic: musubi-style `nargs="*"` option: `--lora_weight a.safetensors b.safetensors` (also repeatable).
        aliases: extra flag names (e.g. the reference's `--sdpa`-style spellings), each given with dashes.
        metavar: name of the value in help.
        panel: help section the option is listed under.
        argument: a positional argument instead of an option.
        hidden: accepted but not listed in help (reference spellings kept for compatibility).
        required: when an optional-typed option is nevertheless needed, as help shows it: `"unless --latent_path"`
            reads `[required unless --latent_path]`; `"always"` reads `[required]` (for options whose absence a
            cross-field rule reports). Options without a default are marked `[required]` automatically.
        unbuilt: accepted, but the engine refuses it as not built yet; help says so (`[not built yet: refused]`).
    """
    return {
        "cli": {
            "variadic": variadic, "aliases": aliases, "metavar": metavar, "panel": panel,
            "argument": argument, "hidden": hidden, "required": required, "unbuilt": unbuilt,
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


def check_regexes(values: list[str] | None, flag: str) -> list[str] | None:
    """Every entry compiles as a regular expression, else a ValueError naming the flag and the pattern."""
    import re

    for p in values or []:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{flag}: invalid regular expression {p!r} ({e})") from None
    return values


def lora_count_errors(n_lora: int, multipliers: list[float] | None, include: list[str] | None,
                      exclude: list[str] | None) -> list[str]:
    """`--lora_multiplier` / `--include_patterns` / `--exclude_patterns`: one value for all or one per LoRA."""
    errs: list[str] = []
    if multipliers and len(multipliers) > 1 and len(multipliers) > n_lora:
        errs.append(f"--lora_multiplier: {len(multipliers)} values for {n_lora} --lora_weight files; "
                    "give one value for all or at most one per file")
    for flag, pats in (("--include_patterns", include), ("--exclude_patterns", exclude)):
        if len(pats or []) > 1 and len(pats) != n_lora:
            errs.append(f"{flag}: {len(pats)} patterns for {n_lora} --lora_weight files; give one for all or one each")
    return errs


def per_lora(values: list, n: int, default):
    """Spread `values` over n LoRAs: one value applies to all, missing ones take `default`."""
    values = list(values or [])
    if len(values) == 1:
        return values * n
    return values + [default] * (n - len(values))


def check_output_dir(value: str | None, flag: str) -> None:
    """A folder that exists or can be created: not a file, and not below a file."""
    if value is None:
        return
    p = Path(value)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag}: {value} is a file, expected a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag}: cannot create {value}: {parent} is a file")
            break


DECODE_MODES = ("stream", "blend", "bulk")
DEFAULT_DECODE = "blend"
"""`--decode` when neither it nor `--bulk_decode` is given. Stream is closer to bulk than blend in every case
bench/bench_decode.py measures, but at the default 5 s length (4 sections, 37 latents) its VAE time is 0.59x blend's
in decoded frames and 0.68-0.73x measured on the wide synthetic VAE, over the 0.6x that a new default needs; on long
videos (10 sections) it is 0.45-0.50x. Blend also keeps the reference's frames by default."""

DECODE_HELP = (f"How the VAE decodes the latent: stream (time chunks without overlap, each latent once), blend (the "
               f"reference's overlapping chunks, blended), bulk (all frames at once, most memory; = --bulk_decode). "
               f"Default {DEFAULT_DECODE}.")


def decode_mode(opts) -> str:
    """The decode of a run: `--bulk_decode` (musubi's spelling of `--decode bulk`), else `--decode`, else the
    default."""
    if getattr(opts, "bulk_decode", False):
        return "bulk"
    return getattr(opts, "decode", None) or DEFAULT_DECODE


def decode_conflict(decode: str | None, bulk_decode: bool) -> str | None:
    """The error line for `--bulk_decode` given with another `--decode`, else None."""
    if bulk_decode and decode not in (None, "bulk"):
        return (f"--bulk_decode is --decode bulk, but --decode {decode} was given too; "
                f"keep one of them (--decode {decode} or --bulk_decode)")
    return None
