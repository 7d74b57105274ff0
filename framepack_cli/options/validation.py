"""Validating options from plain values: pydantic's errors as one `OptionsError`, one line per problem, each
naming its flag. Used by the CLI for the command line and by engines for the options of a batch line.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from framepack_cli.errors import FramepackError
from framepack_cli.options.fields import (
    NUMBER_WORDS,
    argument_label,
    choices_of,
    field_cli,
    is_tuple_field,
    metavar,
    tuple_items,
    unwrap_optional,
)


class OptionsError(FramepackError):
    """Validation failed; one line per problem, all of them at once."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _quote(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return repr(" ".join(map(str, value)))
    return repr(value)


def _value_line(e: dict[str, Any], label: str, field: FieldInfo | None) -> str:
    """`--seed: 'abc' is not an integer`: the flag, the value as given and what was expected."""
    kind, ctx, got = e["type"], e.get("ctx") or {}, e.get("input")
    q = _quote(got)
    if kind == "missing":
        return f"{label}: required {'option' if label.startswith('--') else 'argument'} is missing"
    if kind == "extra_forbidden":
        return f"{label}: unknown option"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{label}: {q} is not an integer"
    if kind in ("float_parsing", "float_type"):
        return f"{label}: {q} is not a number"
    if kind == "finite_number":
        return f"{label}: {q} is not a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{label}: {q} is not true or false"
    if kind in ("literal_error", "enum"):
        choices = (choices_of(field.annotation) if field is not None else None) or re.findall(
            r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{label}: {q} is not one of {', '.join(choices)}"
    bounds = {"greater_than": ("small", ">", "gt"), "greater_than_equal": ("small", ">=", "ge"),
              "less_than": ("large", "<", "lt"), "less_than_equal": ("large", "<=", "le")}
    if kind in bounds:
        size, op, key = bounds[kind]
        limit = ctx.get(key)
        return f"{label}: {q} is too {size}; expected a value {op} {limit:g}" if isinstance(limit, float) else \
            f"{label}: {q} is too {size}; expected a value {op} {limit}"
    if kind == "multiple_of":
        return f"{label}: {q} is not a multiple of {ctx.get('multiple_of')}"
    if kind in ("string_type", "string_sub_type"):
        return f"{label}: {q} is not text"
    if kind == "too_short":
        return f"{label}: expected at least {ctx.get('min_length')} value(s), got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"{label}: expected at most {ctx.get('max_length')} value(s), got {ctx.get('actual_length')}"
    if kind in ("list_type", "tuple_type"):
        return f"{label}: expected a list of values (got {q})"
    msg = e["msg"]
    return f"{label}: {msg} (got {q})" if not isinstance(got, dict) else f"{label}: {msg}"


def _tuple_line(label: str, field: FieldInfo, given: Any) -> str:
    """`--video_size: two numbers: H W (got '48,64')`."""
    items = tuple_items(unwrap_optional(field.annotation))
    kind = "numbers" if all(a in (int, float) for a in items) else "values"
    got = " ".join(map(str, given)) if isinstance(given, (list, tuple)) else str(given)
    return f"{label}: {NUMBER_WORDS.get(len(items), len(items))} {kind}: {metavar(field)} (got {got!r})"


def render_validation_error(err: ValidationError, options_cls: type[BaseModel] | None = None,
                            values: dict[str, Any] | None = None) -> list[str]:
    """One line per error: the flag, the value as given and the expected form; cross-field messages name their
    flags themselves.

    Args:
        err: what pydantic raised.
        options_cls: the model, for choices, tuple forms and argument names (optional).
        values: the values given, to quote a whole tuple (`--video_size 48,64`) rather than one item.
    """
    fields = options_cls.model_fields if options_cls is not None else {}
    lines: list[str] = []
    for e in err.errors():
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        loc = [str(p) for p in e.get("loc", ())]
        if msg.startswith("--") or not loc or e["type"] in ("value_error", "assertion_error"):
            line = msg if msg.startswith("--") or not loc else f"--{loc[0]}: {msg} (got {_quote(e.get('input'))})"
        else:
            name = loc[0]
            field = fields.get(name)
            label = argument_label(name, field) if field is not None and field_cli(field).get("argument") \
                else "--" + name
            if field is not None and is_tuple_field(field) and (len(loc) > 1 or e["type"] not in ("missing",
                                                                                                "extra_forbidden")):
                line = _tuple_line(label, field, (values or {}).get(name, e.get("input")))
            else:
                line = _value_line(e, label, field)
        if line not in lines:
            lines.append(line)
    return lines


def validate(options_cls: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """Build the options model, turning pydantic's errors into one `OptionsError`."""
    try:
        return options_cls(**values)
    except ValidationError as e:
        raise OptionsError(render_validation_error(e, options_cls, values)) from None
