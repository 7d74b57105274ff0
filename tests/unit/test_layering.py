"""The import layering, enforced on every import in the package: module level, inside functions, relative.

    cli -> options -> engine -> plan / sampling / models / io     (errors: anyone)

- cli may import anything; it is the only layer that renders (typer, rich).
- api (the Python API, `framepack_cli/api.py`) is a front end beside cli: it validates with options, runs through
  engine.session, and borrows cli's model lookup; it renders only when asked (`progress=True`).
- options: plain pydantic; never torch or any heavy library, never engine / models / cli; they may read files
  through torch-free io modules (the dataset config), and nothing they import, however deep, loads torch.
- engine: never cli, typer or rich (progress goes through a ProgressSink the CLI supplies).
- models: never options, engine or cli (plain arguments in, models out).
- io: never options, engine or cli.
- plan: pure and torch-free (options use it): only the standard library and plan itself.
- sampling: pure math on tensors: no I/O libraries, no options, models, engine, io or cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "framepack_cli"
HEAVY = ("torch", "transformers", "diffusers", "safetensors", "av", "cv2", "accelerate", "numpy")
FP = "framepack_cli"


def _resolve(node: ast.ImportFrom, module: str) -> str:
    """Absolute module name of an import (relative imports resolved against the importing module)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level]
    return ".".join([*base, node.module] if node.module else base)


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    # a package's __init__ resolves relative imports against the package itself
    return ".".join(rel.parts[:-1]) + ".__init__" if rel.name == "__init__" else ".".join(rel.parts)


def imports_of(path: Path, *, module: str | None = None, module_level_only: bool = False) -> set[str]:
    """Every module a file imports, at any depth (functions, methods, try blocks), relative ones resolved.

    `from pkg import name` also counts `pkg.name` (it may be a submodule).
    """
    module = module or module_name(path)
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if a.name != "*"}
    return out


def _files(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if parts[0] == FP and len(parts) > 1 else None


RULES = {
    # layer: (forbidden framepack layers, forbidden third-party top-level packages)
    "options": ({"engine", "models", "cli", "sampling"}, set(HEAVY)),
    "engine": ({"cli"}, {"typer", "rich", "click"}),
    "models": ({"options", "engine", "cli"}, {"typer", "rich", "click"}),
    "io": ({"options", "engine", "cli"}, {"typer", "rich", "click"}),
    # options import plan, so plan stays torch-free too
    "plan": ({"options", "engine", "models", "io", "cli", "sampling"}, set(HEAVY) | {"typer", "rich", "click"}),
    "sampling": ({"engine", "models", "io", "cli", "options"}, {"safetensors", "av", "cv2", "transformers",
                                                               "diffusers", "typer", "rich"}),
}


def _violations(layer: str) -> list[str]:
    bad_layers, bad_packages = RULES[layer]
    out = []
    for f in _files(layer):
        for mod in sorted(imports_of(f)):
            target = _layer(mod)
            if (target in bad_layers) or (mod.split(".")[0] in bad_packages):
                out.append(f"{f.relative_to(PKG.parent)} imports {mod}")
    return out


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports(layer):
    assert _violations(layer) == []


def test_options_load_no_heavy_library_however_deep():
    """What `--help` and validation import: every options module, and all they import, without torch."""
    import subprocess
    import sys

    mods = [module_name(f) for f in _files("options") if f.name != "__init__.py"]
    script = "import sys\n" + "".join(f"import {m}\n" for m in mods) + (
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=PKG.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_imports_torch_only_when_a_command_runs():
    bad = [f"{f.name}: {m}" for f in _files("cli") for m in imports_of(f, module_level_only=True)
           if m.split(".")[0] in HEAVY]
    assert bad == [], "--help would load them"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The rules above are only as good as the import finder: it must see what hides in functions."""
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    from framepack_cli.cli.render import RichProgress\n"
                     "    try:\n        from ..cli import build\n    except ImportError:\n        pass\n"
                     "    from . import progress\n")
    found = imports_of(probe, module="framepack_cli.engine.probe")
    assert {"json", "framepack_cli.cli.render", "framepack_cli.cli.build", "framepack_cli.engine.progress"} <= found
    assert _layer("framepack_cli.cli.build") == "cli"
    assert imports_of(probe, module="framepack_cli.engine.probe", module_level_only=True) == {"json"}


def test_no_module_imports_another_modules_private_names():
    """Underscore names are module-private: a helper two modules share is public in one of them."""
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        tree = ast.parse(f.read_text())
        aliases = {a.asname or a.name.rsplit(".", 1)[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module and n.module.startswith("framepack_cli") for a in n.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("framepack_cli"):
                bad += [f"{f.relative_to(PKG)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                  and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{f.relative_to(PKG)}: {node.value.id}.{node.attr}")
    assert not bad, bad
