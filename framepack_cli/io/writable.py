"""Output folders proven writable before the work starts, and write failures as one line with exit code 3.

An unwritable `--save_path` must be found before the models load, not after an hour of sampling: the folder
is created when missing and a probe file is created and removed in it. A write that fails later (disk full,
the folder removed, permissions changed) becomes a `ResourceError` naming the flag, the path and the errno
text.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from framepack_cli.errors import FramepackError, ResourceError


def resource_error_for(exc: OSError, flag: str, path: str | os.PathLike) -> ResourceError:
    """`OSError` while writing `path` (given by `flag`) -> one line: flag, path, errno text, what would help."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some disk space or point the flag at another disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose a folder you can write to"
    else:
        hint = "check the disk and the folder, or point the flag at another folder"
    return ResourceError(f"{flag}: cannot write {path}: {reason}", hint=hint)


def ensure_writable_dir(path: str | os.PathLike, flag: str) -> Path | None:
    """Create `path` if missing and prove it writable with a probe file (created, then removed).

    Returns:
        The top-most folder this call created (`path` itself or one of its parents), or None when `path`
        existed; give it to `remove_created` to undo the creation when the run leaves the folder empty.

    Raises:
        FramepackError: `path` is a file, or below a file (exit 2).
        ResourceError: the folder cannot be created or written (exit 3).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FramepackError(f"{flag}: {path} is a file, expected a folder")
    created: Path | None = None
    if not p.exists():
        missing = [d for d in (p, *p.parents) if not d.exists()]
        try:
            p.mkdir(parents=True, exist_ok=True)
        except NotADirectoryError:
            raise FramepackError(f"{flag}: cannot create {path}: a parent is a file") from None
        except OSError as e:
            raise resource_error_for(e, flag, path) from None
        created = missing[-1] if missing else None
    probe = p / f".framepack-write-probe.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0")
    except OSError as e:
        if created is not None:
            remove_created(p, created)
        raise resource_error_for(e, flag, path) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return created


def remove_created(path: str | os.PathLike, top: str | os.PathLike | None) -> bool:
    """Undo `ensure_writable_dir`: remove `path` and its parents up to `top` while they are empty.

    Only empty folders are removed (`rmdir`), so nothing of the user's is ever deleted. Returns True when
    `top` itself was removed.
    """
    if top is None:
        return False
    p, top = Path(path), Path(top)
    while True:
        try:
            p.rmdir()
        except OSError:
            return False
        if p == top or p.parent == p:
            return p == top
        p = p.parent


def writing_failed(exc: OSError, output: str | os.PathLike) -> bool:
    """Whether `exc`, raised while a file was read and `output` written, is about the writing: it names no file
    (a failed `write()`: disk full) or a file in `output`'s folder (the output or its temp file)."""
    if not exc.filename:
        return True
    return Path(os.fsdecode(exc.filename)).parent.resolve() == Path(output).parent.resolve()
