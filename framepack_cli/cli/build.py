"""Turn a pydantic options model into a typer command.

The options model is the one source of truth: each field becomes an option named both `--field_name`
(musubi spelling) and `--field-name`, with the field's description as help and its default shown. Typer
passes `None`/`False` for everything the user did not give; only given values reach the model, so
pydantic applies the defaults and `model_fields_set` tells what the user chose (kisekae recipes use it).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from framepack_cli.errors import FramepackError


class OptionsError(FramepackError):
    """Validation failed; one line per problem, all of them at once."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def field_cli(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return dict(extra.get("cli") or {})


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


CHOICES_IN_METAVAR = 32  # longer choice lists go into the help text, the metavar says CHOICE
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _choices(tp: Any) -> list[str] | None:
    """The accepted values of a Literal or Enum type (of a list's items too), else None."""
    tp = _unwrap_optional(tp)
    if get_origin(tp) is list:
        (tp,) = get_args(tp)
    if get_origin(tp) is Literal:
        return [str(a) for a in get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, Enum):
        return [str(m.value) for m in tp]
    return None


def _scalar_metavar(tp: Any) -> str:
    choices = _choices(tp)
    if choices:
        joined = "{" + "|".join(choices) + "}"
        return joined if len(joined) <= CHOICES_IN_METAVAR else "CHOICE"
    return {int: "INT", float: "FLOAT"}.get(tp, "TEXT")


def _tuple_items(tp: Any) -> tuple[Any, ...]:
    return tuple(a for a in get_args(tp) if a is not Ellipsis)


def metavar(field: FieldInfo) -> str | None:
    """The value's name in help: `INT`, `FLOAT`, `TEXT`, `{a|b}` / `CHOICE`, `H W` (tuples), `TEXT...` (several)."""
    meta = field_cli(field)
    tp = _unwrap_optional(field.annotation)
    if tp is bool:
        return None
    if meta.get("metavar"):
        return meta["metavar"]
    origin = get_origin(tp)
    if origin is tuple:
        return " ".join(_scalar_metavar(a) for a in _tuple_items(tp))
    if origin is list:
        (item,) = get_args(tp)
        return _scalar_metavar(item) + "..."
    return _scalar_metavar(tp)


def is_tuple_field(field: FieldInfo) -> bool:
    return get_origin(_unwrap_optional(field.annotation)) is tuple


def help_text(field: FieldInfo) -> str:
    """The help line of a field: description, long choice lists, default, required and not-built marks."""
    meta = field_cli(field)
    tp = _unwrap_optional(field.annotation)
    parts = [field.description or ""]
    choices = _choices(tp)
    if choices and _scalar_metavar(tp) == "CHOICE" and not all(c in parts[0] for c in choices):
        parts.append(f"One of: {', '.join(choices)}.")
    default = field.default
    if not (default is None or default is PydanticUndefined or isinstance(default, bool) or default in ((), [])):
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(getattr(default, "value", default))
        parts.append(f"[default: {shown}]")
    if field.is_required() or meta.get("required") == "always":
        parts.append("[required]")
    elif meta.get("required"):
        parts.append(f"[required {meta['required']}]")
    if meta.get("unbuilt"):
        parts.append("[not built yet: refused]")
    return " ".join(p for p in parts if p)


def required_inputs(options_cls: type[BaseModel]) -> list[str]:
    """What a command cannot run without (arguments first), as help marks it: `PATH`, `--dit`, ..."""
    args, opts = [], []
    for name, field in options_cls.model_fields.items():
        meta = field_cli(field)
        if meta.get("hidden") or not (field.is_required() or meta.get("required")):
            continue
        if meta.get("argument"):
            args.append(argument_label(name, field))
        else:
            opts.append("--" + name)
    return args + opts


def argument_label(name: str, field: FieldInfo) -> str:
    return field_cli(field).get("metavar") or name.upper()


def _typer_param(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """(annotation, typer.Option/Argument) for one field.

    Every value reaches the model as the text the user typed (str, or a list of str for lists and tuples):
    pydantic converts it, so every bad value gets the same message (`--seed: 'abc' is not an integer`).
    """
    meta = field_cli(field)
    tp = _unwrap_optional(field.annotation)
    kwargs: dict[str, Any] = {"help": help_text(field), "hidden": meta.get("hidden", False)}
    if meta.get("panel"):
        kwargs["rich_help_panel"] = meta["panel"]
    if meta.get("argument"):
        kwargs["metavar"] = argument_label(name, field)
    elif metavar(field):
        kwargs["metavar"] = metavar(field)
    if tp is bool:
        annotation: Any = bool
    elif get_origin(tp) in (list, tuple):
        annotation = Optional[list[str]]  # tuples arrive as one value per flag, see `expand_variadic`
    else:
        annotation = Optional[str]
    if meta.get("argument"):
        return annotation, typer.Argument(... if field.is_required() else None, **kwargs)
    # Only the musubi spelling is a click name; `--video-size` is rewritten to it by `normalize_dashes`,
    # which keeps help narrow while both spellings work.
    names = ["--" + name, *meta.get("aliases", ())]
    kwargs["show_default"] = False
    return annotation, typer.Option(False if tp is bool else None, *names, **kwargs)


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
        choices = (_choices(field.annotation) if field is not None else None) or re.findall(
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
    items = _tuple_items(_unwrap_optional(field.annotation))
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


def make_command(
    options_cls: type[BaseModel], run: Callable[[Any], Any], *, doc: str | None = None
) -> Callable[..., Any]:
    """A function with one keyword parameter per field, for `app.command()`; it validates and calls `run`."""
    params = []
    annotations: dict[str, Any] = {}
    fields = options_cls.model_fields
    # Positional arguments first, in declaration order.
    ordered = sorted(fields.items(), key=lambda kv: 0 if field_cli(kv[1]).get("argument") else 1)
    for name, field in ordered:
        annotation, default = _typer_param(name, field)
        annotations[name] = annotation
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

    def command(**kwargs: Any) -> Any:
        given = {k: (tuple(v) if get_origin(_unwrap_optional(fields[k].annotation)) is tuple else v)
                 for k, v in kwargs.items() if v is not None and v is not False and v != [] and v != ()}
        opts = validate(options_cls, given)
        return run(opts)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = doc or options_cls.__doc__
    command.__name__ = options_cls.__name__
    return command


def variadic_flags(options_classes: typing.Iterable[type[BaseModel]]) -> set[str]:
    """The options that take several values (underscore spelling): musubi `nargs="*"` ones and tuples
    (`--video_size H W`), whose values are counted by the model, so that a wrong count is one clear line."""
    return {
        "--" + name
        for cls in options_classes
        for name, field in cls.model_fields.items()
        if field_cli(field).get("variadic") or is_tuple_field(field)
    }


def known_flags(options_classes: typing.Iterable[type[BaseModel]]) -> set[str]:
    return {"--" + name for cls in options_classes for name in cls.model_fields}


def normalize_dashes(argv: list[str], known: set[str]) -> list[str]:
    """`--video-size 512 768` -> `--video_size 512 768` (also `--x-y=v`) for every known option."""
    out = []
    for i, tok in enumerate(argv):
        if tok == "--":
            return out + argv[i:]
        if tok.startswith("--") and "-" in tok[2:]:
            name, eq, value = tok.partition("=")
            cand = "--" + name[2:].replace("-", "_")
            if cand in known:
                tok = cand + eq + value
        out.append(tok)
    return out


def _is_value(tok: str) -> bool:
    if not tok.startswith("-") or tok == "-":
        return True
    try:
        float(tok)
        return True
    except ValueError:
        return False


def tuple_flags(options_classes: typing.Iterable[type[BaseModel]]) -> set[str]:
    """The fixed-count options (`--video_size H W`), underscore spelling."""
    return {"--" + name for cls in options_classes for name, field in cls.model_fields.items() if is_tuple_field(field)}


def expand_variadic(argv: list[str], variadic: set[str], tuples: set[str] = frozenset()) -> list[str]:
    """`--lora_weight a b --x` -> `--lora_weight a --lora_weight b --x` (click options take one value each).

    A tuple option given no value gets an empty one, so that the model reports the expected form
    (`--video_size: two numbers: H W (got '')`). Stops at `--` (everything after it is left alone).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        if tok in variadic:
            i += 1
            values = []
            while i < len(argv) and _is_value(argv[i]):
                values.append(argv[i])
                i += 1
            if not values and tok in tuples:
                values = [""]
            if not values:
                out.append(tok)  # let click report the missing value
            for v in values:
                out += [tok, v]
            continue
        out.append(tok)
        i += 1
    return out
