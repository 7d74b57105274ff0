"""`--preview` pieces without a run: the latent->RGB projection, the preview files (valid, marked, atomic), the
contact sheet, the vae mode's frames, the refusal of a foreign file, and the per-section progress info/line."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from framepack_cli.cli.render import section_line
from framepack_cli.engine.preview import (
    LATENT_RGB,
    PENDING_GREY,
    PreviewWriter,
    SectionWatch,
    check_preview_target,
    latent_to_rgb,
)
from framepack_cli.engine.progress import NullProgress
from framepack_cli.errors import FramepackError
from framepack_cli.io.previews import is_preview_file, write_preview_png
from framepack_cli.options.generate import GenerateOptions
from framepack_cli.options.validation import OptionsError, validate
from tests.conftest import MODELS

MODEL_VALUES = {k: str(MODELS / f) for k, f in (
    ("dit", "dit_single.safetensors"), ("vae", "vae.safetensors"), ("text_encoder1", "llava_llama3_tiny.safetensors"),
    ("text_encoder2", "clip_l_tiny.safetensors"), ("image_encoder", "sigclip_tiny.safetensors"))}


def mp4_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def no_vae():
    raise AssertionError("latent mode must not call the VAE")


def test_latent_to_rgb_is_the_fixed_16x3_projection_plus_bias_upsampled_4x():
    z = torch.zeros(16, 2, 3, 5)
    z[10, 1] = 2.0  # channel 10: (0.1166, 0.1627, 0.0962) per unit
    rgb = latent_to_rgb(z)
    assert rgb.shape == (2, 12, 20, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0].tolist() == [round(0.0259 * 255), 0, 0]  # the bias alone (negatives clamp to 0)
    w = LATENT_RGB[10]
    assert rgb[1, 5, 7].tolist() == [round((2 * w[0] + 0.0259) * 255), round((2 * w[1] - 0.0192) * 255),
                                     round((2 * w[2] - 0.0761) * 255)]
    with pytest.raises(ValueError, match="expected a latent"):
        latent_to_rgb(torch.zeros(4, 1, 2, 2))


def test_latent_mp4_preview_grows_after_each_section_and_is_marked(tmp_path):
    path = tmp_path / "p.mp4"
    w = PreviewWriter(path, "latent", sections=3, f1=False, one_frame=False, fps=30, vae=no_vae)
    gen = torch.Generator().manual_seed(0)
    latent = torch.zeros(16, 0, 4, 6)
    for k in range(3):  # vanilla: each new section is prepended in time
        latent = torch.cat([torch.randn(16, 3, 4, 6, generator=gen), latent], dim=1)
        assert w.update(latent) == path
        frames = mp4_frames(path)
        assert len(frames) == 3 * (k + 1) and frames[0].shape == (16, 24, 3)
        assert is_preview_file(path)
    assert w.vae_decodes == 0
    assert not list(tmp_path.glob(".*partial*"))  # the temp file was renamed


def test_png_preview_of_a_video_is_a_contact_sheet_filled_in_time_order(tmp_path):
    path = tmp_path / "sheet.png"
    w = PreviewWriter(path, "latent", sections=3, f1=False, one_frame=False, fps=30, vae=no_vae)
    newest = torch.full((16, 2, 2, 3), 3.0)
    w.update(newest)  # vanilla samples the last section first: it is the third tile
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape == (8, 3 * 12, 3)
    assert (sheet[:, :24] == PENDING_GREY).all()
    assert (sheet[:, 24:] == latent_to_rgb(newest[:, :1])[0]).all()
    w.update(torch.cat([torch.zeros(16, 2, 2, 3), newest], dim=1))
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert (sheet[:, :12] == PENDING_GREY).all()
    assert (sheet[:, 12:24] == latent_to_rgb(torch.zeros(16, 1, 2, 3))[0]).all()
    assert Image.open(path).text["framepack_preview"] == "2/3 sections, latent"


def test_vae_mode_mp4_holds_exactly_the_decoded_frames_of_the_sections_in_time_order(tmp_path):
    from framepack_cli.io.outputs import to_uint8
    from framepack_cli.models.vae import load_vae, vae_decode

    vae = load_vae(str(MODELS / "vae.safetensors"), device=torch.device("cpu"), dtype=torch.float32)
    calls, parked = [], []
    path = tmp_path / "p.mp4"
    w = PreviewWriter(path, "vae", sections=2, f1=True, one_frame=False, fps=24,
                      vae=lambda: calls.append(1) or vae, park=lambda: parked.append(1))
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 3, 2, 3, generator=gen), torch.randn(16, 2, 2, 3, generator=gen)
    w.update(a)
    w.update(torch.cat([a, b], dim=1))  # F1 appends
    with torch.no_grad():
        want = [to_uint8(vae_decode(vae, s.unsqueeze(0))[0].float()) for s in (a, b)]
    assert len(w.blocks) == 2 and all((got == exp).all() for got, exp in zip(w.blocks, want, strict=True))
    assert len(mp4_frames(path)) == sum(len(x) for x in want) == 9 + 5
    assert len(calls) == len(parked) == w.vae_decodes == 2  # the VAE is parked again after each decode


def test_a_foreign_file_at_the_preview_path_is_refused_ours_is_replaced(tmp_path):
    base = {**MODEL_VALUES, "prompt": "a cat", "save_path": str(tmp_path), "video_size": (48, 64)}
    user = tmp_path / "mine.png"
    Image.new("RGB", (4, 4)).save(user)
    with pytest.raises(FramepackError) as e:
        check_preview_target(GenerateOptions(**base, preview=str(user)))
    assert e.value.message == (f"--preview: {user} exists and is not a framepack preview; give another path (or "
                               "`auto`) or move that file away (it is never overwritten)")
    (tmp_path / "clip.preview.mp4").write_bytes(b"not a video")
    with pytest.raises(FramepackError, match="clip.preview.mp4 exists and is not a framepack preview"):
        check_preview_target(GenerateOptions(**base, preview="auto", output_name="clip"))
    ours = write_preview_png(tmp_path / "ours.png", np.zeros((4, 4, 3), np.uint8))
    check_preview_target(GenerateOptions(**base, preview=str(ours)))  # a preview of ours: replaced, no error
    check_preview_target(GenerateOptions(**base, preview="auto"))  # a fresh timestamped name
    with pytest.raises(FramepackError, match=r"--preview: folder .*nowhere does not exist; create it"):
        check_preview_target(GenerateOptions(**base, preview=str(tmp_path / "nowhere" / "p.png")))


@pytest.mark.parametrize("extra, line", [
    ({"preview": "p.gif"}, "--preview: 'p.gif' must end in .png or .mp4 (or be `auto` for "
                           "<save_path>/<output_name>.preview.png / .mp4)"),
    ({"preview_mode": "vae"}, "--preview_mode vae given without --preview; add --preview auto (or a .png / .mp4 "
                              "path)"),
    ({"preview": "auto", "latent_path": [str(MODELS / "vae.safetensors")]},
     "--preview: nothing is sampled with --latent_path or --save_merged_model; drop --preview"),
])
def test_bad_preview_options_are_one_line_each(tmp_path, extra, line):
    with pytest.raises(OptionsError) as e:
        validate(GenerateOptions, {**MODEL_VALUES, "prompt": "a cat", "save_path": str(tmp_path), **extra})
    assert str(e.value) == line


def test_section_watch_times_sections_and_reads_the_peak_memory_it_is_given():
    clock = iter([0.0, 4.0, 10.0, 10.0, 16.0, 20.0]).__next__  # start, last step, end; twice
    resets, peaks = [], iter([3 * 2**30, 5 * 2**29])
    inner = NullProgress()
    watch = SectionWatch(inner, peak=(lambda: resets.append(1), lambda: next(peaks)), clock=clock)
    watch.start_sections(3)
    for k in range(2):
        watch.start_section(k, 3, f"section {3 - k}/3")
        watch.step(8, 8)
        watch.end_section()
    first, second = inner.section_infos
    assert (first["seconds"], first["it_s"], first["eta_s"], first["peak_gpu_bytes"]) == (10.0, 2.0, 20.0, 3 * 2**30)
    assert (second["seconds"], second["eta_s"], second["sections_done"]) == (10.0, 10.0, 2)
    assert len(resets) == 2  # the peak is per section
    assert section_line(first) == ("section 3/3 done in 10.0s (8 steps, 2.00 it/s), peak GPU memory 3.0 GiB; "
                                   "ETA 20.0s for the 2 sections left")
    assert section_line({**second, "total": 2}) == ("section 2/3 done in 10.0s (8 steps, 1.33 it/s), peak GPU "
                                                    "memory 2.5 GiB; all 2 sections in 20.0s")
    assert section_line({"label": "one frame", "seconds": 75.0, "steps": 4, "it_s": None, "sections_done": 1,
                         "total": 1}) == "one frame done in 1m15s (4 steps)"
