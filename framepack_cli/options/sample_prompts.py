"""`--sample_prompts` files of `framepack train` (pure: no torch), read the reference's way.

- `.txt`: one prompt per line; blank lines and `#` lines are skipped; inline options after ` --`:
  `--w` width, `--h` height, `--f` frame count, `--d` seed, `--s` steps (clamped to 1..1000), `--g` embedded
  (distilled) guidance, `--fs` discrete flow shift (no effect on FramePack, as in the reference), `--l` CFG scale,
  `--n` negative prompt, `--i` start image, `--ei` end image and `--cn` control video (no effect on FramePack),
  `--ci` control image (repeatable), `--of` one-frame options. Option names are case-insensitive; a repeated
  option keeps its last value (`--ci` collects every one).
- `.toml`: a `[prompt]` table of shared keys and `[[prompt.subset]]` entries, each merged with the shared keys.
- `.json`: a list whose entries are dicts or strings (parsed like `.txt` lines).

Dict keys: `prompt, width, height, frame_count, seed, sample_steps, guidance_scale, discrete_flow_shift,
cfg_scale, negative_prompt, image_path, end_image_path, control_video_path, control_image_path, one_frame`.

Deliberate differences from the reference, which ignores what it cannot read: an unknown option or key, a
value of the wrong type, a key both in `[prompt]` and a subset, a missing value, and an empty file are errors
naming the file, the line (or entry) and the option.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError

FLAG = "--sample_prompts"
MAX_STEPS = 1000

# inline name -> dict key (the reference's names)
INLINE: dict[str, str] = {
    "w": "width", "h": "height", "f": "frame_count", "d": "seed", "s": "sample_steps", "g": "guidance_scale",
    "fs": "discrete_flow_shift", "l": "cfg_scale", "n": "negative_prompt", "i": "image_path",
    "ei": "end_image_path", "cn": "control_video_path", "ci": "control_image_path", "of": "one_frame",
}
KEY_FLAG = {key: f"--{name}" for name, key in INLINE.items()}
INTS = ("width", "height", "frame_count", "seed", "sample_steps")
FLOATS = ("guidance_scale", "discrete_flow_shift", "cfg_scale")
STRINGS = ("prompt", "negative_prompt", "image_path", "end_image_path", "control_video_path", "one_frame")
KEYS = ("prompt", *INTS, *FLOATS, *STRINGS[1:], "control_image_path")

# The reference's defaults (hv_train_network / fpack_train_network).
DEFAULT_SIZE = 256
DEFAULT_FRAMES = 1
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 10.0  # FramePack's embedded guidance at inference


@dataclass
class SamplePrompt:
    """One prompt of a `--sample_prompts` file, with the reference's defaults filled in.

    Attributes:
        index: 0-based position in the file (the reference's `enum`, used in the file names).
        where: `prompts.txt:3` or `prompts.toml [[prompt.subset]] 2`, for messages.
        inline: the entry was a text line (messages name `--w`), else a dict (messages name `width`).
        given: the keys the entry set itself.
    """

    index: int
    prompt: str
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    frame_count: int = DEFAULT_FRAMES
    seed: int | None = None
    sample_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    cfg_scale: float | None = None
    negative_prompt: str | None = None
    image_path: str | None = None
    control_image_paths: list[str] = field(default_factory=list)
    one_frame: str | None = None
    discrete_flow_shift: float | None = None
    end_image_path: str | None = None
    control_video_path: str | None = None
    where: str = ""
    inline: bool = True
    given: frozenset[str] = frozenset()

    def flag(self, key: str) -> str:
        """How the entry names `key`: `--w` for a text line, `width` for a dict."""
        return KEY_FLAG[key] if self.inline else key

    def label(self, total: int | None = None) -> str:
        """`sample 2/3 (prompts.txt:4)`."""
        of = f"/{total}" if total else ""
        return f"sample {self.index + 1}{of} ({self.where})"


def _error(where: str, problem: str) -> str:
    return f"{FLAG} {where}: {problem}"


def parse_line(line: str) -> tuple[dict[str, Any], list[str]]:
    """One text line into dict values (converted) and problems (each naming its inline option)."""
    parts = (" " + line.strip()).split(" --")
    values: dict[str, Any] = {"prompt": parts[0].strip()}
    problems: list[str] = []
    for part in parts[1:]:
        name, _, value = part.strip().partition(" ")
        name, value = name.lower(), value.strip()
        if name not in INLINE:
            known = " ".join("--" + k for k in INLINE)
            problems.append(f"unknown inline option --{name} (known: {known})")
            continue
        if not value:
            problems.append(f"--{name} needs a value")
            continue
        key = INLINE[name]
        if key == "control_image_path":
            values.setdefault(key, []).append(value)
            continue
        try:
            values[key] = _convert(key, value, f"--{name}")
        except ValueError as e:
            problems.append(str(e))
    return values, problems


def _convert(key: str, value: Any, flag: str) -> Any:
    """A value of `key` in its type; ValueError naming `flag` and the value."""
    if key in INTS:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{flag}: {value!r} is not a whole number")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{flag}: {value!r} is not a whole number") from None
        if key == "sample_steps":
            return max(1, min(MAX_STEPS, n))  # the reference clamps the steps
        if key == "seed" and not 0 <= n < 2**64:
            raise ValueError(f"{flag}: seed {n} is outside 0..2^64-1")
        if key != "seed" and n < 1:
            raise ValueError(f"{flag}: must be at least 1, got {n}")
        return n
    if key in FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{flag}: {value!r} is not a number")
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"{flag}: {value!r} is not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"{flag}: {value!r} is not a finite number")
        return x
    if key == "control_image_path":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
            raise ValueError(f"{flag}: expected a list of image paths, got {value!r}")
        return [v.strip() for v in items]
    if not isinstance(value, str):
        raise ValueError(f"{flag}: expected a string, got {value!r}")
    return value if key in ("prompt", "negative_prompt") else value.strip()


def _from_dict(entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    unknown = sorted(k for k in entry if k not in KEYS and k != "enum")  # enum is the reference's own key
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(KEYS)})")
    for key in KEYS:
        if key in entry:
            try:
                values[key] = _convert(key, entry[key], key)
            except ValueError as e:
                problems.append(str(e))
    return values, problems


def _prompt(index: int, values: dict[str, Any], where: str, inline: bool) -> SamplePrompt:
    v = dict(values)
    controls = v.pop("control_image_path", [])
    p = SamplePrompt(index=index, prompt=v.pop("prompt", ""), where=where, inline=inline,
                     given=frozenset(values), control_image_paths=list(controls))
    for key, value in v.items():
        setattr(p, key, value)
    return p


def _read_toml(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise FramepackError(f"{FLAG}: reading TOML on Python 3.10 needs the 'tomli' package "
                                 "(pip install tomli)") from None

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise FramepackError(_error(str(path), f"not valid TOML ({e})")) from None
    extra = sorted(k for k in doc if k != "prompt")
    if extra:
        raise FramepackError(_error(str(path), f"unknown top-level key(s) {', '.join(map(repr, extra))}; "
                                               "expected a [prompt] table with [[prompt.subset]] entries"))
    shared = doc.get("prompt")
    if not isinstance(shared, dict) or not isinstance(shared.get("subset"), list) or not shared["subset"]:
        raise FramepackError(_error(str(path), "expected a [prompt] table with [[prompt.subset]] entries "
                                               "(one per prompt)"))
    shared = dict(shared)
    subsets = shared.pop("subset")
    out = []
    for i, sub in enumerate(subsets, start=1):
        where = f"{path} [[prompt.subset]] {i}"
        if not isinstance(sub, dict):
            raise FramepackError(_error(where, "expected a table of prompt keys"))
        both = sorted(set(shared) & set(sub))
        if both:
            raise FramepackError(_error(where, f"{', '.join(map(repr, both))} given both in [prompt] and in "
                                               "this subset; give each key in one place"))
        out.append((where, {**shared, **sub}))
    return out


def _read_json(path: Path) -> list[tuple[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise FramepackError(_error(f"{path}:{e.lineno}", f"not valid JSON ({e.msg})")) from None
    if not isinstance(doc, list):
        raise FramepackError(_error(str(path), "expected a JSON list of prompts (strings or objects)"))
    return [(f"{path} entry {i}", entry) for i, entry in enumerate(doc, start=1)]


def load_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    """Read a `--sample_prompts` file (.txt, .toml or .json), defaults filled in.

    Raises:
        FramepackError: every bad line or entry at once, one line each, naming `--sample_prompts`, the file and
            line (`prompts.txt:3`, or the TOML subset / JSON entry) and the problem; also a missing, unreadable
            or empty file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".toml", ".json"):
        raise FramepackError(f"{FLAG}: expected a .txt, .toml or .json file, got {path}")
    if not path.is_file():
        raise FramepackError(f"{FLAG}: file not found: {path}")
    try:
        if suffix == ".txt":
            entries: list[tuple[str, Any]] = []
            for no, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                line = raw.strip()
                if line and not line.startswith("#"):
                    entries.append((f"{path}:{no}", line))
        elif suffix == ".toml":
            entries = _read_toml(path)
        else:
            entries = _read_json(path)
    except UnicodeDecodeError:
        raise FramepackError(f"{FLAG}: {path} is not UTF-8 text") from None
    except OSError as e:
        raise FramepackError(f"{FLAG}: cannot read {path} ({e.strerror or e})") from None
    prompts: list[SamplePrompt] = []
    errors: list[str] = []
    for where, entry in entries:
        if isinstance(entry, str):
            values, problems = parse_line(entry)
            inline = True
        elif isinstance(entry, dict):
            values, problems = _from_dict(entry)
            inline = False
        else:
            errors.append(_error(where, f"expected a prompt string or an object, got {entry!r}"))
            continue
        if problems:
            errors += [_error(where, p) for p in problems]
            continue
        prompts.append(_prompt(len(prompts), values, where, inline))  # the position: the reference's enum
    if errors:
        raise FramepackError("\n".join(errors))
    if not prompts:
        raise FramepackError(f"{FLAG}: {path} holds no prompts (only empty lines and # comments)")
    return prompts


def should_sample(step: int, epoch: int | None, *, sample_at_first: bool, every_n_steps: int | None,
                  every_n_epochs: int | None) -> bool:
    """The reference's trigger: step 0 only with `--sample_at_first`; else every N steps, or (with `epoch`, at the
    end of an epoch) every N epochs."""
    if step == 0:
        return sample_at_first
    by_steps = every_n_steps is not None and step % every_n_steps == 0
    by_epochs = every_n_epochs is not None and epoch is not None and epoch % every_n_epochs == 0
    return by_steps or by_epochs
