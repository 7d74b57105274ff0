"""Outputs: uint8 conversion, output names, mp4/PNG writers, latent files and streaming chunk stitching."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from framepack_cli.errors import FramepackError
from framepack_cli.io.outputs import (
    PngSequenceWriter,
    ProgressiveBlender,
    VideoWriter,
    load_latent,
    read_png_metadata,
    read_video_metadata,
    save_latent,
    to_uint8,
    unique_base,
)

META = {"prompt": 'a cat, walking ✓ «quoted» "x"', "seeds": "42", "fps": "30", "empty": ""}


def _gradient_video(t: int, h: int, w: int) -> np.ndarray:
    """Smooth moving colour gradient: what a lossy codec reproduces closely, unlike noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(t):
        r = 40 + 170 * x / max(w - 1, 1)
        g = 40 + 170 * y / max(h - 1, 1)
        b = 128 + 60 * np.sin((x + y + 4 * i) / 12.0)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _decode(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream, dict]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {
            "codec": s.codec_context.name,
            "pix_fmt": s.codec_context.pix_fmt,
            "rate": s.average_rate,
            "size": (s.width, s.height),
        }
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
    return frames, s, info


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ------------------------------------------------------------------------------------------- to_uint8


def test_to_uint8_values_clamp_and_truncation() -> None:
    vals = torch.tensor([-1.0, 1.0, 0.0, -5.0, 7.0, 0.999, -0.999, 0.5, float("nan")])
    x = vals.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, vals.numel(), 3)
    # 0 -> 127.5 -> 127 (truncation, not rounding); 0.999 -> 254.87 -> 254; 0.5 -> 191.25 -> 191
    assert out[0, 0, :, 0].tolist() == [0, 255, 127, 0, 255, 254, 0, 191, 0]
    # Bit-for-bit the reference formula, computed in float32.
    r = torch.randn(3, 4, 5, 6) * 1.2
    ref = (torch.clamp((r.float() + 1) / 2, 0, 1) * 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(to_uint8(r), ref)
    np.testing.assert_array_equal(to_uint8(r.half()), to_uint8(r.half().float()))


def test_to_uint8_layout_and_batch_of_one() -> None:
    x = torch.zeros(3, 2, 4, 5)
    x[0] = 1.0  # red channel
    out = to_uint8(x.unsqueeze(0))
    assert out.shape == (2, 4, 5, 3) and out.flags.c_contiguous
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 127).all()
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(4, 2, 4, 5))


# ------------------------------------------------------------------------------------------- unique_base


def test_unique_base_skips_every_taken_name(tmp_path: Path) -> None:
    sfx = [".mp4", "_latent.safetensors", ""]
    assert unique_base(tmp_path, "run", sfx) == "run"
    (tmp_path / "run.mp4").write_bytes(b"x")
    assert unique_base(tmp_path, "run", sfx) == "run_1"
    (tmp_path / "run_1_latent.safetensors").write_bytes(b"x")  # any one suffix blocks a candidate
    (tmp_path / "run_2").mkdir()  # the PNG directory ("" suffix)
    got = unique_base(tmp_path, "run", sfx)
    assert got == "run_3"
    assert not any((tmp_path / (got + s)).exists() for s in sfx)
    # A suffix set that does not include ".mp4" is not blocked by it.
    assert unique_base(tmp_path, "run", ["_latent.safetensors"]) == "run"


# ------------------------------------------------------------------------------------------- VideoWriter


@pytest.mark.parametrize("crf", [0, 16])
def test_video_writer_roundtrip(tmp_path: Path, crf: int) -> None:
    src = _gradient_video(12, 48, 64)
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=24, crf=crf, metadata=META) as w:
        w.write(src[:5])  # streamed in pieces, including an empty one
        w.write(src[5:5])
        w.write(src[5:])
        assert w.frames_written == 12
    assert _leftovers(tmp_path) == ["v.mp4"]
    frames, _, info = _decode(out)
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "rate": Fraction(24), "size": (64, 48)}
    assert frames.shape == src.shape
    err = np.abs(frames.astype(np.float32) - src.astype(np.float32)).mean()
    assert err < 3.0, err
    assert read_video_metadata(out) == META


_ENCODE_SCRIPT = """
import os, sys
if sys.argv[3] == "one":  # one core: libx264's and swscale's automatic thread counts become 1
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import numpy as np
from pathlib import Path
from framepack_cli.io.outputs import VideoWriter
frames = np.load(sys.argv[1])
with VideoWriter(Path(sys.argv[2]), fps=30, crf=16, metadata={"seeds": "1"}) as w:
    w.write(frames)
"""


def test_video_writer_same_frames_same_bytes(tmp_path: Path) -> None:
    """Two runs encoding the same frames write the same file, also on a machine with another number of cores.

    Each encode runs in a fresh process, as each `framepack` run does.
    """
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    src = np.clip(_gradient_video(24, 144, 192).astype(np.int16) + rng.integers(-20, 20, (24, 144, 192, 3)),
                  0, 255).astype(np.uint8)
    np.save(tmp_path / "src.npy", src)
    repo = Path(__file__).resolve().parents[2]
    paths = [tmp_path / f"{name}.mp4" for name in ("all_cores", "again", "one_core")]
    for path, cores in zip(paths, ("all", "all", "one"), strict=True):
        subprocess.run([sys.executable, "-c", _ENCODE_SCRIPT, str(tmp_path / "src.npy"), str(path), cores],
                       check=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1], "two encodes of the same frames differ"
    assert data[0] == data[2], "the encode depends on the number of cores"
    frames = [_decode(p)[0] for p in paths]
    np.testing.assert_array_equal(frames[0], frames[2])
    with av.open(str(paths[0])) as c:  # nothing in the container that changes from run to run
        tags = dict(c.metadata) | dict(c.streams.video[0].metadata)
    assert "creation_time" not in tags and read_video_metadata(paths[0]) == {"seeds": "1"}


def test_video_writer_close_returns_path_and_no_metadata(tmp_path: Path) -> None:
    w = VideoWriter(tmp_path / "a.mp4", fps=30)
    w.write(_gradient_video(3, 32, 32))
    assert w.close() == tmp_path / "a.mp4"
    assert read_video_metadata(tmp_path / "a.mp4") == {}
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].average_rate == 30
        assert c.streams.video[0].frames == 3


def test_video_writer_pads_odd_sizes_by_replication(tmp_path: Path) -> None:
    src = _gradient_video(4, 33, 47)
    with VideoWriter(tmp_path / "odd.mp4", fps=30, crf=0) as w:
        w.write(src)
    frames, _, info = _decode(tmp_path / "odd.mp4")
    assert info["size"] == (48, 34)
    assert np.abs(frames[:, :33, :47].astype(np.float32) - src).mean() < 3.0
    # The added row/column repeat the edge, not black.
    assert np.abs(frames[:, 33, :47].astype(np.float32) - src[:, 32]).mean() < 4.0
    assert np.abs(frames[:, :33, 47].astype(np.float32) - src[:, :, 46]).mean() < 4.0


def test_video_writer_exception_and_abort_leave_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, fps=30) as w:
        # Enough frames to get past libx264's lookahead, so packets are already muxed into the temp file.
        w.write(np.zeros((60, 16, 16, 3), np.uint8))
        assert [n for n in _leftovers(tmp_path) if n.endswith(".partial.mp4")]
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []

    w = VideoWriter(out, fps=30)
    w.write(_gradient_video(2, 32, 32))
    w.abort()
    w.abort()  # idempotent
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        w.write(_gradient_video(1, 32, 32))

    with pytest.raises(RuntimeError, match="aborted"):
        w.close()  # an aborted writer does not pretend to have produced a file

    w = VideoWriter(out, fps=30)
    with pytest.raises(ValueError, match="no frames"):
        w.close()
    assert _leftovers(tmp_path) == []


def test_video_writer_rejects_bad_frames(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "b.mp4", fps=30) as w:
        with pytest.raises(ValueError):
            w.write(np.zeros((2, 32, 32, 3), np.float32))
        w.write(np.zeros((1, 32, 32, 3), np.uint8))
        with pytest.raises(ValueError, match="differs"):
            w.write(np.zeros((1, 16, 32, 3), np.uint8))
    assert (tmp_path / "b.mp4").is_file()


def test_read_video_metadata_errors(tmp_path: Path) -> None:
    with pytest.raises(FramepackError, match="not found"):
        read_video_metadata(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(FramepackError, match="junk.mp4"):
        read_video_metadata(tmp_path / "junk.mp4")


# ------------------------------------------------------------------------------------------- PNG sequence


def test_png_sequence_subdir_layout(tmp_path: Path) -> None:
    src = np.random.default_rng(0).integers(0, 256, size=(5, 8, 12, 3), dtype=np.uint8)
    with PngSequenceWriter(tmp_path, "run", metadata=META) as w:
        w.write(src[:2])
        w.write(src[2:])
        # Nothing visible under the final name until close.
        assert not (tmp_path / "run").exists()
    assert _leftovers(tmp_path) == ["run"]
    files = sorted((tmp_path / "run").iterdir())
    assert [f.name for f in files] == [f"run_{i:03d}.png" for i in range(5)]
    for i, f in enumerate(files):
        np.testing.assert_array_equal(np.asarray(Image.open(f).convert("RGB")), src[i])
        assert read_png_metadata(f) == META


def test_png_sequence_flat_layout_close_returns_paths(tmp_path: Path) -> None:
    (tmp_path / "other.png").write_bytes(b"user file")
    src = np.random.default_rng(1).integers(0, 256, size=(2, 6, 7, 3), dtype=np.uint8)
    w = PngSequenceWriter(tmp_path, "one", subdir=False)
    w.write(src)
    paths = w.close()
    assert paths == [tmp_path / "one_000.png", tmp_path / "one_001.png"]
    assert _leftovers(tmp_path) == ["one_000.png", "one_001.png", "other.png"]
    for p, frame in zip(paths, src, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), frame)
        assert read_png_metadata(p) == {}
    assert w.close() == paths  # idempotent
    w.abort()  # after close: published frames stay
    assert (tmp_path / "one_000.png").is_file()


@pytest.mark.parametrize("subdir", [True, False])
def test_png_sequence_abort_leaves_nothing(tmp_path: Path, subdir: bool) -> None:
    src = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(KeyError), PngSequenceWriter(tmp_path, "gone", metadata=META, subdir=subdir) as w:
        w.write(src)
        assert _leftovers(tmp_path)  # temp files exist while streaming
        raise KeyError("interrupted")
    assert _leftovers(tmp_path) == []


def test_png_subdir_does_not_clobber_existing_directory(tmp_path: Path) -> None:
    w = PngSequenceWriter(tmp_path, "taken")
    w.write(np.zeros((1, 4, 4, 3), np.uint8))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(FramepackError, match="taken"):
        w.close()
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    with pytest.raises(RuntimeError):
        w.close()  # a failed close is not retried as if it had worked
    w.abort()
    assert _leftovers(tmp_path) == ["taken"]


# ------------------------------------------------------------------------------------------- latents


def test_latent_roundtrip_with_metadata(tmp_path: Path) -> None:
    history = torch.randn(1, 16, 19, 6, 8)
    latent = history[0, :, :10]  # a non-contiguous slice, as the engine's history[:, :, :total] is
    p = save_latent(tmp_path / "x_latent.safetensors", latent, META)
    assert _leftovers(tmp_path) == ["x_latent.safetensors"]
    got, meta = load_latent(p)
    assert got.dtype == torch.float32 and got.shape == (16, 10, 6, 8)
    torch.testing.assert_close(got, latent, rtol=0, atol=0)
    assert meta == META
    save_latent(tmp_path / "nometa.safetensors", latent)
    assert load_latent(tmp_path / "nometa.safetensors")[1] == {}


def test_latent_key_fallback(tmp_path: Path) -> None:
    t = torch.randn(1, 16, 3, 4, 4)
    save_file(
        {"latent_small": torch.zeros(3), "latents": t, "other": torch.ones(1, 1, 1, 1)},
        str(tmp_path / "f.safetensors"),
        metadata={"seeds": "7"},
    )
    got, meta = load_latent(tmp_path / "f.safetensors")
    torch.testing.assert_close(got, t, rtol=0, atol=0)
    assert meta == {"seeds": "7"}


def test_latent_pt_files_weights_only(tmp_path: Path) -> None:
    t = torch.randn(16, 5, 4, 4)
    torch.save(t, tmp_path / "a.pt")
    torch.testing.assert_close(load_latent(tmp_path / "a.pt")[0], t, rtol=0, atol=0)
    torch.save({"note": torch.zeros(2), "latent_x": t}, tmp_path / "b.pt")
    got, meta = load_latent(tmp_path / "b.pt")
    torch.testing.assert_close(got, t, rtol=0, atol=0)
    assert meta == {}

    torch.save({"latent": Fraction(1, 3)}, tmp_path / "evil.pt")  # weights_only must refuse arbitrary objects
    with pytest.raises(FramepackError, match="evil.pt.*not a latent file"):
        load_latent(tmp_path / "evil.pt")


def test_latent_errors_name_the_file(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(2, 2), "latent_1d": torch.zeros(5)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(FramepackError, match=r"w\.safetensors: no latent tensor"):
        load_latent(tmp_path / "w.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(FramepackError, match=r"junk\.safetensors: not a latent file"):
        load_latent(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(FramepackError, match=r"junk\.pt: not a latent file"):
        load_latent(tmp_path / "junk.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "nolat.pt")
    with pytest.raises(FramepackError, match=r"nolat\.pt: no latent tensor"):
        load_latent(tmp_path / "nolat.pt")
    with pytest.raises(FramepackError, match="not found"):
        load_latent(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------- stitching


class _Sink:
    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def write(self, frames: np.ndarray) -> None:
        self.parts.append(frames.copy())

    def all(self) -> np.ndarray:
        return np.concatenate(self.parts)


def _soft_append(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """The reference's soft_append on [C, T, H, W] (time = dim 1)."""
    w = torch.linspace(1, 0, n, dtype=a.dtype).view(1, -1, 1, 1)
    return torch.cat([a[:, :-n], w * a[:, -n:] + (1 - w) * b[:, :n], b[:, n:]], dim=1)


def _reference_stitch(chunks: list[torch.Tensor], overlap: int) -> torch.Tensor:
    """The reference's decode order: last chunk first, folding right."""
    acc = None
    for chunk in reversed(chunks):
        acc = chunk if acc is None else _soft_append(chunk, acc, overlap)
    assert acc is not None
    return acc


def test_blender_matches_reference_right_fold() -> None:
    # 4 sections of window 9: latent chunks [0:19], [10:28], [19:37], [28:37] decode to 73, 69, 69, 33 frames.
    g = torch.Generator().manual_seed(0)
    chunks = [torch.rand(3, t, 6, 5, generator=g) * 2.4 - 1.2 for t in (73, 69, 69, 33)]
    ref = to_uint8(_reference_stitch(chunks, 33))
    assert ref.shape[0] == 145

    sink_a, sink_b = _Sink(), _Sink()
    blender = ProgressiveBlender(33, [sink_a, sink_b])
    for c in chunks:
        blender.add(c.unsqueeze(0) if c.shape[1] == 69 else c)  # batch-of-one input accepted too
        assert blender.buffered_frames <= 33
    assert blender.finish() == 145
    np.testing.assert_array_equal(sink_a.all(), ref)
    np.testing.assert_array_equal(sink_b.all(), ref)
    # Frames were streamed out chunk by chunk, not all at the end.
    assert [p.shape[0] for p in sink_a.parts] == [40, 36, 36, 33]


def test_blender_holds_at_most_overlap_frames() -> None:
    sink = _Sink()
    blender = ProgressiveBlender(4, [sink])
    frame_bytes = 3 * 3 * 2 * 4  # C·H·W float32
    for t in (10, 9, 12):
        blender.add(torch.randn(3, t, 3, 2))
        tail = blender._tail
        assert tail is not None and tail.shape[1] == 4 and tail.dtype == torch.float32
        # Its own storage, not a view that would pin the whole chunk in memory.
        assert tail.untyped_storage().nbytes() == 4 * frame_bytes
    assert sink.all().shape[0] == (10 + 9 + 12 - 2 * 4) - 4  # everything but the open tail
    blender.finish()
    assert sink.all().shape[0] == 10 + 9 + 12 - 2 * 4
    with pytest.raises(RuntimeError):
        blender.add(torch.zeros(3, 1, 3, 2))


def test_blender_short_chunks_and_zero_overlap() -> None:
    # Chunks shorter than the overlap: n = min(overlap, len(acc), len(chunk)), left fold.
    chunks = [torch.rand(3, t, 2, 2) * 2 - 1 for t in (3, 5, 2, 7)]
    acc = chunks[0]
    for c in chunks[1:]:
        n = min(4, acc.shape[1], c.shape[1])
        acc = _soft_append(acc, c, n)
    sink = _Sink()
    b = ProgressiveBlender(4, [sink])
    for c in chunks:
        b.add(c)
    b.finish()
    np.testing.assert_array_equal(sink.all(), to_uint8(acc))

    sink = _Sink()
    b = ProgressiveBlender(0, [sink])
    for c in chunks:
        b.add(c)
        assert b.buffered_frames == 0
    b.finish()
    np.testing.assert_array_equal(sink.all(), to_uint8(torch.cat(chunks, dim=1)))


def test_blender_into_video_writer(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "s.mp4", fps=30, crf=0) as w:
        b = ProgressiveBlender(5, [w])
        for t in (13, 9, 5):
            b.add(torch.zeros(3, t, 16, 16))
        b.finish()
    frames, _, _ = _decode(tmp_path / "s.mp4")
    assert frames.shape == (13 + 9 + 5 - 10, 16, 16, 3)


def test_run_tracker_counts_a_section_with_its_last_step():
    """The "N steps in" line is printed at the last step: a Ctrl-C right after it says the section is done."""
    from framepack_cli.engine.lifecycle import RunTracker
    from framepack_cli.engine.progress import NullProgress

    seen: list[str] = []

    class Inner(NullProgress):
        def step(self, done, total):
            seen.append(tracker.interrupted_line())

    tracker = RunTracker(Inner())
    tracker.start_sections(2)
    tracker.start_section(0, 2, "section 2/2")
    tracker.step(1, 2)
    tracker.step(2, 2)
    assert seen == ["Interrupted while sampling section 1 of 2; nothing written",
                    "Interrupted after section 1 of 2; nothing written"]
    tracker.end_section()  # not counted twice
    assert tracker.interrupted_line() == "Interrupted after section 1 of 2; nothing written"
    tracker.start_section(1, 2, "section 1/2")
    tracker.end_section()
    assert tracker.interrupted_line() == "Interrupted after sampling all 2 section(s); nothing written"
