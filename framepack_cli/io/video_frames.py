"""Reading training clips: video files (PyAV) and folders of frame images, as RGB uint8, streamed.

Frames come out exactly as the reference trainer decodes them (PyAV, stream 0, converted to RGB24;
image folders sorted by name and converted to RGB), optionally frame-rate converted to 30 fps and
bucket-resized one at a time, so a long clip never has to sit in memory at its source resolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from framepack_cli.errors import FramepackError
from framepack_cli.io.dataset_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images, list_videos
from framepack_cli.plan.frames import FRAMEPACK_FPS, fps_kept_frames

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ClipInfo", "iter_frames", "list_images", "list_videos",
           "probe_clip", "read_frames"]


@dataclass(frozen=True)
class ClipInfo:
    """What planning needs to know about a clip before decoding it.

    Attributes:
        frames: number of source frames (before frame-rate conversion).
        width: frame width in pixels.
        height: frame height in pixels.
    """

    frames: int
    width: int
    height: int


def probe_clip(path: str | Path) -> ClipInfo:
    """Frame count and size of a video file or a folder of frames, without decoding the whole clip.

    For video files the count comes from the container when it records one (mp4/mov do), otherwise
    from counting the demuxed packets; the size comes from the first decoded frame.

    Raises:
        FramepackError: unreadable or empty clip (the message names the file).
    """
    p = Path(path)
    if p.is_dir():
        files = list_images(p)
        if not files:
            raise FramepackError(f"{p}: no frame images in this folder")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(files[0]) as im:
                w, h = im.size
        except (OSError, UnidentifiedImageError) as e:
            raise FramepackError(f"{files[0]}: cannot read frame image ({e})") from None
        return ClipInfo(len(files), w, h)
    import av

    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise FramepackError(f"{p}: no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise FramepackError(f"{p}: no decodable video frame")
            width, height = first.width, first.height
            count = int(stream.frames or 0)
        if count <= 0:
            with av.open(str(p)) as container:
                stream = container.streams.video[0]
                count = sum(1 for packet in container.demux(stream) if packet.size)
    except FramepackError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise FramepackError(f"{p}: cannot read video ({e})") from None
    return ClipInfo(count, width, height)


def _raw_frames(path: Path) -> Iterator[np.ndarray]:
    if path.is_dir():
        from PIL import Image

        for f in list_images(path):
            try:
                with Image.open(f) as im:
                    yield np.asarray(im.convert("RGB"))
            except OSError as e:
                raise FramepackError(f"{f}: cannot read frame image ({e})") from None
        return
    import av

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError) as e:
        raise FramepackError(f"{path}: cannot decode video ({e})") from None


def iter_frames(
    path: str | Path,
    *,
    source_fps: float | None = None,
    target_fps: float = FRAMEPACK_FPS,
    stop: int | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """Stream the frames of a clip as RGB uint8 `[H, W, 3]` arrays.

    Args:
        path: video file or folder of frame images.
        source_fps: the clip's frame rate; when given, frames are dropped to reach `target_fps`
            (the reference's rule, see `fps_kept_frames`).
        target_fps: FramePack's 30 fps.
        stop: stop after this many (converted) frames; None = all.
        size: `(w, h)`: bucket-resize (scale to cover, centre crop) every frame as it is decoded.

    Yields:
        Frames in order.

    Raises:
        FramepackError: the clip cannot be read.
    """
    from framepack_cli.io.images import resize_to_bucket

    p = Path(path)
    kept = fps_kept_frames(None, source_fps, target_fps) if source_fps is not None else None
    next_kept = next(kept) if kept is not None else 0
    if stop is not None and stop <= 0:
        return
    n = 0
    for i, frame in enumerate(_raw_frames(p)):
        if kept is not None:
            if i != next_kept:
                continue
            next_kept = next(kept)
        if size is not None:
            frame = resize_to_bucket(frame, size[0], size[1])
        n += 1
        yield np.ascontiguousarray(frame)
        if stop is not None and n >= stop:
            return  # closes the decoder: the rest of the file is never read


def read_frames(path: str | Path, **kwargs) -> list[np.ndarray]:
    """All frames `iter_frames` yields, as a list (see there for the arguments)."""
    return list(iter_frames(path, **kwargs))
