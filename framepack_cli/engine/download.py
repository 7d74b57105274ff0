"""Engine of `framepack download`.

Not built yet: the runner below refuses with one line after the options were validated (no fake work).
"""

from __future__ import annotations

from framepack_cli import __version__
from framepack_cli.errors import NotBuiltError
from framepack_cli.options.download import DownloadOptions


def run(opts: DownloadOptions) -> None:
    """Run `framepack download` with validated options."""
    raise NotBuiltError(
        f"framepack download: the downloader is not built yet in framepack {__version__} (options were validated)"
    )
