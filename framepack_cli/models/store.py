"""Finding the downloaded models without touching the network: model resolution.

Places, in order: `--models_dir`, `$FRAMEPACK_HOME/models` (default `~/.cache/framepack/models`), the Hugging Face
cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`). Every place has the hub cache layout
(`models--<owner>--<name>/snapshots/<commit>/...`, what `framepack download` writes); each is read with
huggingface_hub's own cache reader (`snapshot_download(..., local_files_only=True)`), which never opens a connection.

API (doctor and inspect use it too):
- `store_places(models_dir)` -> [(Path, label)] in search order;
- `find_component(component, places)` -> `Found | None` (`Found.path` is what the model flag gets);
- `resolve_models(flags, f1=..., models_dir=...)` -> `Resolution` (`found`: flag -> Found, `missing`: component
  names, `.command`: the download command, `.line()`: the `Models: ...` line, `.missing_message()`);
- `find_tokenizer_snapshot(kind, places)` -> the `tokenizer/` or `tokenizer_2/` folder, or None;
- `scan_places(places)` -> every component found, for listings.

huggingface_hub is imported inside the functions, so `framepack --help` stays light.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from framepack_cli.plan.model_catalog import (
    COMPONENTS,
    HUNYUAN,
    REVISION,
    Component,
    Source,
    dit_component,
    download_command,
    path_matches,
)


def framepack_home() -> Path:
    """`$FRAMEPACK_HOME`, default `~/.cache/framepack`."""
    home = os.environ.get("FRAMEPACK_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "framepack"


def default_models_dir() -> Path:
    """Where `framepack download` writes without `--models_dir`: `$FRAMEPACK_HOME/models`."""
    return framepack_home() / "models"


def hf_hub_cache() -> Path:
    """The HF hub cache folder, read from the environment at call time (as huggingface_hub resolves it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def store_places(models_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """The folders searched, in order, with the label each run prints (`--models_dir`, `$FRAMEPACK_HOME`,
    `HF cache`)."""
    out: list[tuple[Path, str]] = []
    if models_dir is not None:
        out.append((Path(models_dir).expanduser(), "--models_dir"))
    out.append((default_models_dir(), "$FRAMEPACK_HOME"))
    out.append((hf_hub_cache(), "HF cache"))
    seen: set[Path] = set()
    unique = []
    for p, label in out:
        key = p.resolve() if p.exists() else p
        if key not in seen:
            seen.add(key)
            unique.append((p, label))
    return unique


def snapshot_dir(source: Source, cache_dir: Path) -> Path | None:
    """The cached snapshot folder of `source`'s repository at its revision, or None (offline, never the network)."""
    if not (cache_dir / ("models--" + source.repo.replace("/", "--"))).is_dir():
        return None  # quick and quiet: huggingface_hub would raise for a missing repo folder anyway
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
    )

    try:
        folder = snapshot_download(source.repo, revision=source.revision, cache_dir=str(cache_dir),
                                   local_files_only=True, allow_patterns=list(source.files))
    except (LocalEntryNotFoundError, IncompleteSnapshotError, HFValidationError, HfHubHTTPError, OSError):
        return None
    return Path(folder)


def _files_in(snap: Path, pattern: str) -> list[Path]:
    base = snap / os.path.dirname(pattern) if "/" in pattern else snap
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir()
                  if p.is_file() and path_matches(p.relative_to(snap).as_posix(), pattern))


def complete_entry(source: Source, snap: Path) -> Path | None:
    """The entry file of `source` in a snapshot folder when it is usable: present, and with every shard its index
    names (a half-downloaded sharded set is not found, so the download command is printed, not a load error)."""
    entries = _files_in(snap, source.entry)
    if not entries:
        return None
    if source.index is not None:
        index = snap / source.index
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        folder = index.parent
        if not all((folder / s).is_file() for s in shards):
            return None
        named = sorted(folder / s for s in shards)
        return named[0] if named else None
    return entries[0]


@dataclass(frozen=True)
class Found:
    """A model found on disk: `path` is what its flag gets; `place` the label of the folder searched."""

    component: str
    path: Path
    place: str
    repo: str
    source: str  # Source.label


def find_component(comp: Component, places: list[tuple[Path, str]]) -> Found | None:
    """The first usable copy of a component: places in order, within a place the catalog's sources in order."""
    for cache_dir, label in places:
        for src in comp.sources:
            snap = snapshot_dir(src, cache_dir)
            if snap is None:
                continue
            entry = complete_entry(src, snap)
            if entry is not None:
                return Found(comp.name, entry, label, src.repo, src.label)
    return None


def find_tokenizer_snapshot(kind: int, places: list[tuple[Path, str]] | None = None) -> Path | None:
    """`tokenizer/` (kind 1) or `tokenizer_2/` (kind 2) of hunyuanvideo-community/HunyuanVideo in the places."""
    name = "tokenizer" if kind == 1 else "tokenizer_2"
    src = Source(HUNYUAN, (f"{name}/*",), entry=f"{name}/*", revision=REVISION)
    for cache_dir, _label in places if places is not None else store_places():
        snap = snapshot_dir(src, cache_dir)
        if snap is not None and (snap / name).is_dir():
            return snap / name
    return None


@dataclass
class Resolution:
    """What `resolve_models` found: flag -> Found, the components it did not find, and the fix."""

    found: dict[str, Found] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # component names (`dit` = the DiT of --f1)
    places: list[tuple[Path, str]] = field(default_factory=list)
    f1: bool = False
    models_dir: str | None = None

    also: list[str] = field(default_factory=list)  # components without a flag the fix should fetch too

    @property
    def command(self) -> str:
        return download_command(self.missing + self.also, f1=self.f1, models_dir=self.models_dir)

    def line(self) -> str:
        """`Models: --dit .../diffusion_pytorch_model-00001-of-00003.safetensors ($FRAMEPACK_HOME), ...`"""
        parts = [f"{flag} {f.path} ({f.place})" for flag, f in self.found.items()]
        return "Models: " + ", ".join(parts)

    def missing_message(self) -> str:
        flags = [COMPONENTS[n].flag or n for n in self.missing]
        what = ", ".join(flags)
        where = ", ".join(f"{label} {p}" for p, label in self.places)
        return (f"{what}: not given and not found (looked in {where}); fetch with `{self.command}` "
                f"or pass {' / '.join(f for f in flags if f.startswith('--')) or what}")


def resolve_models(flags: list[str], *, f1: bool = False, models_dir: str | Path | None = None) -> Resolution:
    """Find the files for the model flags a run needs but was not given (`["--dit", "--vae", ...]`).

    Never touches the network. `--dit` means the F1 DiT with `f1`, else the vanilla one.
    """
    places = store_places(models_dir)
    res = Resolution(places=places, f1=f1, models_dir=None if models_dir is None else str(models_dir))
    for flag in flags:
        comp = dit_component(f1) if flag == "--dit" else COMPONENTS[flag[2:]]
        found = find_component(comp, places)
        if found is None:
            res.missing.append("dit" if flag == "--dit" else comp.name)
        else:
            res.found[flag] = found
    if res.missing and {"--text_encoder1", "--text_encoder2"} & set(flags):
        if any(find_tokenizer_snapshot(kind, places) is None for kind in (1, 2)):
            res.also.append("tokenizers")
    return res


def scan_places(places: list[tuple[Path, str]]) -> list[Found]:
    """Every catalog component found in the places (first copy of each), for `inspect DIR` and `doctor`."""
    out = []
    for comp in COMPONENTS.values():
        found = find_component(comp, places)
        if found is not None:
            out.append(found)
    return out
