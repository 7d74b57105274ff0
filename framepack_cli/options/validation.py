"""Validating options from plain values: pydantic's errors as one `OptionsError`, one line per problem, each
naming its flag. Used by the CLI for the command line and by engines for the options of a batch line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from framepack_cli.errors import FramepackError


class OptionsError(FramepackError):
    """Validation failed; one line per problem, all of them at once."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def render_validation_error(err: ValidationError) -> list[str]:
    """One line per error: `--flag: message (got value)`; cross-field messages name their flags themselves."""
    lines = []
    for e in err.errors():
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        loc = [str(p) for p in e.get("loc", ())]
        if msg.startswith("--") or not loc:
            lines.append(msg)
            continue
        flag = "--" + loc[0]
        if e["type"] == "missing":
            lines.append(f"{flag}: required option is missing")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{flag}: unknown option")
        else:
            got = e.get("input")
            lines.append(f"{flag}: {msg} (got {got!r})" if not isinstance(got, dict) else f"{flag}: {msg}")
    return lines


def validate(options_cls: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """Build the options model, turning pydantic's errors into one `OptionsError`."""
    try:
        return options_cls(**values)
    except ValidationError as e:
        raise OptionsError(render_validation_error(e)) from None
