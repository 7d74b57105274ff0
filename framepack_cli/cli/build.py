"""Turn a pydantic options model into a typer command.

The options model is the one source of truth: each field becomes an option named both `--field_name`
(musubi spelling) and `--field-name`, with the field's description as help and its default shown. Typer
passes `None`/`False` for everything the user did not give; only given values reach the model, so
pydantic applies the defaults and `model_fields_set` tells what the user chose (kisekae recipes use it).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Optional, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from framepack_cli.cli.models import validate_with_models
from framepack_cli.options.fields import (
    argument_label,
    choices_of,
    field_cli,
    is_tuple_field,
    metavar,
    scalar_metavar,
    unwrap_optional,
)

# Validation lives in options (plain pydantic: engines validate batch lines with it too).
from framepack_cli.options.validation import validate


def help_text(field: FieldInfo) -> str:
    """The help line of a field: description, long choice lists, default, required and not-built marks."""
    meta = field_cli(field)
    tp = unwrap_optional(field.annotation)
    parts = [field.description or ""]
    choices = choices_of(tp)
    if choices and scalar_metavar(tp) == "CHOICE" and not all(c in parts[0] for c in choices):
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


def _typer_param(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """(annotation, typer.Option/Argument) for one field.

    Every value reaches the model as the text the user typed (str, or a list of str for lists and tuples):
    pydantic converts it, so every bad value gets the same message (`--seed: 'abc' is not an integer`).
    """
    meta = field_cli(field)
    tp = unwrap_optional(field.annotation)
    kwargs: dict[str, Any] = {"help": help_text(field), "hidden": meta.get("hidden", False)}
    if meta.get("panel"):
        kwargs["rich_help_panel"] = meta["panel"]
    if meta.get("argument"):
        kwargs["metavar"] = argument_label(name, field)
    elif metavar(field):
        kwargs["metavar"] = metavar(field)
    if tp is bool:
        annotation: Any = bool
    elif get_origin(tp) in (list, tuple) or meta.get("variadic"):  # `--seed 1 2 3` on an `int | list[int]` field
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
        given = {k: (tuple(v) if get_origin(unwrap_optional(fields[k].annotation)) is tuple else v)
                 for k, v in kwargs.items() if v is not None and v is not False and v != [] and v != ()}
        if given.get("settings_from") is not None:  # command line > the stored run's options > defaults
            from framepack_cli.cli.rerun import apply_settings_from

            given = apply_settings_from(options_cls, given)
        # model flags not given: the downloaded models, or one line with the download command
        opts = validate_with_models(options_cls, given, validate)
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
