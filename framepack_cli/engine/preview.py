"""Seeing a run while it samples: per-section timing (wall time, it/s, an ETA for the whole job, peak GPU memory)
and `--preview` files rewritten after every section.

`SectionWatch` wraps a job's `ProgressSink` (`framepack_cli.engine.pipeline.sample_jobs` puts it around every
job): it times each section, hands `end_section` an info dict (see `ProgressSink.end_section`) and, with
`--preview`, turns the latent the job reports through `section_output` into a preview file.

Preview pixels (`--preview_mode`):

- `latent` (default): a fixed linear map of the 16 latent channels to RGB plus a bias (`LATENT_RGB`,
  `LATENT_RGB_BIAS`), upsampled 4x (half the video's width and height), no VAE: milliseconds per section. The
  coefficients are the published approximation of the HunyuanVideo VAE's latent space (the VAE FramePack uses)
  that ComfyUI ships for HunyuanVideo latents and FramePack's own demo uses for its live preview; we did not fit
  them (no real weights here). They are a rough colour sketch of the real VAE's output, not a decode: with any
  other VAE (the tiny test VAE included) the colours mean nothing, only the motion and layout.
- `vae`: the loaded VAE decodes each new section (`vae_decode`; one-frame jobs per frame, as their output is
  decoded), exact frames, at the cost of a decode per section and the VAE on the device meanwhile.

Files: a `.png` preview of a video is a contact sheet, one tile (the section's first frame) per section in time
order, grey until the section is sampled; of a one-frame job, the frame. An `.mp4` preview is every frame so far
(latent mode: one frame per latent frame at a quarter of `--fps`). Previews are kept after the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError

# Latent (scaled, as the DiT samples it) -> RGB in [0, 1]: rgb = latent . LATENT_RGB + LATENT_RGB_BIAS, per pixel.
# Public coefficients for HunyuanVideo latents (ComfyUI's latent_formats.HunyuanVideo, used by FramePack's demo).
LATENT_RGB = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)
LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)
LATENT_UPSCALE = 4  # latent pixels -> preview pixels (the VAE's factor is 8: half the width and height)
SHEET_MAX_WIDTH = 1536  # contact sheet width cap (px)
SHEET_COLUMNS = 8
PENDING_GREY = 96


def latent_to_rgb(latent: torch.Tensor, upscale: int = LATENT_UPSCALE) -> np.ndarray:
    """Project a CTHW latent (16 channels) to uint8 frames `[T, h*upscale, w*upscale, 3]` with `LATENT_RGB`."""
    if latent.ndim != 4 or latent.shape[0] != len(LATENT_RGB):
        raise ValueError(f"expected a latent [{len(LATENT_RGB)}, T, h, w], got {tuple(latent.shape)}")
    weight = torch.tensor(LATENT_RGB, dtype=torch.float32)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = torch.einsum("cthw,ck->tkhw", latent.detach().float().cpu(), weight) + bias[None, :, None, None]
    if upscale > 1:
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=upscale, mode="bilinear", align_corners=False)
    return np.ascontiguousarray((rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def preview_path(opts, seed: int) -> Path | None:
    """Where `--preview` writes for a job: the path given, or for `auto` `<save_path>/<name>.preview.png|mp4`
    (`<name>`: `--output_name`, else `<timestamp>_<seed>`); None without `--preview`."""
    if not getattr(opts, "preview", None):
        return None
    if opts.preview != "auto":
        return Path(opts.preview)
    from framepack_cli.engine.writing import timestamp

    suffix = ".png" if opts.one_frame_inference is not None else ".mp4"
    return Path(opts.save_path) / f"{opts.output_name or f'{timestamp()}_{seed}'}.preview{suffix}"


def foreign_file_error(path: Path) -> FramepackError:
    return FramepackError(f"--preview: {path} exists and is not a framepack preview; give another path (or "
                          "`auto`) or move that file away (it is never overwritten)")


def check_preview_target(opts) -> None:
    """Before any model loads: refuse a `--preview` path that holds a file which is not one of our previews
    (`auto` without `--output_name` has a fresh timestamped name: nothing to check)."""
    from framepack_cli.io.previews import is_preview_file

    if not getattr(opts, "preview", None) or (opts.preview == "auto" and not opts.output_name):
        return
    path = preview_path(opts, 0)
    if path.exists() and not is_preview_file(path):
        raise foreign_file_error(path)
    if opts.preview != "auto" and not path.parent.is_dir():
        raise FramepackError(f"--preview: folder {path.parent} does not exist; create it, or use --preview auto "
                             "(beside the outputs)")


class PreviewWriter:
    """Rewrites one job's preview file from the latent sampled so far (`update`), after each section.

    Args:
        path: the .png / .mp4 to write.
        mode: "latent" or "vae".
        sections: sections the job samples (tiles of a contact sheet).
        f1: sections are appended in time (F1), else prepended (vanilla, inverted).
        one_frame: a one-frame job (its frames are decoded one by one).
        fps: the video's frame rate.
        vae: returns the loaded VAE on its device (vae mode); `park` moves it off the GPU again afterwards.
    """

    def __init__(self, path: Path, mode: str, *, sections: int, f1: bool, one_frame: bool, fps: int,
                 vae: Callable[[], Any] | None = None, park: Callable[[], None] | None = None) -> None:
        self.path, self.mode, self.sections, self.f1, self.one_frame, self.fps = (
            Path(path), mode, sections, f1, one_frame, fps)
        self.vae, self.park = vae, park
        self.seen = 0  # latent frames already turned into preview pixels
        self.done = 0  # sections reported
        self.blocks: list[np.ndarray] = []  # vae mode, mp4: decoded frames per section, in time order
        self.tiles: dict[int, np.ndarray] = {}  # contact sheet: time position -> first frame
        self.vae_decodes = 0

    @property
    def is_png(self) -> bool:
        return self.path.suffix.lower() == ".png"

    def update(self, latent: torch.Tensor) -> Path:
        """`latent`: CTHW, everything sampled so far in time order. Writes the preview and returns its path."""
        from framepack_cli.io.previews import write_preview_mp4, write_preview_png

        new = latent.shape[1] - self.seen
        newest = latent[:, -new:] if self.f1 else latent[:, :new]
        self.seen = latent.shape[1]
        position = self.done if self.f1 else self.sections - 1 - self.done
        self.done += 1
        note = f"{self.done}/{self.sections} sections, {self.mode}"
        if self.mode == "vae":
            frames = self._decode(newest)
            if self.is_png:
                self.tiles[position] = frames[0] if not self.one_frame else frames[-1]
            elif self.f1:
                self.blocks.append(frames)
            else:
                self.blocks.insert(0, frames)
            if self.is_png:
                return write_preview_png(self.path, self._sheet(), note)
            return write_preview_mp4(self.path, self.blocks, self.fps, note)
        if self.is_png:
            self.tiles[position] = latent_to_rgb(newest[:, -1:] if self.one_frame else newest[:, :1])[0]
            return write_preview_png(self.path, self._sheet(), note)
        return write_preview_mp4(self.path, latent_to_rgb(latent), max(1, self.fps // 4), note)

    def _decode(self, z: torch.Tensor) -> np.ndarray:
        from framepack_cli.io.outputs import to_uint8
        from framepack_cli.models.vae import vae_decode, vae_decode_per_frame

        vae = self.vae()
        try:
            with torch.no_grad():
                pixels = (vae_decode_per_frame if self.one_frame else vae_decode)(vae, z.unsqueeze(0))
            self.vae_decodes += 1
            return to_uint8(pixels[0].float().cpu())
        finally:
            if self.park is not None:
                self.park()

    def _sheet(self) -> np.ndarray:
        """The frame (one-frame) or a grid of one tile per section in time order, grey where not sampled yet."""
        if self.one_frame or self.sections == 1:
            return next(iter(self.tiles.values()))
        from PIL import Image

        h, w = next(iter(self.tiles.values())).shape[:2]
        cols = min(self.sections, SHEET_COLUMNS)
        rows = -(-self.sections // cols)
        tw = min(w, SHEET_MAX_WIDTH // cols)
        th = max(1, round(h * tw / w))
        sheet = np.full((rows * th, cols * tw, 3), PENDING_GREY, np.uint8)
        for pos, tile in self.tiles.items():
            if tile.shape[:2] != (th, tw):
                tile = np.asarray(Image.fromarray(tile).resize((tw, th), Image.BILINEAR))
            r, c = divmod(pos, cols)
            sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
        return sheet


def cuda_peak(device: torch.device) -> tuple[Callable[[], None], Callable[[], int]] | None:
    """(reset, read) of the peak memory allocated on a CUDA device; None elsewhere."""
    if device.type != "cuda":
        return None
    return (lambda: torch.cuda.reset_peak_memory_stats(device)), (lambda: torch.cuda.max_memory_allocated(device))


class SectionWatch:
    """A `ProgressSink` around one job's sink: times its sections, passes `end_section` the info dict, and
    writes the job's `--preview` from `section_output`. Everything else is forwarded unchanged.

    Args:
        inner: the run's sink.
        preview: the job's preview writer, or None.
        peak: (reset, read) of the device's peak memory (`cuda_peak`), None off CUDA; tests inject their own.
        clock: seconds (monotonic); tests inject their own.
    """

    def __init__(self, inner: ProgressSink, preview: PreviewWriter | None = None,
                 peak: tuple[Callable[[], None], Callable[[], int]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner, self.preview, self.peak, self.clock = inner, preview, peak, clock
        self.total = 0
        self.durations: list[float] = []
        self._t0 = self._t_steps = 0.0
        self._steps = 0
        self._label = ""
        self._index = 0

    def __getattr__(self, name: str) -> Any:  # the rest of ProgressSink: forwarded
        return getattr(self.inner, name)

    def message(self, text: str) -> None:
        self.inner.message(text)

    def result(self, text: str) -> None:
        self.inner.result(text)

    def start_sections(self, total: int) -> None:
        self.total, self.durations = total, []
        if self.preview is not None:
            self.inner.message(f"Preview: {self.preview.path} ({self.preview.mode} mode), rewritten after each "
                               "section")
        self.inner.start_sections(total)

    def start_section(self, index: int, total: int, label: str) -> None:
        self._t0 = self._t_steps = self.clock()
        self._steps, self._label, self._index = 0, label, index
        if self.peak is not None:
            self.peak[0]()
        self.inner.start_section(index, total, label)

    def step(self, done: int, total: int) -> None:
        self._steps, self._t_steps = done, self.clock()
        self.inner.step(done, total)

    def section_output(self, latent: torch.Tensor) -> None:
        if self.preview is not None:
            try:
                self.preview.update(latent)
            except (OSError, torch.OutOfMemoryError, RuntimeError) as e:
                what = "out of memory" if isinstance(e, torch.OutOfMemoryError) else str(e).splitlines()[0]
                self.inner.message(f"Warning: --preview: could not write {self.preview.path} ({what}); previews "
                                   "stop for this job, the run goes on")
                self.preview = None
                if isinstance(e, torch.OutOfMemoryError):
                    from framepack_cli.engine.context import free_memory

                    free_memory(torch.device("cuda"))
        self.inner.section_output(latent)

    def end_section(self, info: dict | None = None) -> None:
        now = self.clock()
        seconds = now - self._t0
        self.durations.append(seconds)
        left = max(self.total - len(self.durations), 0)
        step_s = self._t_steps - self._t0
        out = {
            "label": self._label, "index": self._index, "total": self.total, "seconds": seconds,
            "steps": self._steps, "it_s": self._steps / step_s if step_s > 0 and self._steps else None,
            "sections_done": len(self.durations), "eta_s": sum(self.durations) / len(self.durations) * left,
            "elapsed_s": sum(self.durations),
        }
        if self.peak is not None:
            out["peak_gpu_bytes"] = int(self.peak[1]())
        if self.preview is not None:
            out["preview"] = str(self.preview.path)
        self.inner.end_section({**out, **(info or {})})


def watch_sections(job, models, sink: ProgressSink) -> SectionWatch:
    """The `SectionWatch` for `job` (its preview writer with `--preview`; a foreign file at the path makes the
    preview of this job off, with a warning: it is never overwritten)."""
    from framepack_cli.io.previews import is_preview_file

    preview = None
    path = preview_path(job.opts, job.seed)
    if path is not None:
        if path.exists() and not is_preview_file(path):
            sink.message(f"Warning: {foreign_file_error(path).message}; no preview for this job")
        else:
            o = job.opts
            sections = 1 if job.one_frame else getattr(job, "n", 1)
            preview = PreviewWriter(path, o.preview_mode, sections=sections, f1=bool(o.f1), one_frame=job.one_frame,
                                    fps=o.fps, vae=models.vae, park=models.park_vae)
    return SectionWatch(sink, preview, peak=cuda_peak(models.device))
