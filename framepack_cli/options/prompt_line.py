"""The inline syntax of `--from_file` lines and `--interactive` input (pure, no torch).

`A cat walks. --w 640 --h 640 --d 42 --i start.png` : the text before the first ` --` is the prompt; each
following ` --opt value` part sets one option of that job (values may contain spaces). Unknown options
are an error naming them (the reference ignores them silently). A line of options only (` --w 64`) has an
empty prompt.
"""

from __future__ import annotations

from typing import Any

# inline name -> (options field, converter); video_size parts and repeatable lists are handled specially
INLINE: dict[str, tuple[str, type]] = {
    "w": ("width", int),
    "h": ("height", int),
    "f": ("video_seconds", float),
    "d": ("seed", int),
    "s": ("infer_steps", int),
    "g": ("guidance_scale", float),
    "l": ("guidance_scale", float),
    "fs": ("flow_shift", float),
    "i": ("image_path", str),
    "n": ("negative_prompt", str),
    "vs": ("video_sections", int),
    "ei": ("end_image_path", str),
    "ci": ("control_image_path", list),
    "cim": ("control_image_mask_path", list),
    "im": ("control_image_mask_path", list),  # documented by the reference as the image mask; same as --cim
    "of": ("one_frame_inference", str),
    "mcrr": ("magcache_retention_ratio", float),
    "mct": ("magcache_threshold", float),
    "mck": ("magcache_k", int),
}


def parse_prompt_line(line: str) -> dict[str, Any]:
    """Parse one line into option overrides (`prompt`, plus `width`/`height` for the size parts).

    Raises:
        ValueError: an unknown inline option, a missing value or a value of the wrong type.
    """
    parts = (" " + line.strip()).split(" --")
    # A line of inline options only has an empty prompt (encoded as " ", like an empty --prompt).
    out: dict[str, Any] = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        name, _, value = part.strip().partition(" ")
        value = value.strip()
        if name not in INLINE:
            known = " ".join("--" + k for k in INLINE)
            raise ValueError(f"unknown inline option --{name} (known: {known})")
        if not value:
            raise ValueError(f"--{name} needs a value")
        field, conv = INLINE[name]
        if conv is list:
            out.setdefault(field, []).append(value)
            continue
        try:
            out[field] = conv(value)
        except ValueError:
            raise ValueError(f"--{name}: expected {conv.__name__}, got {value!r}") from None
    return out


def job_values(base: dict[str, Any], overrides: dict[str, Any], video_size: tuple[int, int]) -> dict[str, Any]:
    """Merge a line's overrides into the options the user gave on the command line."""
    values = {k: v for k, v in base.items() if k not in ("from_file", "interactive")}
    o = dict(overrides)
    h, w = video_size
    if "width" in o or "height" in o:
        values["video_size"] = (o.pop("height", h), o.pop("width", w))
    values.update(o)
    return values
