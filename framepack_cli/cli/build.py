"""Turn a pydantic options model into a typer command.

The options model is the one source of truth: each field becomes an option named both `--field_name`
(musubi spelling) and `--field-name`, with the field's description as help and its default shown. Typer
passes `None`/`False` for everything the user did not give; only given values reach the model, so
pydantic applies the defaults and `model_fields_set` tells what the user chose (kisekae recipes use it).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Optional, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# OptionsError is imported from here by engine.generate until it imports framepack_cli.options.validation itself.
from framepack_cli.options.validation import OptionsError, validate  # noqa: F401


def field_cli(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return dict(extra.get("cli") or {})


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _typer_param(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """(annotation, typer.Option/Argument) for one field."""
    meta = field_cli(field)
    tp = _unwrap_optional(field.annotation)
    default = field.default
    help_text = field.description or ""
    kwargs: dict[str, Any] = {"help": help_text, "hidden": meta.get("hidden", False)}
    if meta.get("panel"):
        kwargs["rich_help_panel"] = meta["panel"]
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    # Shown in the help text itself: typer would print the string default in parentheses.
    show = not (default is None or default is PydanticUndefined or isinstance(default, bool) or default in ((), []))
    if show:
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        kwargs["help"] = f"{help_text} \\[default: {shown}]".strip()
    kwargs["show_default"] = False
    origin = get_origin(tp)
    if tp is bool:
        annotation = bool
    elif origin is list:
        (item,) = get_args(tp)
        annotation = Optional[list[item]]  # type: ignore[valid-type]
    else:
        annotation = Optional[tp]  # Literal -> click.Choice, tuple -> nargs, both by typer
    if meta.get("argument"):
        required = field.is_required()
        kwargs.pop("show_default", None)
        return annotation, typer.Argument(... if required else None, **kwargs)
    # Only the musubi spelling is a click name; `--video-size` is rewritten to it by `normalize_dashes`,
    # which keeps help narrow while both spellings work.
    names = ["--" + name, *meta.get("aliases", ())]
    if tp is bool:
        return annotation, typer.Option(False, *names, **kwargs)
    if field.is_required():
        kwargs["help"] = (help_text + " \\[required]").strip()
    return annotation, typer.Option(None, *names, **kwargs)


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
    """The musubi `nargs="*"` options across commands (underscore spelling)."""
    return {
        "--" + name
        for cls in options_classes
        for name, field in cls.model_fields.items()
        if field_cli(field).get("variadic")
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


def expand_variadic(argv: list[str], variadic: set[str]) -> list[str]:
    """`--lora_weight a b --x` -> `--lora_weight a --lora_weight b --x` (click options take one value each).

    Stops at `--` (everything after it is left alone).
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
            if not values:
                out.append(tok)  # let click report the missing value
            for v in values:
                out += [tok, v]
            continue
        out.append(tok)
        i += 1
    return out
