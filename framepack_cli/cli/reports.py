"""Reports the CLI renders from engine data: `framepack inspect` and `framepack lora inspect`.

The engines describe (`engine.inspect.describe`, `models.lora.describe_lora`: plain dicts); rendering them,
as `key  value` lines that never cut a name or as `--json`, happens here on stdout.
"""

from __future__ import annotations

import json
from typing import Any

from framepack_cli.cli.render import print_rows
from framepack_cli.options.doctor import DoctorOptions
from framepack_cli.options.inspect import InspectOptions
from framepack_cli.options.lora import LoraInspectOptions


def inspect(opts: InspectOptions) -> dict[str, Any]:
    """`framepack inspect`: what a weights file is, as `key  value` lines (or `--json`) on stdout."""
    from framepack_cli.engine.inspect import describe

    info = describe(opts.path)
    if opts.json_output:
        print(json.dumps(info, indent=None, sort_keys=False))
        return info
    if info["kind"] == "models_dir":
        return _models_dir_rows(info)
    if info["kind"] == "output":
        return _output_rows(info)
    rows = [
        ("kind", f"{info['kind']} ({info['description']})"),
        ("format", f"{info['format']}, {info['layout']}" + (
            f", key prefix {info['key_prefix']!r}" if info["key_prefix"] else "")),
        ("dtype", ", ".join(f"{k} ({v:,})" for k, v in info["dtypes"].items())),
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors"),
    ]
    rows += [(f"  {k}", str(v)) for k, v in info["config"].items()]
    print_rows(rows)
    return info


def _output_rows(info: dict[str, Any]) -> dict[str, Any]:
    """`framepack inspect OUTPUT`: the stored settings, then the command line that re-creates the run."""
    rows: list[tuple[str, str]] = [("output", f"{info['output']}: {info['path']}")]
    if info["framepack_version"]:
        rows.append(("written by", f"framepack {info['framepack_version']} ({info['command']})"))
    rows.append(("seed", str(info["seed"])))
    shown = info["settings"] or info["metadata"]
    rows += [(f"  {k}", " ".join(map(str, v)) if isinstance(v, list) else str(v))
             for k, v in shown.items() if k != "seed"]
    for path, sha in (info.get("images") or {}).items():
        rows.append(("image", f"{path} sha256 {sha[:16]}..."))
    print_rows(rows)
    if info["command_line"]:
        print(f"command:\n{info['command_line']}")
    else:
        print("command: not stored (an older framepack or another tool wrote this file); the rows above are what "
              "it stored")
    return info


def _models_dir_rows(info: dict[str, Any]) -> dict[str, Any]:
    """`framepack inspect DIR` on a models directory: one row per component, then one per command."""
    rows: list[tuple[str, str]] = [("models directory", info["path"])]
    for name, c in info["components"].items():
        if c is None:
            rows.append((name, "missing"))
            continue
        what = f"{c['repo']} ({c['source']}): {c['path']}"
        if c["kind"] != "tokenizers":
            what += f" [{c['kind']}, {c.get('format', '?')}, {c.get('files', 0)} file(s)]"
        rows.append((name, what if c["ok"] else f"{what} NOT USABLE ({c.get('error') or 'wrong kind'})"))
    if info["other_repos"]:
        rows.append(("other repositories", ", ".join(info["other_repos"])))
    for cmd, c in info["commands"].items():
        rows.append((cmd, "ready" if not c["missing"] else f"missing {', '.join(c['missing'])}: {c['fetch']}"))
    print_rows(rows)
    return info


def doctor(opts: DoctorOptions) -> dict[str, Any]:
    """`framepack doctor`: the machine report as `key  value` rows (or `--json`) on stdout."""
    from framepack_cli.engine.doctor import collect, rows

    facts = collect(opts.models_dir, opts.save_path)
    if opts.json_output:
        print(json.dumps(facts))
    else:
        print_rows(rows(facts))
    return facts


def _list(values: list[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "-"


def lora_inspect(opts: LoraInspectOptions) -> dict[str, Any]:
    """`framepack lora inspect`: the report (or its `--json`) on stdout; returns the object `--json` prints."""
    from framepack_cli.models.lora import describe_lora

    info = describe_lora(opts.file, verbose=opts.verbose)
    if opts.json_output:
        print(json.dumps(info))
        return info
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
