"""Engines of `framepack cache latents` and `framepack cache text`.

Not built yet: the runners below refuse with one line after the options were validated (no fake work).
"""

from __future__ import annotations

from framepack_cli import __version__
from framepack_cli.errors import NotBuiltError
from framepack_cli.options.cache import CacheLatentsOptions, CacheTextOptions


def run_latents(opts: CacheLatentsOptions) -> None:
    """Run `framepack cache latents` with validated options."""
    raise NotBuiltError(
        f"framepack cache latents: the latent cache engine is not built yet in framepack {__version__} "
        "(options were validated)"
    )


def run_text(opts: CacheTextOptions) -> None:
    """Run `framepack cache text` with validated options."""
    raise NotBuiltError(
        f"framepack cache text: the text-encoder cache engine is not built yet in framepack {__version__} "
        "(options were validated)"
    )
