"""Model resolution at the command line: the model flags a run needs but was not given are filled from the
downloaded models (`framepack_cli.models.store`: `--models_dir`, `$FRAMEPACK_HOME/models`, the HF cache), before
the options are validated, so every later check (kinds, DiT and encoders belonging together) sees real paths.

One stderr line says which file each model came from; a model found nowhere is one line with the exact
`framepack download ...` command that fetches it (exit 2). Nothing here touches the network.

An options model takes part by defining `model_flags(given) -> tuple[str, ...]` (classmethod): the model flags
(`--dit`, `--vae`, `--text_encoder1`, `--text_encoder2`, `--image_encoder`) the run described by the raw values
`given` needs. `--f1` in `given` means the F1 DiT, `--models_dir` the first place searched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_cli.errors import FramepackError
from framepack_cli.plan.model_catalog import COMPONENTS

if TYPE_CHECKING:
    from framepack_cli.models.store import Resolution


def fill_models(options_cls: type, given: dict[str, Any]) -> tuple[dict[str, Any], Resolution | None]:
    """`given` with the missing model flags filled in from the downloaded models, and the resolution when some
    needed model was found nowhere (None when all were found or none was needed).

    Raises:
        FramepackError: `--models_dir` is not a folder.
    """
    needs = getattr(options_cls, "model_flags", None)
    if needs is None:
        return given, None
    models_dir = given.get("models_dir")
    if models_dir is not None and not Path(models_dir).expanduser().is_dir():
        raise FramepackError(f"--models_dir: folder not found: {models_dir}",
                             hint=f"fetch the models there with `framepack download --models_dir {models_dir}`")
    try:
        flags = [f for f in needs(given) if given.get(f[2:]) is None]
    except ValueError:
        return given, None  # a bad value (e.g. an unreadable --config_file): validation reports it
    if not flags:
        return given, None
    from framepack_cli.models.store import resolve_models

    res = resolve_models(flags, f1=bool(given.get("f1")), models_dir=models_dir)
    filled = {**given, **{flag[2:]: str(found.path) for flag, found in res.found.items()}}
    if res.missing:
        return filled, res
    sys.stderr.write(res.line() + "\n")
    return filled, None


def validate_with_models(options_cls: type, given: dict[str, Any], validate) -> Any:
    """Fill the model flags (`fill_models`), then validate. A model found nowhere is one line with the
    download command, in place of the options' own `--x: required ...` lines, together with every other
    problem of the command line (bad values alone are reported first, as before)."""
    given, missing = fill_models(options_cls, given)
    if missing is None:
        return validate(options_cls, given)
    line = missing.missing_message()
    try:
        validate(options_cls, given)
    except FramepackError as e:
        names = tuple(f"{COMPONENTS[n].flag}: required" for n in missing.missing if COMPONENTS[n].flag)
        lines = e.message.splitlines()
        kept = [ln for ln in lines if not ln.startswith(names)]
        if len(kept) == len(lines):
            raise  # bad values stop validation before the cross-field checks: those lines first
        raise FramepackError("\n".join([*kept, line]), hint=e.hint) from None
    raise FramepackError(line)
