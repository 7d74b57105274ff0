"""Engine of `framepack download`.

Not built yet: `refuse` says so in one line (exit 2) before any option is parsed; `run` refuses too
(no fake work).
"""

from __future__ import annotations

from framepack_cli import __version__
from framepack_cli.errors import NotBuiltError
from framepack_cli.options.download import DownloadOptions

NOT_BUILT = f"framepack download: the downloader is not built yet in framepack {__version__}"


def refuse() -> None:
    """Say that `framepack download` is not built; the CLI calls this before it parses any option, so a user
    learns it before being asked for required options."""
    raise NotBuiltError(NOT_BUILT)


def run(opts: DownloadOptions) -> None:
    """Run `framepack download` with validated options (refuses: not built yet)."""
    raise NotBuiltError(NOT_BUILT)
