"""`--settings_from OUTPUT`: the command line of a run, re-created from the settings stored in one of its outputs.

The stored options (`framepack_cli.options.rerun`) fill every option the command line does not give: command
line > settings file > defaults. The input images are found by the paths stored and must still be the same files
(sha256); a missing or changed image is one line naming it and the flag that replaces it (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.io.hashing import sha256_file

FLAG = "--settings_from"


def stored_run(path: str) -> dict[str, Any]:
    """The `framepack` settings of an output, with the options that re-create it.

    Raises:
        FramepackError: no such output, or one without our settings (`--no_metadata`, another tool, an older
            framepack that did not store every option).
    """
    from framepack_cli.io.run_settings import read_run_metadata, run_settings

    try:
        _, meta = read_run_metadata(path)
    except FramepackError as e:
        raise FramepackError(f"{FLAG}: {e.message}", hint=e.hint) from None
    settings = run_settings(meta)
    if settings is None:
        raise FramepackError(f"{FLAG}: {path} carries no framepack settings (written with --no_metadata, or not by "
                             "framepack); give the options on the command line instead")
    if "options" not in settings:
        version = settings.get("framepack_version", "?")
        raise FramepackError(f"{FLAG}: {path} was written by framepack {version}, which did not store every option; "
                             f"`framepack inspect {path}` shows what it stored, give the options on the command line")
    return settings


def image_problems(output: str, values: dict[str, Any], given: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """One line per stored input image that is missing or changed (the command line's own images are not checked)."""
    from framepack_cli.options.rerun import image_paths

    hashes: dict[str, str] = settings.get("image_sha256") or {}
    by_name: dict[str, str] = settings.get("images") or {}
    stored = {k: v for k, v in values.items() if k not in given}
    lines = []
    for flag, p in image_paths(stored):
        path = Path(p)
        if not path.is_file():
            lines.append(f"{FLAG}: {output} was made with {flag} {p}, which is not found; put it back or pass "
                         f"{flag} with the image to use")
            continue
        want = hashes.get(str(path.resolve())) or by_name.get(path.name)
        if want is None:  # a relative path now pointing elsewhere: the record names the file it was
            want = next((h for k, h in hashes.items() if Path(k).name == path.name), None)
        if want is not None and sha256_file(path) != want:
            lines.append(f"{FLAG}: {p} ({flag}) has changed since {output} was made (sha256 differs); restore it, "
                         f"or pass {flag} {p} to use it as it is now")
    return lines


def apply_settings_from(options_cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """`given` (the command line) over the options stored in `--settings_from`'s output.

    Raises:
        FramepackError: no settings in the output, a run of another subcommand, a missing or changed image.
    """
    from framepack_cli.options.rerun import run_values

    output = str(given[FLAG[2:]])
    settings = stored_run(output)
    values = run_values(settings)
    unknown = sorted(k for k in values if k not in options_cls.model_fields)
    if unknown:
        command = settings.get("command", "generate")
        raise FramepackError(f"{FLAG}: {output} was made by `framepack {command}` (options "
                             f"{', '.join('--' + k for k in unknown)}); run `framepack {command} {FLAG} {output}`")
    lines = image_problems(output, values, given, settings)
    if lines:
        raise FramepackError("\n".join(lines))
    return {**{k: v for k, v in values.items() if k not in given}, **given}
