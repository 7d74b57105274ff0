"""Import direction (STYLE.md): options stay torch-free (fast --help), engines never import the CLI layer,
models and io know nothing about options, engines or the CLI, plan is pure."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "framepack_cli"
HEAVY = ("torch", "transformers", "diffusers", "safetensors", "av", "cv2")


def imports(path: Path) -> set[str]:
    """Modules imported anywhere in the file (module level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def module_level_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def files(sub: str) -> list[Path]:
    return sorted((PKG / sub).glob("*.py"))


def test_options_import_no_heavy_library():
    for f in files("options"):
        bad = {m for m in imports(f) if m.split(".")[0] in HEAVY}
        assert not bad, f"{f.name} imports {bad}: options must stay importable without torch"


def test_cli_modules_import_torch_only_lazily():
    for f in files("cli"):
        bad = {m for m in module_level_imports(f) if m.split(".")[0] in HEAVY}
        assert not bad, f"{f.name} imports {bad} at module level: --help would load them"


# Engines that still reach into the CLI inside a function (their default progress sink, option validation);
# being moved to the sink the CLI passes (`cli.app.call_runner`) and to `options.validation`.
CLI_INSIDE_FUNCTIONS_PENDING = {"generate.py"}


def test_engines_never_import_the_cli_layer_even_inside_functions():
    for f in files("engine"):
        if f.name in CLI_INSIDE_FUNCTIONS_PENDING:
            continue
        bad = {m for m in imports(f) if m.startswith("framepack_cli.cli")}
        assert not bad, f"{f.name} imports {bad}; take the ProgressSink the CLI passes instead"


def test_io_knows_nothing_of_options_engines_or_cli():
    for f in files("io"):
        bad = {m for m in imports(f) if m.startswith(("framepack_cli.options", "framepack_cli.engine",
                                                      "framepack_cli.cli"))}
        assert not bad, f"{f.name} imports {bad}: pass plain values (paths, extensions) instead"


def test_engines_do_not_import_the_cli_layer():
    for f in files("engine"):
        bad = {m for m in module_level_imports(f) if m.split(".")[0] in ("typer", "rich") or
               m.startswith("framepack_cli.cli")}
        assert not bad, f"{f.name} imports {bad} at module level; report through ProgressSink instead"


def test_models_know_nothing_of_options_engines_or_cli():
    for f in files("models"):
        bad = {m for m in imports(f) if m.startswith(("framepack_cli.options", "framepack_cli.engine",
                                                      "framepack_cli.cli"))}
        assert not bad, f"{f.name} imports {bad}"


def test_plan_and_sampling_are_pure():
    for f in files("plan") + files("sampling"):
        bad = {m for m in imports(f) if m.split(".")[0] in ("safetensors", "av", "cv2", "transformers", "diffusers")
               or m.startswith(("framepack_cli.models", "framepack_cli.engine", "framepack_cli.cli"))}
        assert not bad, f"{f.name} imports {bad}"


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


def test_plan_is_plain_python():
    """plan/ decides from numbers and names: no torch, no file formats, nothing of the layers above it."""
    for f in files("plan"):
        bad = {m for m in imports(f) if m.split(".")[0] in ("torch", "numpy", "PIL")
               or m.startswith(("framepack_cli.options", "framepack_cli.io", "framepack_cli.models",
                                "framepack_cli.engine", "framepack_cli.cli"))}
        assert not bad, f"{f.name} imports {bad}"
