"""`import framepack`: the Python API of framepack-cli under a short name (`framepack.Pipeline`).

Everything here is `framepack_cli.api`'s; see its docstring and the README's "Python API" section.
"""

from framepack_cli import __version__
from framepack_cli.api import Cancelled, Event, Pipeline, Result

__all__ = ["Cancelled", "Event", "Pipeline", "Result", "__version__"]
