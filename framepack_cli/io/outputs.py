"""Outputs: pixel conversion, mp4 / PNG-sequence writers, latent files and streaming stitching.

Everything a generation produces goes through here (inference.md §5.5-5.6):

* `to_uint8` turns decoded VAE pixels into frames exactly like the reference (`clamp((x+1)/2)·255`, truncated).
* `VideoWriter` and `PngSequenceWriter` stream frames to disk, so a long video never sits in RAM as uint8, and
  publish the result atomically: a crash or Ctrl-C leaves either the finished file or nothing, never half a file.
* `save_latent` / `load_latent` read and write the reference's `*_latent.safetensors` files.
* `ProgressiveBlender` is the reference's soft-append stitching of overlapping decoded chunks, done as a stream:
  it holds only the overlap in memory and hands every finished frame to the writers at once.
* `unique_base` picks an output name that collides with nothing already on disk.

Metadata is always `dict[str, str]` (the safetensors constraint, kept everywhere so one dict serves all outputs).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from framepack_cli.errors import FramepackError

if TYPE_CHECKING:
    # Imported lazily at run time: `unique_base` and the metadata readers serve the CLI without torch's import cost.
    import torch

__all__ = [
    "FrameSink",
    "PngSequenceWriter",
    "ProgressiveBlender",
    "VideoWriter",
    "load_latent",
    "read_png_metadata",
    "read_video_metadata",
    "save_latent",
    "to_uint8",
    "unique_base",
]

# Container tag that carries the metadata JSON. `comment` is one of the few keys the mp4 muxer writes without
# `movflags=use_metadata_tags`, and the one players and ffprobe show, so the settings stay visible to users.
_VIDEO_META_KEY = "comment"
# PNG tEXt keyword (Latin-1, 1-79 chars) holding the same JSON.
_PNG_META_KEY = "framepack"
# safetensors key of the latent tensor, as in the reference.
_LATENT_KEY = "latent"


class FrameSink(Protocol):
    """Anything `ProgressiveBlender` can feed: a writer taking uint8 `[T, H, W, 3]` frames."""

    def write(self, frames: np.ndarray) -> None:  # pragma: no cover - protocol
        """Append frames."""


# --------------------------------------------------------------------------------------------------------------
# Pixels and names
# --------------------------------------------------------------------------------------------------------------


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Convert decoded VAE pixels to uint8 frames, exactly as the reference saves them.

    The reference computes `clamp((x + 1) / 2, 0, 1) * 255` and casts to uint8, which truncates; doing the same
    (in float32, whatever the input dtype) keeps our files byte-identical to its output. NaNs, which only a broken
    decode produces, become black rather than whatever an undefined float→uint8 cast would give.

    Args:
        pixels: float tensor `[3, T, H, W]` or `[1, 3, T, H, W]`, roughly in [-1, 1], on any device.

    Returns:
        uint8 array `[T, H, W, 3]` (C-contiguous).

    Raises:
        ValueError: wrong shape.
    """
    import torch

    x = _as_cthw(pixels)
    x = ((x.to(device="cpu", dtype=torch.float32) + 1.0) / 2.0).clamp_(0.0, 1.0)
    x = torch.nan_to_num_(x, nan=0.0).mul_(255.0)
    # Values are in [0, 255] here, so the integer cast is a plain truncation (floor).
    return np.ascontiguousarray(x.to(torch.uint8).permute(1, 2, 3, 0).numpy())


def _as_cthw(pixels: torch.Tensor) -> torch.Tensor:
    """Accept `[3, T, H, W]` or a batch of one `[1, 3, T, H, W]`; return the 4-D view."""
    if pixels.ndim == 5 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 4 or pixels.shape[0] != 3:
        raise ValueError(f"expected pixels [3, T, H, W] or [1, 3, T, H, W], got {tuple(pixels.shape)}")
    return pixels


def unique_base(save_dir: Path, base: str, suffixes: Sequence[str], taken: Collection[str] = ()) -> str:
    """Pick an output base name that collides with nothing already in `save_dir`.

    One base names several outputs of the same run (`{base}.mp4`, `{base}_latent.safetensors`, the PNG
    directory `{base}`), so a candidate is taken only if *all* of them are free: a run never overwrites a user's
    file, and the files of one run keep one shared name.

    Args:
        save_dir: output directory.
        base: preferred name, e.g. `20250101-120000-123_42`.
        suffixes: what each output appends to the base, e.g. `[".mp4", "_latent.safetensors", ""]`.
        taken: file names in `save_dir` promised to other jobs of the run, as good as existing ones.

    Returns:
        `base`, else the first free `base_1`, `base_2`, ...
    """
    save_dir = Path(save_dir)
    suffixes = list(suffixes) or [""]
    candidate, i = base, 0
    # lexists: a dangling symlink is still a name the user owns.
    while any((candidate + s) in taken or os.path.lexists(save_dir / (candidate + s)) for s in suffixes):
        i += 1
        candidate = f"{base}_{i}"
    return candidate


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """Validate that metadata is `dict[str, str]` (what safetensors accepts), so every format stores the same."""
    if metadata is None:
        return {}
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"metadata keys and values must be str; offending keys: {bad!r}")
    return dict(metadata)


def _parse_meta_json(text: str | None) -> dict[str, str]:
    """Decode our JSON metadata; anything else (absent, foreign comment, wrong shape) reads as no metadata."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return {}
    return data


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """Writers take uint8 `[T, H, W, 3]`; anything else is a caller bug, reported before touching the file."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def _partial_name(name: str, suffix: str = "") -> str:
    """Hidden temp name next to the output; the pid keeps two concurrent runs from sharing a temp file."""
    return f".{name}.{os.getpid()}.partial{suffix}"


# --------------------------------------------------------------------------------------------------------------
# mp4
# --------------------------------------------------------------------------------------------------------------


class VideoWriter:
    """Stream frames into an H.264 mp4 that appears at `path` only when complete.

    libx264, yuv420p (what every player decodes), constant frame rate `fps` with stream time base `1/fps`
    (the mp4 muxer may rescale it to its own timescale on disk; frame timing is unchanged). Frames are encoded as
    they arrive, so memory stays flat however long the video is. Encoding is deterministic: the same frames,
    fps, crf and metadata give the same bytes on any machine (one encoder thread, no creation time stored).

    yuv420p subsamples chroma 2x2, so libx264 refuses odd sizes. An odd width or height is padded by one
    column/row that repeats the last one (invisible, unlike a black border, and no pixel of the input is lost or
    resampled). The bucket sizes FramePack generates are multiples of 16, so this only matters for odd inputs.

    The file is written to a hidden temp file in the same directory (same filesystem, so the final `os.replace`
    is atomic) and moved onto `path` by `close()`. `abort()`, or leaving the `with` block on an exception, deletes
    it. Metadata goes into the container's `comment` tag as JSON; `read_video_metadata` returns it.

    Args:
        path: final file path (normally `.mp4`; the suffix picks the container format).
        fps: frame rate.
        crf: libx264 constant rate factor (0 = lossless luma, 16 = the original demo's default).
        metadata: `dict[str, str]` stored in the container.

    Example:
        >>> with VideoWriter(out, fps=30) as w:  # doctest: +SKIP
        ...     w.write(to_uint8(pixels))
    """

    def __init__(self, path: Path, *, fps: int, crf: int = 16, metadata: dict[str, str] | None = None) -> None:
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        self.path = Path(path)
        self.fps = int(fps)
        self.crf = int(crf)
        self.metadata = _check_metadata(metadata)
        suffix = self.path.suffix or ".mp4"
        self._tmp = self.path.with_name(_partial_name(self.path.stem, suffix))
        self._format = None if self.path.suffix else "mp4"  # no suffix: the muxer cannot be guessed
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None  # (height, width) of the input frames
        self._pad: tuple[int, int] = (0, 0)  # rows, columns appended to reach even sizes
        self._frames = 0
        self._done = False  # no more writes (closed or aborted)
        self._published = False  # close() succeeded: the file is at `path`

    @property
    def frames_written(self) -> int:
        """Number of frames encoded so far."""
        return self._frames

    def _open(self, height: int, width: int) -> None:
        """Create the container on the first frames, when the size is known."""
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pad = (height % 2, width % 2)
        try:
            container = av.open(str(self._tmp), mode="w", format=self._format)
        except OSError:  # disk full, no permission: the caller names the flag (pyav's errors are OSErrors)
            raise
        except av.FFmpegError as e:
            raise FramepackError(f"{self.path}: cannot create video file ({e})") from None
        self._container = container
        if self.metadata:
            container.metadata[_VIDEO_META_KEY] = json.dumps(self.metadata, ensure_ascii=False, sort_keys=True)
        stream = container.add_stream("libx264", rate=self.fps, options={"crf": str(self.crf)})
        # One encoder thread: libx264's default thread count follows the machine's cores, and its decisions
        # follow the thread count, so the same frames gave different files on different machines. Single-threaded,
        # the bytes depend on the frames and the settings only (encoding is ~1.5x slower, small next to decoding).
        stream.codec_context.thread_count = 1
        stream.width = width + self._pad[1]
        stream.height = height + self._pad[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, self.fps)
        self._stream = stream
        self._size = (height, width)

    def write(self, frames: np.ndarray) -> None:
        """Encode and append frames.

        Args:
            frames: uint8 `[T, H, W, 3]` RGB; every call must use the size of the first one.

        Raises:
            ValueError: wrong dtype/shape, or a size different from the first frames.
            RuntimeError: the writer is already closed or aborted.
        """
        import av

        if self._done:
            raise RuntimeError(f"{self.path}: writer already closed")
        frames = _check_frames(frames)
        if frames.shape[0] == 0:
            return
        h, w = frames.shape[1:3]
        if self._container is None:
            self._open(h, w)
        elif (h, w) != self._size:
            raise ValueError(
                f"{self.path}: frame size {w}x{h} differs from the first frames {self._size[1]}x{self._size[0]}"
            )
        if any(self._pad):
            frames = np.pad(frames, ((0, 0), (0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        tb = Fraction(1, self.fps)
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self._frames
            vf.time_base = tb
            self._container.mux(self._stream.encode(vf))
            self._frames += 1

    def close(self) -> Path:
        """Flush the encoder, finalise the file and move it onto `path`.

        Returns:
            The final path.

        Raises:
            ValueError: no frame was written (nothing is left on disk).
        """
        if self._published:
            return self.path
        if self._done:
            raise RuntimeError(f"{self.path}: writer was aborted or failed to close")
        if self._container is None:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written")
        try:
            self._container.mux(self._stream.encode(None))  # drain the frames libx264 still buffers
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = self._published = True
        return self.path

    def abort(self) -> None:
        """Drop the partial file. Safe to call at any time, any number of times; a closed file is kept."""
        self._done = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; a muxer complaint is moot
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_video_metadata(path: Path) -> dict[str, str]:
    """Read the metadata a `VideoWriter` stored in a video file.

    Args:
        path: video file.

    Returns:
        The metadata dict; empty when the file carries none of ours.

    Raises:
        FramepackError: missing or unreadable file.
    """
    import av

    p = Path(path)
    if not p.is_file():
        raise FramepackError(f"{p}: video file not found")
    try:
        with av.open(str(p)) as container:
            text = container.metadata.get(_VIDEO_META_KEY)
    except (OSError, av.FFmpegError) as e:
        raise FramepackError(f"{p}: cannot read video file ({e})") from None
    return _parse_meta_json(text)


# --------------------------------------------------------------------------------------------------------------
# PNG sequence
# --------------------------------------------------------------------------------------------------------------


class PngSequenceWriter:
    """Stream frames into numbered PNG files, published all at once on `close()`.

    Layouts (the reference's):

    * `subdir=True`: `save_dir/base/base_000.png`, `base_001.png`, ... Frames go into a hidden temp directory that
      is renamed to `save_dir/base` at close.
    * `subdir=False` (one-frame mode): `save_dir/base_000.png`, ... Each frame goes to a hidden temp file; all are
      renamed into place at close.

    So an interrupted run leaves no half sequence that looks like a finished one. Flat-mode files replace
    same-named files at close, so pick `base` with `unique_base(save_dir, base, ["_000.png"])` (or more suffixes).

    Each PNG carries the metadata JSON in a tEXt chunk `framepack` (ASCII-escaped JSON, so it is always valid
    Latin-1 tEXt).

    Args:
        save_dir: output directory.
        base: base name (normally from `unique_base`).
        metadata: `dict[str, str]` stored in every PNG.
        subdir: put the frames in a `base` sub-directory.
    """

    def __init__(
        self, save_dir: Path, base: str, *, metadata: dict[str, str] | None = None, subdir: bool = True
    ) -> None:
        self.save_dir = Path(save_dir)
        self.base = base
        self.subdir = subdir
        self.metadata = _check_metadata(metadata)
        self._text = json.dumps(self.metadata, sort_keys=True) if self.metadata else None
        self.final_dir = self.save_dir / base if subdir else self.save_dir
        self._tmp_dir = self.save_dir / _partial_name(base) if subdir else None
        self._written: list[tuple[Path, Path]] = []  # (temp file, final file)
        self._frames = 0
        self._done = False  # no more writes (closed, closing failed, or aborted)
        self._published = False  # close() succeeded

    @property
    def frames_written(self) -> int:
        """Number of frames written so far."""
        return self._frames

    def _name(self, i: int) -> str:
        return f"{self.base}_{i:03d}.png"

    def write(self, frames: np.ndarray) -> None:
        """Write frames as the next numbered PNGs.

        Args:
            frames: uint8 `[T, H, W, 3]` RGB.

        Raises:
            ValueError: wrong dtype/shape.
            RuntimeError: the writer is already closed or aborted.
        """
        from PIL import Image, PngImagePlugin

        if self._done:
            raise RuntimeError(f"{self.save_dir / self.base}: writer already closed")
        frames = _check_frames(frames)
        info = None
        if self._text is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text(_PNG_META_KEY, self._text)
        for frame in frames:
            name = self._name(self._frames)
            if self._tmp_dir is not None:
                self._tmp_dir.mkdir(parents=True, exist_ok=True)
                tmp, final = self._tmp_dir / name, self.final_dir / name
            else:
                self.save_dir.mkdir(parents=True, exist_ok=True)
                tmp, final = self.save_dir / _partial_name(name[: -len(".png")], ".png"), self.save_dir / name
            # Record before saving so abort() also removes a file that failed halfway.
            self._written.append((tmp, final))
            Image.fromarray(frame).save(tmp, format="PNG", pnginfo=info)
            self._frames += 1

    def close(self) -> list[Path]:
        """Publish the frames under their final names.

        Returns:
            The final PNG paths, in frame order.

        Raises:
            FramepackError: the target directory appeared meanwhile (frames are left in the temp directory).
        """
        if self._published:
            return [final for _, final in self._written]
        if self._done:
            raise RuntimeError(f"{self.save_dir / self.base}: writer was aborted or failed to close")
        self._done = True
        if self._tmp_dir is not None:
            if not self._written:
                self._published = True
                return []
            try:
                # rename, not replace: an existing non-empty `base` directory must not be touched.
                os.rename(self._tmp_dir, self.final_dir)
            except OSError as e:
                raise FramepackError(
                    f"{self.final_dir}: cannot move frames into place ({e}); they are in {self._tmp_dir}"
                ) from None
        else:
            try:
                for tmp, final in self._written:
                    os.replace(tmp, final)
            except BaseException:
                self._cleanup()
                raise
        self._published = True
        return [final for _, final in self._written]

    def _cleanup(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
        else:
            for tmp, _ in self._written:
                tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove every frame not yet published. Safe to call at any time, any number of times.

        After a successful `close()` nothing temporary remains, so this is a no-op: published frames are kept.
        """
        self._done = True
        self._cleanup()

    def __enter__(self) -> PngSequenceWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_png_metadata(path: Path) -> dict[str, str]:
    """Read the metadata a `PngSequenceWriter` stored in a PNG.

    Args:
        path: PNG file.

    Returns:
        The metadata dict; empty when the file carries none of ours.

    Raises:
        FramepackError: missing or unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FramepackError(f"{p}: image file not found")
    try:
        with Image.open(p) as img:
            text = getattr(img, "text", {}).get(_PNG_META_KEY)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise FramepackError(f"{p}: cannot read image ({e})") from None
    return _parse_meta_json(text)


# --------------------------------------------------------------------------------------------------------------
# Latent files
# --------------------------------------------------------------------------------------------------------------


def save_latent(path: Path, latent: torch.Tensor, metadata: dict[str, str] | None = None) -> Path:
    """Save a latent as the reference does: safetensors, one tensor `latent`, string metadata.

    The tensor is stored as given (shape and dtype; the engine passes CTHW float32), moved to CPU and made
    contiguous. Written to a hidden temp file and moved into place, so a crash never leaves a truncated file.

    Args:
        path: target file (`*_latent.safetensors`).
        latent: the latent tensor.
        metadata: `dict[str, str]` stored as safetensors metadata.

    Returns:
        `path`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = _check_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(_partial_name(path.stem, path.suffix))
    # clone(): a slice of a bigger history tensor must be stored alone, not with the storage it views.
    tensor = latent.detach().to("cpu").contiguous().clone()
    try:
        save_file({_LATENT_KEY: tensor}, str(tmp), metadata=meta or None)
        # safetensors creates the file 0600; give it the permissions of every other output (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _pick_latent_key(items: Sequence[tuple[str, int]]) -> str | None:
    """`latent`, else the first key starting with `latent` whose tensor has ndim >= 4 (the reference's rule)."""
    names = [k for k, _ in items]
    if _LATENT_KEY in names:
        return _LATENT_KEY
    for k, ndim in items:
        if k.startswith(_LATENT_KEY) and ndim >= 4:
            return k
    return None


def load_latent(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Load a latent saved by us or by the reference.

    `.safetensors` files are read with safetensors (metadata included); any other file with
    `torch.load(weights_only=True)`, which never runs pickled code, and must hold a tensor or a dict with a
    latent key (no metadata then). The tensor is returned as stored (CTHW or BCTHW).

    Args:
        path: latent file.

    Returns:
        `(latent, metadata)`.

    Raises:
        FramepackError: missing file, not a latent file, or no latent tensor in it (the message says which).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FramepackError(f"{p}: latent file not found")
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                items = [(k, len(f.get_slice(k).get_shape())) for k in f.keys()]
                key = _pick_latent_key(items)
                if key is None:
                    names = [k for k, _ in items]
                    shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
                    raise FramepackError(
                        f"{p}: no latent tensor (expected key 'latent' or a 'latent*' tensor of 4+ dims; "
                        f"found {shown or 'no tensors'}); is it a model file?"
                    )
                return f.get_tensor(key), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise FramepackError(f"{p}: not a latent file (cannot read it as safetensors: {e})") from None

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # unpickling fails in many ways; all mean "not a latent file" (torch's text is not shown:
        # it may suggest weights_only=False)
        raise FramepackError(f"{p}: not a latent file (neither safetensors nor a plain torch tensor file)") from None
    if isinstance(obj, torch.Tensor):
        return obj, {}
    if isinstance(obj, dict):
        tensors = [(k, v) for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)]
        key = _pick_latent_key([(k, v.ndim) for k, v in tensors])
        if key is not None:
            return dict(tensors)[key], {}
        raise FramepackError(
            f"{p}: no latent tensor (expected key 'latent' or a 'latent*' tensor of 4+ dims; found keys "
            f"{list(obj)[:10]})"
        )
    raise FramepackError(f"{p}: not a latent file (holds a {type(obj).__name__}, expected a tensor or a dict)")


# --------------------------------------------------------------------------------------------------------------
# Streaming stitching
# --------------------------------------------------------------------------------------------------------------


class ProgressiveBlender:
    """Stitch overlapping decoded chunks as a stream (the reference's `soft_append`, inference.md §5.5).

    The reference decodes chunks from last to first and folds right, `acc = soft_append(chunk, acc, n)` with
    `soft_append(a, b, n) = a[:-n] ++ (w·a[-n:] + (1-w)·b[:n]) ++ b[n:]` and `w = linspace(1, 0, n)`. That needs
    the whole video in memory before the first frame can be written. Here chunks arrive in time order and fold
    left with the same blend:

        acc = acc[:-n] ++ (w·acc[-n:] + (1-w)·chunk[:n]) ++ chunk[n:],   n = min(overlap, len(acc), len(chunk))

    When every middle chunk has at least `2·overlap` frames the blend windows do not touch, and each output frame
    is computed by the same float32 operations as the right fold, so the results are bit-identical (the reference
    layout has 69-frame middle chunks and overlap 33). Only the last `overlap` frames can still change, so only
    they are kept (as float32, on CPU); every earlier frame is converted with `to_uint8` and written to all sinks
    immediately.

    Args:
        overlap: frames shared by consecutive chunks (`latent_window_size·4 - 3`, 33 by default); 0 concatenates.
        sinks: writers receiving uint8 `[T, H, W, 3]` frames via `.write()`.
    """

    def __init__(self, overlap: int, sinks: Sequence[FrameSink]) -> None:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        self.overlap = int(overlap)
        self.sinks = list(sinks)
        self._tail: torch.Tensor | None = None  # float32 [3, <=overlap, H, W]: the frames still open to blending
        self._emitted = 0
        self._finished = False

    @property
    def buffered_frames(self) -> int:
        """Frames held back for blending with the next chunk (at most `overlap`)."""
        return 0 if self._tail is None else int(self._tail.shape[1])

    @property
    def frames_written(self) -> int:
        """Frames already sent to the sinks."""
        return self._emitted

    def add(self, pixels: torch.Tensor) -> None:
        """Blend in the next chunk (in time order) and write out every frame that is now final.

        Args:
            pixels: decoded chunk, float `[3, T, H, W]` (or `[1, 3, T, H, W]`), any dtype/device.

        Raises:
            ValueError: wrong shape, or a frame size different from the previous chunks.
            RuntimeError: called after `finish()`.
        """
        import torch

        if self._finished:
            raise RuntimeError("ProgressiveBlender.add() after finish()")
        chunk = _as_cthw(pixels).to(device="cpu", dtype=torch.float32)
        if chunk.shape[1] == 0:
            return
        tail = self._tail
        if tail is None or tail.shape[1] == 0:
            acc = chunk
        else:
            if tail.shape[2:] != chunk.shape[2:]:
                raise ValueError(f"chunk frame size {tuple(chunk.shape[2:])} != previous {tuple(tail.shape[2:])}")
            n = min(self.overlap, tail.shape[1], chunk.shape[1])
            # Same expression, dtype and op order as the reference's soft_append, so the floats match exactly.
            w = torch.linspace(1, 0, n, dtype=torch.float32).view(1, -1, 1, 1)
            blended = w * tail[:, tail.shape[1] - n :] + (1 - w) * chunk[:, :n]
            acc = torch.cat([tail[:, : tail.shape[1] - n], blended, chunk[:, n:]], dim=1)
        keep = min(self.overlap, acc.shape[1])
        self._emit(acc[:, : acc.shape[1] - keep])
        # clone(): a view would keep the whole chunk's storage alive, defeating the bounded memory.
        self._tail = acc[:, acc.shape[1] - keep :].clone()

    def finish(self) -> int:
        """Write the held-back frames. Does not close the sinks.

        Returns:
            Total frames written to the sinks.
        """
        if not self._finished:
            self._finished = True
            if self._tail is not None:
                self._emit(self._tail)
                self._tail = None
        return self._emitted

    def _emit(self, frames: torch.Tensor) -> None:
        if frames.shape[1] == 0:
            return
        u8 = to_uint8(frames)
        for sink in self.sinks:
            sink.write(u8)
        self._emitted += u8.shape[0]
