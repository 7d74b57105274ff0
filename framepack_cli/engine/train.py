"""Engine of `framepack train`.

Not built yet: the runner below refuses with one line after the options were validated (no fake work).
"""

from __future__ import annotations

from framepack_cli import __version__
from framepack_cli.errors import NotBuiltError
from framepack_cli.options.train import TrainOptions


def run(opts: TrainOptions) -> None:
    """Run `framepack train` with validated options."""
    raise NotBuiltError(
        f"framepack train: the training engine is not built yet in framepack {__version__} (options were validated)"
    )
