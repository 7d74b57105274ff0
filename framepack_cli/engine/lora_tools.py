"""Engines of `framepack lora inspect`, `framepack lora convert` and `framepack lora merge`.

Not built yet: the runners below refuse with one line after the options were validated (no fake work).
"""

from __future__ import annotations

from framepack_cli import __version__
from framepack_cli.errors import NotBuiltError
from framepack_cli.options.lora import LoraConvertOptions, LoraInspectOptions, LoraMergeOptions


def _not_built(command: str, what: str) -> NotBuiltError:
    return NotBuiltError(
        f"framepack {command}: {what} is not built yet in framepack {__version__} (options were validated)"
    )


def run_inspect(opts: LoraInspectOptions) -> None:
    """Run `framepack lora inspect` with validated options."""
    raise _not_built("lora inspect", "the LoRA inspector")


def run_convert(opts: LoraConvertOptions) -> None:
    """Run `framepack lora convert` with validated options."""
    raise _not_built("lora convert", "the LoRA converter")


def run_merge(opts: LoraMergeOptions) -> None:
    """Run `framepack lora merge` with validated options."""
    raise _not_built("lora merge", "the LoRA merger")
