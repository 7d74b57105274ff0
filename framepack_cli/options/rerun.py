"""Re-creating a run from its outputs (`--settings_from OUTPUT`, `framepack inspect OUTPUT`); torch-free.

Every output we write carries the run's options in its metadata (`framepack` JSON, key `options`: each option
whose value differs from `framepack generate`'s default, as JSON; `seed`: the seed actually used; `command`: the
subcommand). Left out are the options that only say how a run is carried out, not what it makes: where the
models are searched (`--models_dir`), the memory plan's block swapping, batch / interactive / decode-only modes
and `--verbose`.
"""

from __future__ import annotations

import shlex
from typing import Any

NOT_STORED = frozenset({
    "seed", "count", "settings_from", "models_dir", "blocks_to_swap", "use_pinned_memory_for_block_swap", "memory",
    "from_file", "interactive", "keep_models", "latent_path", "save_merged_model", "verbose", "no_metadata",
    # how a run is watched or continued, not what it makes (a re-run must not try to resume a finished run)
    "resume", "no_resume_file", "preview", "preview_mode",
})
COMMANDS = {"GenerateOptions": "generate", "OneFrameOptions": "one-frame", "KisekaeOptions": "kisekae"}
# Option values that name input images (checked by sha256 when a run is re-created), by flag.
IMAGE_FIELDS = ("image_path", "end_image_path", "control_image_path", "control_image_mask_path", "start",
                "reference", "start_mask", "reference_mask")


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def command_of(opts) -> str:
    """`generate`, `one-frame` or `kisekae`: the subcommand whose options model `opts` is."""
    return COMMANDS.get(type(opts).__name__, "generate")


def options_class(command: str):
    from framepack_cli.options import generate as g

    return {"generate": g.GenerateOptions, "one-frame": g.OneFrameOptions, "kisekae": g.KisekaeOptions}[command]


def stored_options(opts) -> dict[str, Any]:
    """The options of a job to store in its outputs: those differing from `framepack generate`'s defaults."""
    from framepack_cli.options.generate import GenerateOptions

    base = GenerateOptions.model_fields
    out = {}
    for name in type(opts).model_fields:
        if name in NOT_STORED:
            continue
        value = getattr(opts, name)
        field = base.get(name)
        if field is not None and not field.is_required() and value == field.default:
            continue
        if name not in base and value is None:
            continue
        out[name] = _json(value)
    return out


def image_paths(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(flag, path) of every input image the option values name, section images included, in order."""
    from framepack_cli.options.sections import parse_section_values

    out: list[tuple[str, str]] = []
    for name in IMAGE_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if name == "image_path":
            try:
                paths = list(dict.fromkeys(parse_section_values(value).values()))
            except ValueError:
                paths = [value]
        else:
            paths = value if isinstance(value, list) else [value]
        flag = "--" + name
        out += [(flag, str(p)) for p in paths if p]
    return out


def run_values(settings: dict[str, Any]) -> dict[str, Any]:
    """The option values that re-create a run, from its `framepack` settings (`options` plus the seed used)."""
    values = dict(settings.get("options") or {})
    if settings.get("seed") is not None:
        values["seed"] = settings["seed"]
    return values


def command_line(command: str, values: dict[str, Any]) -> str:
    """The `framepack <command> ...` line that re-creates these option values (options at the command's default
    left out), shell-quoted."""
    cls = options_class(command)
    words = ["framepack", command]
    for name, field in cls.model_fields.items():
        if name not in values:
            continue
        value = values[name]
        default = _json(field.default) if not field.is_required() else object()
        if value == default or value is None or value is False:
            continue
        flag = "--" + name
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *(shlex.quote(str(v)) for v in value)]
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)
