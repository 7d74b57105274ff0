"""`framepack one-frame` and `framepack kisekae` engine."""

from __future__ import annotations

from framepack_cli.errors import NotBuiltError


def run(opts) -> None:
    """Called with validated `OneFrameOptions`."""
    raise NotBuiltError(
        "framepack one-frame: the one-frame engine is not built yet in framepack 0.1.0 (options were validated); "
        "follow CHANGELOG.md"
    )


def run_kisekae(opts) -> None:
    """Called with validated `KisekaeOptions`."""
    raise NotBuiltError(
        "framepack kisekae: the one-frame engine is not built yet in framepack 0.1.0 (options were validated); "
        "follow CHANGELOG.md"
    )
