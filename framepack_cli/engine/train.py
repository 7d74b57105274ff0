"""Engine of `framepack train`.

Not built yet: `refuse` says so in one line (exit 2) before any option is parsed; `run` refuses too
(no fake work).
"""

from __future__ import annotations

from framepack_cli import __version__
from framepack_cli.errors import NotBuiltError
from framepack_cli.options.train import TrainOptions

NOT_BUILT = f"framepack train: the training engine is not built yet in framepack {__version__}"


def refuse() -> None:
    """Say that `framepack train` is not built; the CLI calls this before it parses any option, so a user
    learns it before being asked for required options."""
    raise NotBuiltError(NOT_BUILT)


def run(opts: TrainOptions) -> None:
    """Run `framepack train` with validated options (refuses: not built yet)."""
    raise NotBuiltError(NOT_BUILT)
