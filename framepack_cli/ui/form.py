"""The parts of the Generate form added on top of the plain fields: seeds (random / fixed / list), the section
timeline and the LoRA picker. Pure functions (no Gradio, no torch), unit-tested on their own.

- `parse_seeds(mode, seed, seed_list)`: the seeds of one click; a list queues one job per seed.
- `timeline_rows(...)`: one row per section (`plan.sections.num_sections`), with the time in seconds it covers;
  `timeline_options(...)`: the rows the user filled as the API's per-section forms (`prompt={i: text}`,
  `image={i: path}`); empty rows inherit the main prompt / start image.
- `list_loras(folder)` / `lora_options(folder, picked, multipliers)`: LoRA files of the `--lora_dir` folder and
  the `lora_weight` / `lora_multiplier` options of the picked ones (only files inside that folder).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.plan.sections import SECTION_FPS, num_sections
from framepack_cli.ui.files import resolve_allowed

MAX_SEED = 2**32 - 1
MAX_SEEDS = 100  # jobs one click may queue
SEED_MODES = ("random", "fixed", "list")
MAX_ROWS = 200  # a timeline longer than this is refused (the page would not show it usefully)
LORA_SUFFIX = ".safetensors"
_SEED_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


# --- seeds
def parse_seed(value: Any) -> int:
    """-1 or empty: a random seed (chosen now, so that the job records it); else the integer itself."""
    if value is None or value == "" or value == -1:
        return random.randint(0, MAX_SEED)
    try:
        seed = int(float(value))
    except (TypeError, ValueError):
        raise FramepackError(f"Seed: {value!r} is not an integer", hint="-1 for a random one") from None
    if not 0 <= seed <= MAX_SEED or seed != float(value):
        raise FramepackError(f"Seed: {value!r} must be an integer from 0 to {MAX_SEED}", hint="-1 for a random one")
    return seed


def parse_seed_list(text: Any) -> list[int]:
    """`"1 2 3"`, `"10-13"`, `"1, 5-7"` -> the seeds in that order (duplicates kept once)."""
    items = [p for p in re.split(r"[\s,;]+", str(text or "").strip()) if p]
    if not items:
        raise FramepackError("Seeds: the list is empty", hint="e.g. 1 2 3 or 10-13")
    seeds: list[int] = []
    for item in items:
        m = _SEED_ITEM.match(item)
        if m is None:
            raise FramepackError(f"Seeds: {item!r} is not a seed or a range", hint="e.g. 1 2 3 or 10-13")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise FramepackError(f"Seeds: {item!r} ends before it starts", hint=f"write {b}-{a}")
        if b > MAX_SEED:
            raise FramepackError(f"Seeds: {item!r} goes past {MAX_SEED}, the largest seed")
        if b - a + 1 > MAX_SEEDS:
            raise FramepackError(f"Seeds: {item!r} is {b - a + 1} seeds; at most {MAX_SEEDS} jobs per click")
        seeds.extend(s for s in range(a, b + 1) if s not in seeds)
        if len(seeds) > MAX_SEEDS:
            raise FramepackError(f"Seeds: more than {MAX_SEEDS} seeds; at most {MAX_SEEDS} jobs per click")
    return seeds


def parse_seeds(mode: Any, seed: Any, seed_list: Any) -> list[int]:
    """The seeds of one click: random (one new seed), fixed (`seed`; -1 is random too) or list (`seed_list`)."""
    mode = mode or "fixed"
    if mode == "random":
        return [random.randint(0, MAX_SEED)]
    if mode == "fixed":
        return [parse_seed(seed)]
    if mode == "list":
        return parse_seed_list(seed_list)
    raise FramepackError(f"Seed mode: {mode!r} is not one of {', '.join(SEED_MODES)}")


# --- the section timeline
def section_count(length_unit: str, seconds: Any, sections: Any, window: Any) -> int:
    """The number of sections the form asks for (as the engine counts them); 1 when a field is not a number yet."""
    try:
        w = max(1, int(float(window)))
        if length_unit == "sections":
            n = num_sections(0.0, w, max(1, int(float(sections))))
        else:
            n = num_sections(max(0.0, float(seconds)), w)
    except (TypeError, ValueError):
        return 1
    return max(1, n)


def section_seconds(window: Any) -> float:
    """Seconds one section covers: 4 x window frames at the engine's section rate (30 fps)."""
    try:
        w = max(1, int(float(window)))
    except (TypeError, ValueError):
        w = 1
    return w * 4 / SECTION_FPS


def timeline_rows(length_unit: str, seconds: Any, sections: Any, window: Any) -> list[tuple[int, float, float]]:
    """(section index in time, start s, end s) for each section of the form's length."""
    n = section_count(length_unit, seconds, sections, window)
    if n > MAX_ROWS:
        n = MAX_ROWS
    step = section_seconds(window)
    return [(i, round(i * step, 2), round((i + 1) * step, 2)) for i in range(n)]


def _entries(value: Any, what: str) -> dict[int, str]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise FramepackError(f"Timeline: {what} must be a {{section: value}} mapping, got {type(value).__name__}")
    out: dict[int, str] = {}
    for k, v in value.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise FramepackError(f"Timeline: section {k!r} is not a number") from None
        if v is not None and str(v).strip():
            out[i] = str(v).strip()
    return out


def timeline_options(timeline: Any, n: int, main_prompt: str, start_image: str | None,
                     uploads: Path) -> tuple[str | dict[int, str], str | dict[int, str] | None]:
    """(prompt, image) for Pipeline.generate: the main ones, or `{section: value}` when rows were filled.

    `timeline` is `{"prompts": {i: text}, "images": {i: path}}` (the rows the page filled; paths are the stored
    uploads of the row images, so only files inside `uploads` are accepted). Rows past the video's `n` sections
    are ignored; a row left empty inherits the main prompt / start image (entry 0).
    """
    timeline = timeline or {}
    if not isinstance(timeline, dict):
        raise FramepackError("Timeline: expected {\"prompts\": {...}, \"images\": {...}}")
    prompts = {i: v for i, v in _entries(timeline.get("prompts"), "prompts").items() if 0 <= i < n}
    images = {i: v for i, v in _entries(timeline.get("images"), "images").items() if 0 <= i < n}
    for i, path in images.items():
        try:
            real = resolve_allowed(path, [uploads])
        except FramepackError:
            raise FramepackError(f"Timeline: the image of section {i} is not an upload of this app",
                                 hint="upload it in the section's row") from None
        if not real.is_file():
            raise FramepackError(f"Timeline: the image of section {i} is gone; upload it again")
        images[i] = str(real)
    prompt: str | dict[int, str] = main_prompt or ""
    if prompts:
        prompt = {0: main_prompt or "", **prompts}
    image: str | dict[int, str] | None = start_image
    if images:
        if start_image is None and 0 not in images:
            raise FramepackError("Timeline: section images need a start image (rows without one use it)",
                                 hint="upload a start image, or an image in the first row")
        image = {0: start_image, **images} if start_image else dict(images)
        image = dict(sorted(image.items()))
    return prompt, image


# --- LoRAs
def list_loras(folder: str | Path | None) -> list[str]:
    """The LoRA files (`*.safetensors`, subfolders too) of `folder`, as paths relative to it, sorted."""
    if folder is None:
        return []
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [p.relative_to(root).as_posix() for p in root.rglob(f"*{LORA_SUFFIX}")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=str.lower)


def lora_options(folder: str | Path | None, picked: Any, multipliers: Any) -> dict[str, Any]:
    """`lora_weight` / `lora_multiplier` of the picked LoRAs (names relative to `folder`; {} when none).

    `multipliers` maps a picked name to its multiplier (missing: 1.0). Only files inside `folder` are accepted.
    """
    names = [str(p) for p in (picked or []) if str(p).strip()]
    if not names:
        return {}
    if folder is None:
        raise FramepackError("LoRAs: no LoRA folder", hint="start the app with --lora_dir DIR")
    mults = multipliers or {}
    if not isinstance(mults, dict):
        raise FramepackError("LoRA multipliers: expected a {LoRA: multiplier} mapping")
    weights, values = [], []
    for name in dict.fromkeys(names):
        try:
            real = resolve_allowed(name, [folder])
        except FramepackError:
            raise FramepackError(f"LoRAs: {name!r} is not a file of the LoRA folder {folder}",
                                 hint="pick one from the list (Refresh reads the folder again)") from None
        if not real.is_file() or real.suffix.lower() != LORA_SUFFIX:
            raise FramepackError(f"LoRAs: {name!r} is not a {LORA_SUFFIX} file in {folder}",
                                 hint="pick one from the list (Refresh reads the folder again)")
        raw = mults.get(name, 1.0)
        try:
            m = float(1.0 if raw is None or raw == "" else raw)
        except (TypeError, ValueError):
            raise FramepackError(f"LoRA multiplier of {name}: {raw!r} is not a number") from None
        weights.append(str(real))
        values.append(m)
    return {"lora_weight": weights, "lora_multiplier": values}
