"""Engines of `framepack lora convert` and `framepack lora merge` (`lora inspect` is `describe_lora`, rendered
by `framepack_cli.cli.reports`).

The work is in `framepack_cli.models.lora`. Results (`Wrote <path>`) go to the sink's stdout channel, progress
and warnings to its messages; errors are raised as `FramepackError` (one line, exit 2) by the library, write
failures as `ResourceError` (exit 3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from framepack_cli.engine.loras import lora_specs_from_options
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.models.lora import (
    NETWORK_LABELS,
    convert_lora_file,
    merge_dit_file,
    read_lora,
)
from framepack_cli.options.lora import LoraConvertOptions, LoraMergeOptions


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


def run_convert(opts: LoraConvertOptions, sink: ProgressSink) -> None:
    """Run `framepack lora convert` with validated options."""
    src = _write(opts.output, lambda: convert_lora_file(opts.file, opts.to, opts.output, overwrite=opts.overwrite))
    out = read_lora(opts.output, flag="--output")
    sink.message(f"Converted {src.path.name} ({src.format}, {len(src.modules)} FramePack modules, "
             f"{len(src.unused)} keys unused) to {opts.to} ({out.n_keys} tensors)")
    lycoris = sorted({NETWORK_LABELS[m.kind] for m in src.modules.values()} - {NETWORK_LABELS["lora"]})
    if lycoris and opts.to != "musubi":
        sink.message(f"Warning: {', '.join(lycoris)} modules keep their LyCORIS keys under the {opts.to} prefix; "
                 f"framepack reads them, but other {opts.to} loaders may not")
    sink.result(f"Wrote {opts.output}")


def run_merge(opts: LoraMergeOptions, sink: ProgressSink) -> None:
    """Run `framepack lora merge` with validated options."""
    _write(opts.output, lambda: merge_dit_file(
        opts.dit, lora_specs_from_options(opts), opts.output, dtype=opts.dtype, overwrite=opts.overwrite,
        verbose=getattr(opts, "verbose", False), progress=sink.message))
    sink.result(f"Wrote {opts.output}")
