"""`framepack train --show_timesteps console|image` (engine/train_timesteps_show.py)."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch

from framepack_cli.engine import train_timesteps_show as show
from framepack_cli.engine.progress import NullProgress
from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.options.train import TrainOptions
from framepack_cli.sampling.train_timesteps import TimestepSettings, sample_timesteps


def opts(mode: str = "console", **kw) -> TrainOptions:
    kw.setdefault("seed", 42)
    return TrainOptions(show_timesteps=mode, **kw)


def test_settings_from_options_carry_every_timestep_option():
    o = opts(timestep_sampling="shift", discrete_flow_shift=3.0, sigmoid_scale=2.0, weighting_scheme="cosmap",
             logit_mean=-1.0, logit_std=2.0, mode_scale=1.1, min_timestep=100, max_timestep=900,
             preserve_distribution_shape=True)
    assert show.timestep_settings(o) == TimestepSettings(
        "shift", 3.0, 2.0, "cosmap", -1.0, 2.0, 1.1, 100, 900, True)


def test_console_histogram_of_the_default_sigma_mode():
    sink = NullProgress()
    assert show.show_timesteps(opts(), sink) == []
    assert sink.results == []
    lines = sink.messages
    assert lines[0] == ("Drawing 100000 training timesteps (--timestep_sampling sigma --discrete_flow_shift 1 "
                        "--weighting_scheme none)")
    assert lines[1] == ("Timesteps of --timestep_sampling sigma --discrete_flow_shift 1 --weighting_scheme none: "
                        "100000 draws on a 128x128 latent (noise level t x 1000, 1000 = pure noise)")
    assert lines[2] == " t x 1000   draws    weight"
    assert len(lines) == 3 + 20
    assert lines[3].startswith("   0-  49 ") and lines[-1].startswith(" 950- 999 ")
    counts = [int(line[10:17]) for line in lines[3:]]
    assert sum(counts) == 100_000 and all(4500 < c < 5500 for c in counts)  # uniform over the schedule
    assert all(line[18:27] == "        1" for line in lines[3:])  # no weighting
    top = max(counts)
    assert all(line[28:] == "#" * round(c / top * 50) for line, c in zip(lines[3:], counts, strict=True))
    # the counts are those of the same draws made directly (seeded generator, 1000 per chunk)
    g = torch.Generator().manual_seed(42)
    ts = torch.cat([sample_timesteps((1000, 16, 1, 128, 128), generator=g)[0] for _ in range(100)])
    direct = torch.bincount(((ts.round().long() - 1) // 50), minlength=20).tolist()
    assert counts == direct
    # the same seed, the same lines
    again = NullProgress()
    show.show_timesteps(opts(), again)
    assert again.messages == sink.messages


def test_console_shows_the_loss_weight_per_bin(monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 2000)
    sink = NullProgress()
    show.show_timesteps(opts(weighting_scheme="sigma_sqrt", timestep_sampling="uniform"), sink)
    weights = [float(line[18:27]) for line in sink.messages[3:]]
    expect = [sum((i / 1000) ** -2 for i in range(b * 50 + 1, b * 50 + 51)) / 50 for b in range(20)]
    assert weights == pytest.approx(expect, rel=1e-3)
    assert sink.messages[0].startswith("Drawing 2000 training timesteps")


def test_sigma_mode_shift_and_index_bounds_move_the_histogram(monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 20_000)
    plain = show.timestep_histogram(opts())
    shifted = show.timestep_histogram(opts(discrete_flow_shift=3.0))

    def mean(h):
        return sum(i * c for i, c in enumerate(h.counts)) / sum(h.counts)

    assert abs(mean(plain) - 500) < 15
    # k = 3: sigma' = 3s/(1+2s) of a uniform s: mean noise level 1000 * (3/2 - 3 ln 3 / 4) ~ 676
    assert mean(shifted) == pytest.approx(1000 * (1.5 - 0.75 * math.log(3)), abs=10)
    # --min_timestep 500 in sigma mode bounds the index: noise levels up to 500 only (the reference's quirk)
    low = show.timestep_histogram(opts(min_timestep=500))
    assert sum(low.counts[:500]) == 20_000


def test_timestep_buckets_stratify_exactly(monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 10_000)
    h = show.timestep_histogram(opts(timestep_sampling="uniform", num_timestep_buckets=10))
    per_bucket = [sum(h.counts[i * 100:(i + 1) * 100]) for i in range(10)]
    assert per_bucket == [1000] * 10  # every round of 10 draws hits each bucket once


def test_preserve_distribution_shape_keeps_draws_inside_the_range(monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 3000)
    h = show.timestep_histogram(opts(timestep_sampling="sigmoid", min_timestep=300, max_timestep=600,
                                     preserve_distribution_shape=True))
    assert sum(h.counts[300:600]) == 3000


def test_image_is_written_atomically_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 2000)
    out = tmp_path / "new" / "dir"
    sink = NullProgress()
    o = opts("image", output_dir=str(out), output_name="run", weighting_scheme="sigma_sqrt")
    paths = show.show_timesteps(o, sink)
    assert paths == [out / "run_timesteps.png"] and sink.results == [f"Wrote {out / 'run_timesteps.png'}"]
    from PIL import Image

    with Image.open(paths[0]) as img:
        img.load()
        assert img.format == "PNG" and img.size == (1150, 440)
        # the histogram bars (blue) and the weight curve (red) are drawn
        colors = {c for _, c in img.getcolors(1 << 20)}
        assert (70, 110, 190) in colors and (200, 60, 40) in colors
    # a second run keeps the first file
    sink2 = NullProgress()
    assert show.show_timesteps(o, sink2) == [out / "run_timesteps_1.png"]
    assert sorted(p.name for p in out.iterdir()) == ["run_timesteps.png", "run_timesteps_1.png"]


def test_image_defaults_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 1000)
    monkeypatch.chdir(tmp_path)
    sink = NullProgress()
    assert show.show_timesteps(opts("image"), sink) == [Path.cwd() / "timesteps_timesteps.png"]


def test_image_write_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(show, "N_DRAWS", 1000)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FramepackError) as e:
        show.show_timesteps(opts("image", output_dir=str(blocker)), NullProgress())
    assert str(e.value) == f"--output_dir: {blocker} is a file, expected a folder" and e.value.exit_code == 2

    from PIL import Image

    def full(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "made"
    with pytest.raises(ResourceError) as e:
        show.show_timesteps(opts("image", output_dir=str(out)), NullProgress())
    assert e.value.exit_code == 3
    assert e.value.message == f"--output_dir: cannot write {out / 'timesteps_timesteps.png'}: No space left on device"
    assert not out.exists()  # the temp file is removed, and the folder this run created too
