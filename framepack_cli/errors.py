"""The exceptions the CLI turns into one line and an exit code.

- `FramepackError` (bad input, wrong file): one `Error: ...` line, exit code 2.
- `ResourceError` (out of memory, disk full, unwritable folder): one `Error: ...` line saying what would help,
  exit code 3.
- Anything else is a bug: exit 1, traceback only with `--debug`.
"""

from __future__ import annotations


class FramepackError(Exception):
    """An error the user can fix: bad input, wrong file, missing file.

    Args:
        message: What was wrong, with the offending value.
        hint: How to fix it (a flag, a command), shown on its own line.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ModelFormatError(FramepackError):
    """A file given for a model flag is not what that flag expects (wrong kind, truncated, unknown layout)."""


class NotBuiltError(FramepackError):
    """A subcommand whose engine does not exist yet (refused up front, never pretended)."""


class ResourceError(FramepackError):
    """The machine ran out of something (GPU or CPU memory, disk space, a writable folder): exit code 3.

    The message names the phase or path and the numbers; the hint names the options that would help.
    """

    exit_code = 3


class Interrupted(Exception):
    """Ctrl-C stopped a run: the message says how far it got and what it wrote; exit code 130.

    Not a `FramepackError` (the line has no `Error:` prefix) and not a `KeyboardInterrupt` (click would turn
    that into its own `Aborted!`).
    """

    exit_code = 130
