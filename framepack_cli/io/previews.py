"""Live preview files (`--preview`): a PNG or an MP4 rewritten after every section, atomically (a hidden temp
file in the same folder, then `os.replace`), so a viewer never sees half a file.

Every preview carries a marker (a PNG text chunk / the MP4's metadata) so a later run knows the file is a
preview of ours and may replace it; any other file at the preview path is the user's and is never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PREVIEW_KEY = "framepack_preview"  # PNG text chunk / MP4 metadata key that marks our previews


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")


def is_preview_file(path: Path) -> bool:
    """True when `path` is a preview we wrote (its marker is there); False for any other file."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        if p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(p) as img:
                return PREVIEW_KEY in getattr(img, "text", {})
        from framepack_cli.io.outputs import read_video_metadata

        return PREVIEW_KEY in read_video_metadata(p)
    except Exception:  # unreadable, another format: not ours
        return False


def write_preview_png(path: Path, image: np.ndarray, note: str = "") -> Path:
    """Write uint8 `[H, W, 3]` as a PNG at `path` (temp file, then rename), marked as our preview."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    info = PngInfo()
    info.add_text(PREVIEW_KEY, note or "1")
    tmp = _tmp_name(path)
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", pnginfo=info, compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_preview_mp4(path: Path, frames: np.ndarray | list[np.ndarray], fps: int, note: str = "",
                      crf: int = 23) -> Path:
    """Write uint8 frames `[T, H, W, 3]` (or a list of such blocks) as an H.264 MP4 at `path`, atomically, marked
    as our preview (`VideoWriter` writes a temp file and renames it on close)."""
    from framepack_cli.io.outputs import VideoWriter

    writer = VideoWriter(Path(path), fps=max(1, int(fps)), crf=crf, metadata={PREVIEW_KEY: note or "1"})
    try:
        for block in frames if isinstance(frames, list) else [frames]:
            writer.write(block)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
