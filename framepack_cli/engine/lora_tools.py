"""Engines of `framepack lora inspect`, `framepack lora convert` and `framepack lora merge`.

The work is in `framepack_cli.models.lora`; these runners print. Results (the inspect report or its `--json`,
`Wrote <path>`) go to stdout; progress and warnings to stderr; errors are raised as `FramepackError` (one
line, exit 2) by the library, write failures as `ResourceError` (exit 3).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framepack_cli.engine.loras import lora_specs_from_options
from framepack_cli.models.lora import (
    NETWORK_LABELS,
    convert_lora_file,
    describe_lora,
    merge_dit_file,
    read_lora,
)
from framepack_cli.options.lora import LoraConvertOptions, LoraInspectOptions, LoraMergeOptions


def _list(values: list[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "-"


def run_inspect(opts: LoraInspectOptions) -> dict[str, Any]:
    """Run `framepack lora inspect` with validated options; returns the object printed by `--json`."""
    info = describe_lora(opts.file, verbose=opts.verbose)
    if opts.json_output:
        print(json.dumps(info))
        return info
    from framepack_cli.cli.render import print_rows

    rows: list[tuple[str, str]] = [
        ("format", f"{info['format']} ({info['network']})"),
        ("tensors", f"{info['tensors']} ({', '.join(info['dtypes'])})"),
    ]
    split = "" if info["file_modules"] == info["framepack_modules"] else f" (from {info['file_modules']} in the file)"
    rows.append(("modules", f"{info['framepack_modules']} FramePack modules{split}"))
    rows.append(("rank", _list(info["ranks"])))
    rows.append(("alpha", _list(info["alphas"]) if info["alphas"] else "none (scale 1)"))
    rows.append(("scale", _list(info["scales"])))
    for block, entry in info["targets"].items():
        where = f"{block} {entry['blocks']}" if entry["blocks"] else "outside the blocks"
        rows.append((f"  {where}", ", ".join(entry["modules"])))
    if info["unused_keys"]:
        keys = list(info["unused_keys"].items())
        shown = keys if opts.verbose else keys[:3]
        more = "" if len(shown) == len(keys) else f" (first {len(shown)}; --verbose lists all)"
        rows.append(("unused keys", f"{len(keys)}{more}"))
        rows += [("", f"{k}: {why}") for k, why in shown]
    if opts.verbose:
        for m in info["modules"]:
            rows.append((f"  {m['module']}", f"{m['network']} rank {m['rank']} alpha {m['alpha']} "
                         f"{m['shape'][0]}x{m['shape'][1]} <- {m['source']}"))
    meta = info["metadata"]
    hidden = info["metadata_keys"] - len(meta)
    rows.append(("metadata", f"{info['metadata_keys']} keys" + (f" ({hidden} shown with --verbose)" if hidden else "")))
    for k, v in meta.items():
        v = v if opts.verbose or len(v) <= 100 else v[:97] + "..."
        rows.append((f"  {k}", v))
    print_rows(rows)
    return info


def _message(text: str) -> None:
    """Progress and warnings: stderr."""
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def _result(text: str) -> None:
    """Results (`Wrote <path>`): stdout, one line each."""
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def _write(output: str, write: Callable[[], Any]) -> Any:
    """Run `write` for `--output`: its folder is created and proven writable first (and removed again when
    the command fails and leaves it empty); a write error is one line with exit code 3."""
    from framepack_cli.io.writable import ensure_writable_dir, remove_created, resource_error_for, writing_failed

    folder = Path(output).parent
    created = ensure_writable_dir(folder, "--output")
    try:
        return write()
    except OSError as e:
        if not writing_failed(e, output):
            raise
        raise resource_error_for(e, "--output", output) from None
    finally:
        remove_created(folder, created)


def run_convert(opts: LoraConvertOptions) -> None:
    """Run `framepack lora convert` with validated options."""
    src = _write(opts.output, lambda: convert_lora_file(opts.file, opts.to, opts.output, overwrite=opts.overwrite))
    out = read_lora(opts.output, flag="--output")
    _message(f"Converted {src.path.name} ({src.format}, {len(src.modules)} FramePack modules, "
             f"{len(src.unused)} keys unused) to {opts.to} ({out.n_keys} tensors)")
    lycoris = sorted({NETWORK_LABELS[m.kind] for m in src.modules.values()} - {NETWORK_LABELS["lora"]})
    if lycoris and opts.to != "musubi":
        _message(f"Warning: {', '.join(lycoris)} modules keep their LyCORIS keys under the {opts.to} prefix; "
                 f"framepack reads them, but other {opts.to} loaders may not")
    _result(f"Wrote {opts.output}")


def run_merge(opts: LoraMergeOptions) -> None:
    """Run `framepack lora merge` with validated options."""
    _write(opts.output, lambda: merge_dit_file(
        opts.dit, lora_specs_from_options(opts), opts.output, dtype=opts.dtype, overwrite=opts.overwrite,
        verbose=getattr(opts, "verbose", False), progress=_message))
    _result(f"Wrote {opts.output}")
