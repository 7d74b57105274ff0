"""`--decode stream|blend|bulk` through the CLI: a saved latent decoded by `framepack generate --latent_path` in
each mode (same frame count, stream close to bulk, blend = the reference's frames), and the option's errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from framepack_cli.cli.app import main
from framepack_cli.io.outputs import save_latent
from tests.conftest import GOLDEN, INPUTS, MODEL_ARGS, MODELS


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def only_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.slow
def test_latent_path_decode_modes(tmp_path, capsys):
    # The golden 3-section latent the tiny DiT generated (28 latents, window 9): stream decodes it in 2 chunks,
    # blend in 3 overlapping ones. bench/bench_decode.py reports, on this latent, PSNR against bulk of 28.8 dB
    # for stream and 24.8 dB for blend; tolerance: 0.5 dB under the bench figure.
    golden = load_file(str(GOLDEN / "e2e" / "vanilla_sections.safetensors"))
    lat = save_latent(tmp_path / "gen_latent.safetensors", golden["latent"],
                      {"latent_window_size": "9", "fps": "30", "seeds": "1"})
    frames = {}
    for mode in ("stream", "blend", "bulk"):
        out = tmp_path / mode
        code, text = cli(["generate", "--latent_path", lat, "--vae", MODELS / "vae.safetensors", "--save_path", out,
                          "--output_type", "images", "--decode", mode], capsys)
        assert code == 0, text
        (folder,) = [p for p in out.iterdir() if p.is_dir()]
        frames[mode] = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])
    assert {m: f.shape for m, f in frames.items()} == dict.fromkeys(frames, (4 * 27 + 1, 48, 64, 3))
    stream_db, blend_db = psnr(frames["stream"], frames["bulk"]), psnr(frames["blend"], frames["bulk"])
    assert stream_db >= 28.3 and stream_db > blend_db + 3, (stream_db, blend_db)
    # blend is the reference's progressive decode: its frames are the golden's
    diff = np.abs(frames["blend"].astype(np.int16) - golden["frames_uint8"].numpy().astype(np.int16))
    assert (diff <= 2).mean() >= 0.999, diff.max()


def test_bad_decode_value_is_one_line(tmp_path, capsys):
    code, out = cli(["generate", "--latent_path", INPUTS / "start.png", "--vae", MODELS / "vae.safetensors",
                     "--save_path", tmp_path, "--decode", "fast"], capsys)
    line = only_line(out)
    assert code == 2 and "--decode" in line and "'fast'" in line and "stream" in line and "blend" in line, line


def test_bulk_decode_conflicting_with_decode(tmp_path, capsys):
    code, out = cli(["generate", *MODEL_ARGS, "--prompt", "x", "--image_path", INPUTS / "start.png",
                     "--save_path", tmp_path, "--bulk-decode", "--decode", "stream"], capsys)
    assert (code, only_line(out)) == (2, "Error: --bulk_decode is --decode bulk, but --decode stream was given too; "
                                         "keep one of them (--decode stream or --bulk_decode)")
    # the alias agreeing with --decode is fine (nothing to decide)
    from framepack_cli.options.base import decode_mode
    from framepack_cli.options.generate import GenerateOptions

    o = GenerateOptions(save_path=str(tmp_path), latent_path=[str(INPUTS / "start.png")],
                        vae=str(MODELS / "vae.safetensors"), bulk_decode=True, decode="bulk")
    assert decode_mode(o) == "bulk"
    assert decode_mode(o.model_copy(update={"bulk_decode": False, "decode": None})) == "blend"
    assert decode_mode(o.model_copy(update={"bulk_decode": False, "decode": "stream"})) == "stream"


def test_train_sample_decode_options(tmp_path, capsys):
    code, out = cli(["train", "--dit", MODELS / "dit_single.safetensors", "--dataset_config", tmp_path / "no.toml",
                     "--output_dir", tmp_path, "--output_name", "x", "--bulk_decode", "--decode", "blend"], capsys)
    assert code == 2
    assert "Error: --bulk_decode is --decode bulk, but --decode blend was given too" in out
