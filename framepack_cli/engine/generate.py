"""`framepack generate` engine."""

from __future__ import annotations

from framepack_cli.errors import NotBuiltError


def run(opts) -> None:
    """Called with validated `GenerateOptions`."""
    raise NotBuiltError(
        "framepack generate: the generation engine is not built yet in framepack 0.1.0 (options were validated); "
        "follow CHANGELOG.md"
    )
