"""Files of `framepack ui`: uploads stored under the app's own folder with generated names, and the one check
that decides whether a path the browser asks for may be read or served.

- `store_upload(src, uploads_dir)`: copies an uploaded file to `<uploads>/<uuid>.<ext>`, the extension taken
  from the file's content (its magic bytes), never from the client's name or path. Unknown content is refused.
- `resolve_allowed(requested, roots)`: the real path of `requested` (symlinks resolved) only when it lies inside
  one of `roots` (the uploads folder, `--save_path`); `..`, NUL bytes, and links leading outside are refused.

No Gradio and no torch here.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from framepack_cli.errors import FramepackError

# (magic bytes at offset, offset, extension)
SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, ".png"),
    (b"\xff\xd8\xff", 0, ".jpg"),
    (b"GIF87a", 0, ".gif"),
    (b"GIF89a", 0, ".gif"),
    (b"BM", 0, ".bmp"),
    (b"II*\x00", 0, ".tif"),
    (b"MM\x00*", 0, ".tif"),
)
MAX_UPLOAD_BYTES = 256 * 1024 * 1024


def sniff_extension(head: bytes) -> str | None:
    """The extension the content says (`.png`, `.jpg`, `.webp`, ...), or None for anything else."""
    for magic, offset, ext in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return None


def store_upload(src: str | os.PathLike, uploads_dir: str | os.PathLike, what: str = "image") -> Path:
    """Copy an uploaded image into `uploads_dir` under a new name; returns the stored path.

    Raises:
        FramepackError: the file is not an image framepack reads, or larger than the upload limit.
    """
    src = Path(src)
    with open(src, "rb") as f:
        head = f.read(16)
    ext = sniff_extension(head)
    if ext is None:
        raise FramepackError(f"{what}: the uploaded file is not a PNG, JPEG, WebP, BMP, GIF or TIFF image",
                             hint="upload an image file")
    if src.stat().st_size > MAX_UPLOAD_BYTES:
        raise FramepackError(f"{what}: the uploaded file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    uploads = Path(uploads_dir)
    uploads.mkdir(parents=True, exist_ok=True)
    dest = uploads / f"{uuid.uuid4().hex}{ext}"
    tmp = uploads / f".{dest.name}.part"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def resolve_allowed(requested: str | os.PathLike, roots: list[str | os.PathLike]) -> Path:
    """The resolved path of `requested` when it lies inside one of `roots`, else a FramepackError.

    A relative path is read against the first root. `..` parts and NUL bytes are refused outright, and the
    check is made on the real path (symlinks resolved), so a link inside a root that points outside is refused.
    """
    text = os.fspath(requested)
    if not text or "\x00" in text:
        raise FramepackError("file: refused (empty name or a NUL byte in it)")
    path = Path(text)
    if ".." in path.parts:
        raise FramepackError(f"file: {text!r} refused ('..' is not allowed)")
    real_roots = [Path(r).resolve() for r in roots]
    if not real_roots:
        raise FramepackError("file: no folder is served")
    candidate = path if path.is_absolute() else real_roots[0] / path
    real = candidate.resolve()
    for root in real_roots:
        if real == root or root in real.parents:
            return real
    raise FramepackError(f"file: {text!r} refused (outside the app's uploads and --save_path)")
