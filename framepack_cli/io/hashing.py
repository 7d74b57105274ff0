"""File hashes (standard library only): the sha256 that outputs record for input images, that resume and
`--settings_from` check, and that the downloader compares with the hub's."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in blocks (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
