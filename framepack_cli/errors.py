"""The one user-fixable exception type.

Anything raised as `FramepackError` below the CLI is printed as one `Error: ...` line (plus an optional
`Hint: ...` line) and exits with code 2. Any other exception is a bug: exit 1, traceback only with `--debug`.
"""

from __future__ import annotations


class FramepackError(Exception):
    """An error the user can fix: bad input, wrong file, missing file.

    Args:
        message: What was wrong, with the offending value.
        hint: How to fix it (a flag, a command), shown on its own line.
    """

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
