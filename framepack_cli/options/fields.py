"""What an options field says about itself, for help and messages: CLI details, value names, choices.

Plain pydantic introspection (no typer, no torch): the CLI builds its help from it and `options.validation`
its one-line messages.
"""

from __future__ import annotations

import types
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo


def field_cli(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return dict(extra.get("cli") or {})


def unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


CHOICES_IN_METAVAR = 32  # longer choice lists go into the help text, the metavar says CHOICE
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def choices_of(tp: Any) -> list[str] | None:
    """The accepted values of a Literal or Enum type (of a list's items too), else None."""
    tp = unwrap_optional(tp)
    if get_origin(tp) is list:
        (tp,) = get_args(tp)
    if get_origin(tp) is Literal:
        return [str(a) for a in get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, Enum):
        return [str(m.value) for m in tp]
    return None


def scalar_metavar(tp: Any) -> str:
    choices = choices_of(tp)
    if choices:
        joined = "{" + "|".join(choices) + "}"
        return joined if len(joined) <= CHOICES_IN_METAVAR else "CHOICE"
    return {int: "INT", float: "FLOAT"}.get(tp, "TEXT")


def tuple_items(tp: Any) -> tuple[Any, ...]:
    return tuple(a for a in get_args(tp) if a is not Ellipsis)


def metavar(field: FieldInfo) -> str | None:
    """The value's name in help: `INT`, `FLOAT`, `TEXT`, `{a|b}` / `CHOICE`, `H W` (tuples), `TEXT...` (several)."""
    meta = field_cli(field)
    tp = unwrap_optional(field.annotation)
    if tp is bool:
        return None
    if meta.get("metavar"):
        return meta["metavar"]
    origin = get_origin(tp)
    if origin is tuple:
        return " ".join(scalar_metavar(a) for a in tuple_items(tp))
    if origin is list:
        (item,) = get_args(tp)
        return scalar_metavar(item) + "..."
    return scalar_metavar(tp)


def is_tuple_field(field: FieldInfo) -> bool:
    return get_origin(unwrap_optional(field.annotation)) is tuple


def argument_label(name: str, field: FieldInfo) -> str:
    return field_cli(field).get("metavar") or name.upper()
