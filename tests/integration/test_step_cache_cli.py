"""TeaCache / MagCache through the CLI on the tiny models: threshold 0 equals no cache bit for bit (latent files),
inline MagCache keys per batch job, calibration writes ratios a later run reads, bad values are one line."""

from __future__ import annotations

import json
import re

import pytest
import torch

from framepack_cli.cli.app import main
from framepack_cli.io.outputs import load_latent
from tests.conftest import INPUTS, MODEL_ARGS

pytestmark = pytest.mark.slow

SMALL = ["--video_size", "32", "48", "--seed", "5", "--output_type", "latent"]


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def latents(folder):
    """{prompt: latent} of every latent file in `folder`."""
    found = {}
    for f in sorted(folder.glob("*_latent.safetensors")):
        t, meta = load_latent(f)
        found[meta["prompt"]] = t
    return found


def test_video_magcache_threshold_zero_inline_and_per_job(tmp_path, capsys):
    """A batch with MagCache: the line with `--mct 0` equals the uncached run bit for bit (real CFG on, 2 sections);
    the other line skips steps in every section (state reset per section and per job)."""
    common = ["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--infer_steps", "5",
              "--video_sections", "2", "--latent_window_size", "2", "--guidance_scale", "2"]
    code, _, _ = cli([*common, "--prompt", "a cat", "--save_path", tmp_path / "plain"], capsys)
    assert code == 0
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a cat --mct 0\na dog\n")
    code, _, err = cli([*common, "--from_file", jobs, "--magcache_mag_ratios", "0", "--save_path", tmp_path / "mag"],
                       capsys)
    assert code == 0, err
    # Built-in ratios resampled to 5 steps (1.0, 1.03028, 0.9976, 1.0217, 0.76592): steps 0 and 4 computed in each
    # of the 2 sections.
    summaries = [line for line in err.splitlines() if line.startswith("MagCache: ")]
    assert summaries[1::2] == ["MagCache: 0 of 10 steps skipped", "MagCache: 6 of 10 steps skipped"]
    plain, mag = latents(tmp_path / "plain"), latents(tmp_path / "mag")
    assert torch.equal(mag["a cat"], plain["a cat"])
    assert mag["a dog"].shape == plain["a cat"].shape


def test_one_frame_teacache_threshold_zero_is_exact_and_a_high_one_skips(tmp_path, capsys):
    common = ["one-frame", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--control_image_path",
              INPUTS / "start.png", "--prompt", "a cat", "--infer_steps", "3"]
    runs = {}
    for name, extra in (("plain", []), ("tea0", ["--teacache_thresh", "0"]), ("tea9", ["--teacache-thresh", "1e9"])):
        code, _, err = cli([*common, *extra, "--save_path", tmp_path / name], capsys)
        assert code == 0, err
        runs[name] = latents(tmp_path / name)["a cat"]
        if name == "tea0":
            assert "TeaCache: 0 of 3 steps skipped" in err.splitlines()
        if name == "tea9":
            assert "TeaCache: 1 of 3 steps skipped" in err.splitlines()  # first and last always computed
    assert torch.equal(runs["tea0"], runs["plain"])
    assert not torch.equal(runs["tea9"], runs["plain"])


def test_calibration_writes_ratios_that_a_later_run_reads(tmp_path, capsys):
    common = ["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
              "--infer_steps", "3", "--video_sections", "1", "--latent_window_size", "2", "--save_path", tmp_path]
    code, out, err = cli([*common, "--magcache_calibration", "--output_name", "cal"], capsys)
    assert code == 0, err
    path = tmp_path / "cal.magcache_ratios.txt"
    assert f"Wrote {path}" in out.splitlines()
    printed = [line for line in err.splitlines() if re.fullmatch(r"1\.00000(,\d+\.\d{5}){2}", line)]
    assert len(printed) == 1
    data = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert data == printed
    assert not list(tmp_path.glob(".*.tmp"))

    code, out, err = cli([*common, "--magcache_mag_ratios", path, "--magcache_retention_ratio", "0",
                          "--magcache_threshold", "10", "--output_name", "use"], capsys)
    assert code == 0, err
    assert ("MagCache: 3 ratios, threshold 10, at most 6 skips in a row, step 0 and 2 always computed"
            in err.splitlines())
    assert "MagCache: 1 of 3 steps skipped" in err.splitlines()
    _, meta = load_latent(tmp_path / "use_latent.safetensors")
    assert json.loads(meta["framepack"])["magcache"] == {"mag_ratios": str(path), "threshold": 10.0, "k": 6,
                                                         "retention_ratio": 0.0}


@pytest.mark.parametrize("extra, message", [
    (["--magcache_mag_ratios", "1.0,fast"],
     "Error: --magcache_mag_ratios: '1.0,fast' is neither a comma-separated list of numbers nor an existing file"),
    (["--magcache_mag_ratios", "missing_ratios.txt"],
     "Error: --magcache_mag_ratios: 'missing_ratios.txt' is neither a comma-separated list of numbers nor an "
     "existing file"),
    (["--teacache_thresh", "0.1", "--magcache_calibration"],
     "Error: --teacache_thresh and --magcache_calibration: only one step cache at a time"),
])
def test_bad_cache_values_are_one_line_before_models_load(tmp_path, capsys, extra, message):
    code, out, err = cli(["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "x",
                          "--save_path", tmp_path / "out", *extra], capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith(message)
    assert "Loading" not in err and not (tmp_path / "out").exists()
