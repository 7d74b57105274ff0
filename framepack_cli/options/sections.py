"""Per-section values for `--prompt` and `--image_path` (pure, no torch).

Two syntaxes are accepted:

- indexed (musubi): `"0:a cat;;;1:a dog;;;-1:a bird"`; an index is `N`, `-N` (counted from the last
  section) or an inclusive range `A-B`; an item without `:` is index 0. Without `;;;` the whole string is
  entry 0, even if it contains `:` (so `C:\\img.png` and `"a: b"` stay whole).
- pipe: `"start.png|mid.png"`, one entry per section in time order; `\\|` is a literal `|`.

Lookup for a section: its index counted from the last (`-(n - i)`) if present, else its index, else 0
(the reference's order).
"""

from __future__ import annotations

import re

_INDEX_RE = re.compile(r"^\s*(-?\d+)(?:\s*-\s*(-?\d+))?\s*$")


def split_pipe(text: str) -> list[str]:
    """Split on unescaped `|`; `\\|` becomes `|`."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == "|":
            cur.append("|")
            i += 2
            continue
        if c == "|":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def has_unescaped_pipe(text: str) -> bool:
    return len(split_pipe(text)) > 1


def parse_section_values(text: str) -> dict[int, str]:
    """Parse either syntax into {section index: value}. Negative indices are kept as given.

    Raises:
        ValueError: a malformed index or an empty pipe entry, with the offending item.
    """
    if ";;;" in text:
        out: dict[int, str] = {}
        for item in text.split(";;;"):
            if not item.strip():
                continue
            head, sep, value = item.partition(":")
            m = _INDEX_RE.match(head) if sep else None
            if m is None:
                # No index: the whole item is entry 0 (the reference's rule for items without `:`).
                out[0] = item.strip()
                continue
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise ValueError(f"bad section range {head.strip()!r} in {item!r} (start is after end)")
            for idx in range(a, b + 1):
                out[idx] = value.strip()
        if not out:
            raise ValueError(f"no entries in {text!r}")
        if 0 not in out:
            non_neg = [k for k in out if k >= 0]
            out[0] = out[min(non_neg)] if non_neg else out[min(out)]
        return out
    if has_unescaped_pipe(text):
        parts = split_pipe(text)
        empty = [i for i, p in enumerate(parts) if not p.strip()]
        if empty:
            raise ValueError(f"empty entry {empty[0] + 1} in {text!r} (one entry per section, separated by |)")
        return {i: p.strip() for i, p in enumerate(parts)}
    return {0: text}


def is_pipe_form(text: str) -> bool:
    return ";;;" not in text and has_unescaped_pipe(text)


def value_for_section(values: dict[int, str], section_index: int, num_sections: int) -> str:
    """The reference's lookup: from-last index, then index, then entry 0."""
    from_last = section_index - num_sections
    if from_last in values:
        return values[from_last]
    if section_index in values:
        return values[section_index]
    return values[0]
