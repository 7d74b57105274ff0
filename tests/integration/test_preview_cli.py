"""`--preview` and the per-section progress on real (tiny) runs: the preview is on disk and valid after every
section, latent mode calls no VAE, vae mode shows exactly the decoded sections, a foreign file is refused before
any model loads, and the plain stderr progress says each section's time and the ETA."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

import framepack_cli.models.vae as vae_module
from framepack_cli.cli.app import main
from framepack_cli.engine.generate import run
from framepack_cli.engine.progress import NullProgress
from framepack_cli.options.generate import GenerateOptions
from tests.conftest import INPUTS, MODEL_ARGS, MODELS

pytestmark = pytest.mark.slow

VALUES = {k: str(MODELS / f) for k, f in (
    ("dit", "dit_single.safetensors"), ("vae", "vae.safetensors"), ("text_encoder1", "llava_llama3_tiny.safetensors"),
    ("text_encoder2", "clip_l_tiny.safetensors"), ("image_encoder", "sigclip_tiny.safetensors"))}
SMALL = {"video_size": (48, 64), "infer_steps": 1, "latent_window_size": 2, "seed": 3,
         "image_path": str(INPUTS / "start.png"), "prompt": "a cat", "output_type": "latent"}


class Watch(NullProgress):
    """Checks the preview file at the end of every section and counts the VAE decodes made so far."""

    def __init__(self, path, decodes):
        super().__init__()
        self.path, self.decodes = path, decodes
        self.seen: list[tuple[int, int]] = []  # (decodes so far, frames or width in the preview)
        self.outputs: list[torch.Tensor] = []

    def section_output(self, latent):
        self.outputs.append(latent.clone())

    def end_section(self, info=None):
        super().end_section(info)
        assert self.path.is_file(), f"no preview after section {len(self.seen) + 1}"
        if self.path.suffix == ".mp4":
            with av.open(str(self.path)) as c:
                size = sum(1 for _ in c.decode(video=0))
        else:
            size = Image.open(self.path).convert("RGB").size[0]
        self.seen.append((len(self.decodes), size))


@pytest.fixture
def decodes(monkeypatch):
    calls = []
    real = vae_module.vae_decode

    def counting(vae, latents):
        calls.append(latents.shape)
        return real(vae, latents)

    monkeypatch.setattr(vae_module, "vae_decode", counting)
    return calls


def test_latent_preview_is_rewritten_after_each_section_without_a_vae_call(tmp_path, decodes):
    opts = GenerateOptions(**VALUES, **SMALL, video_sections=3, save_path=str(tmp_path), output_name="clip",
                           preview="auto")
    sink = Watch(tmp_path / "clip.preview.mp4", decodes)
    run(opts, sink)
    # vanilla, window 2: 3 latent frames per section (the last adds the start latent), one preview frame each
    assert sink.seen == [(0, 2), (0, 4), (0, 7)]
    assert decodes == []  # latent mode: no VAE decode at all (output_type latent: none afterwards either)
    assert [i["sections_done"] for i in sink.section_infos] == [1, 2, 3]
    assert all(i["seconds"] > 0 and "eta_s" in i and "peak_gpu_bytes" not in i for i in sink.section_infos)
    assert sink.messages.count(f"Preview: {tmp_path / 'clip.preview.mp4'} (latent mode), rewritten after each "
                               "section") == 1
    assert (tmp_path / "clip.preview.mp4").is_file()  # kept after the run
    assert not list(tmp_path.glob(".*partial*"))


def test_vae_preview_sheet_shows_exactly_the_decoded_newest_sections(tmp_path, decodes):
    from framepack_cli.io.outputs import to_uint8
    from framepack_cli.models.vae import load_vae

    path = tmp_path / "sheet.png"
    opts = GenerateOptions(**VALUES, **SMALL, video_sections=2, save_path=str(tmp_path), preview=str(path),
                           preview_mode="vae", f1=True)
    sink = Watch(path, decodes)
    run(opts, sink)
    assert [d for d, _ in sink.seen] == [1, 2]  # one decode per section, made before the section ended
    first, second = sink.outputs
    newest = [first, second[:, first.shape[1]:]]  # F1 appends
    vae = load_vae(VALUES["vae"], device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        tiles = [to_uint8(vae_module.vae_decode(vae, z.unsqueeze(0))[0].float())[0] for z in newest]
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape == (48, 2 * 64, 3)
    assert (sheet[:, :64] == tiles[0]).all() and (sheet[:, 64:] == tiles[1]).all()


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr()


def test_cli_progress_lines_kisekae_preview_and_a_foreign_file_refused(tmp_path, capsys):
    small = ["--video_size", "48", "64", "--infer_steps", "2", "--latent_window_size", "2", "--seed", "1"]
    code, out = cli(["generate", *MODEL_ARGS, *small, "--video_sections", "2", "--image_path", INPUTS / "start.png",
                     "--prompt", "a cat", "--save_path", tmp_path, "--output_type", "latent", "--output_name", "v"],
                    capsys)
    assert code == 0, out.err
    lines = [ln for ln in out.err.splitlines() if " done in " in ln]
    assert len(lines) == 2
    assert lines[0].startswith("section 2/2 done in ") and "(2 steps, " in lines[0] and " it/s)" in lines[0]
    assert "; ETA " in lines[0] and lines[0].endswith("for the 1 section left")
    assert lines[1].startswith("section 1/2 done in ") and "; all 2 sections in " in lines[1]
    assert "peak GPU memory" not in out.err  # CPU run

    user = tmp_path / "k.preview.png"
    user.write_bytes(b"my notes")
    kisekae = ["kisekae", *MODEL_ARGS, *small, "--start", INPUTS / "start.png", "--reference", INPUTS / "ref_rgba.png",
               "--prompt", "a cat", "--save_path", tmp_path, "--output_name", "k", "--preview", "auto"]
    code, out = cli(kisekae, capsys)
    assert code == 2
    assert out.err.strip().splitlines() == [
        f"Error: --preview: {user} exists and is not a framepack preview; give another path (or `auto`) or move "
        "that file away (it is never overwritten)"]  # one line, before any model loads
    assert user.read_bytes() == b"my notes" and out.out == ""

    user.unlink()
    code, out = cli(kisekae, capsys)
    assert code == 0, out.err
    with Image.open(user) as im:
        assert im.size == (32, 24) and im.text["framepack_preview"] == "1/1 sections, latent"
    assert "one frame done in " in out.err
