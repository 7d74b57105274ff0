"""Finding and reading a dataset's files: the config file, image and video folders, JSONL lists, captions and
control files. Standard library only (no torch); plain paths and values in, plain values out -- the schema
and the error lines naming config keys are `options.dataset`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")


def list_files(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files directly inside `directory` (not recursive) whose suffix is one of `extensions`, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix.lower() in extensions)


def list_images(directory: Path) -> list[Path]:
    """Image files directly inside `directory` (not recursive), sorted by name."""
    return list_files(directory, IMAGE_EXTENSIONS)


def list_videos(directory: Path) -> list[Path]:
    """Video files directly inside `directory` (not recursive), sorted by name."""
    return list_files(directory, VIDEO_EXTENSIONS)


def read_config_file(path: Path) -> Any:
    """The parsed `.toml` or `.json` dataset config.

    Raises:
        FramepackError: another suffix, missing, unreadable or invalid file.
    """
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise FramepackError(f"{path}: dataset config must be a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FramepackError(f"{path}: dataset config not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FramepackError(f"{path}: cannot read dataset config ({e})") from None
    try:
        if suffix == ".json":
            return json.loads(text)
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise FramepackError(f"{path}: invalid {suffix[1:].upper()} ({e})") from None


def caption_file(media: Path, caption_extension: str) -> Path:
    """Where the caption of an image or video lives: `<name without suffix><caption_extension>` beside it."""
    return media.with_name(media.stem + caption_extension)


def read_caption(path: Path) -> str | None:
    """A caption file's text, stripped; None when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """The JSON objects of a JSONL file with their line numbers (blank lines skipped), and its problems.

    Returns:
        `[(line number, object)]` and one problem line per unreadable file or bad line (naming the file).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [], [f"cannot read {path} ({e})"]
    out, problems = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path} line {n}: invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path} line {n}: expected a JSON object")
            continue
        out.append((n, obj))
    return out, problems


def match_controls(stem: str, pool: list[Path]) -> list[Path]:
    """Controls of an image: `<stem>.<ext>` first, then `<stem>_<digits>.<ext>` by number."""
    found = []
    for p in pool:
        if p.stem == stem:
            found.append((-1, p.name, p))
        elif p.stem.startswith(stem + "_") and p.stem[len(stem) + 1:].isdigit():
            found.append((int(p.stem[len(stem) + 1:]), p.name, p))
    return [p for _, _, p in sorted(found)]


def find_video_control(video: Path, control_dir: Path) -> Path | None:
    """The control of a video in `control_dir`: the same file name, a frame folder named like its stem, or
    a video with the same stem."""
    same = control_dir / video.name
    if same.exists():
        return same
    folder = control_dir / video.stem
    if folder.is_dir():
        return folder
    for p in list_videos(control_dir):
        if p.stem == video.stem:
            return p
    return None
