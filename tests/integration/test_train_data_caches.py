"""Training data over caches made by `framepack cache latents|text` on the golden dataset and tiny models: they
load into the same batches as the reference's caches (README §8, §9.2-9.3), and their metadata drives the
checks (mode, window size, dataset identity).

The caches are made once for the module (vanilla sections of video_full.toml, one-frame caches of
image_1f.toml, and the text caches of both; ~20 s on CPU); no test changes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framepack_cli.engine.cache_latents import run_latents
from framepack_cli.engine.cache_text import run_text
from framepack_cli.engine.progress import NullProgress
from framepack_cli.engine.train_data import build_train_data
from framepack_cli.errors import FramepackError
from framepack_cli.io.train_data import batch_key
from framepack_cli.options.cache import CacheLatentsOptions, CacheTextOptions
from tests.conftest import GOLDEN

pytestmark = pytest.mark.skipif(not (GOLDEN / "datasets").is_dir(), reason="golden datasets missing")

LATENT_MODELS = dict(vae="models/vae.safetensors", image_encoder="models/sigclip_tiny.safetensors", device="cpu")
TEXT_MODELS = dict(text_encoder1="models/text_encoder/model-00001-of-00002.safetensors",
                   text_encoder2="models/clip_l_tiny.safetensors", device="cpu")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A working folder like the golden one whose work/ holds framepack's own caches of the golden datasets."""
    wd = tmp_path_factory.mktemp("train_data")
    for link in ("datasets", "models"):
        (wd / link).symlink_to(GOLDEN / link, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(wd)
        mp.setenv("FRAMEPACK_HOME", str(wd / "fp_home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(wd / "hf_home"))
        run_latents(CacheLatentsOptions(dataset_config="datasets/video_full.toml", **LATENT_MODELS), NullProgress())
        run_latents(CacheLatentsOptions(dataset_config="datasets/image_1f.toml", one_frame=True, **LATENT_MODELS),
                    NullProgress())
        for cfg in ("datasets/video_full.toml", "datasets/image_1f.toml"):
            run_text(CacheTextOptions(dataset_config=cfg, **TEXT_MODELS), NullProgress())
    return wd


@pytest.mark.parametrize(("case", "config", "item", "count"), [
    ("step_vanilla", "datasets/video_full.toml", "0/clip_a_00000-041-0000_0064x0048_fp.safetensors", 5),
    ("step_one_frame", "datasets/image_1f.toml", "0/img_a_0100x0072_fp.safetensors", 3),
])
def test_our_caches_load_like_the_references(made, monkeypatch, case, config, item, count):
    monkeypatch.chdir(made)
    warnings: list[str] = []
    data = build_train_data(config, seed=11, warn=warnings.append)
    assert warnings == []  # made by framepack for these very datasets, with these settings
    assert data.num_items == count and data.latent_window_size == 5
    assert data.modes == ({"one_frame"} if "one_frame" in case else {"vanilla"})
    golden = json.loads((GOLDEN / "train" / f"{case}.json").read_text())
    key = next(k for k in data.epoch_keys(1) if data[k]["item_keys"] == [item])
    batch = data[key]
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in batch.items()
           if isinstance(v, torch.Tensor)}
    assert list(got.items()) == list(golden["batch_keys_after_loading"].items())
    reference = {**load_file(str(GOLDEN / golden["latent_cache_file"])),
                 **load_file(str(GOLDEN / golden["text_cache_file"]))}
    for raw, t in reference.items():
        torch.testing.assert_close(batch[batch_key(raw)][0], t, atol=1e-4, rtol=0, msg=raw)


def test_our_caches_record_their_mode(made, monkeypatch):
    monkeypatch.chdir(made)
    with pytest.raises(FramepackError) as e:
        build_train_data("datasets/video_full.toml", seed=1, video_mode="f1")
    lines = str(e.value).split("\n")
    assert len(lines) == 2
    assert lines[0] == (
        "datasets/video_full.toml: datasets[0] (video_directory = datasets/videos): cache_directory: 3 latent caches "
        "in work/video_dir are cached with vanilla sections (no --f1 / --one_frame), but training expects F1 sections "
        "(--f1): clip_a_00000-041-0000_0064x0048_fp.safetensors, clip_a_00000-041-0001_0064x0048_fp.safetensors, "
        "clip_b_00000-025-0000_0064x0048_fp.safetensors; re-cache: framepack cache latents --dataset_config "
        "datasets/video_full.toml --vae <vae> --image_encoder <image_encoder> --f1; or train without --f1")


def test_caches_of_another_dataset_are_used_with_a_warning(made, monkeypatch):
    """A config whose dataset (another source folder) points at a cache folder framepack filled for another one."""
    monkeypatch.chdir(made)
    other = made / "other_videos"
    other.mkdir(exist_ok=True)
    for name in ("clip_a.mp4", "clip_a.txt"):
        if not (other / name).exists():
            (other / name).symlink_to(GOLDEN / "datasets" / "videos" / name)
    (made / "other.toml").write_text(
        "[general]\nresolution = [64, 48]\ncaption_extension = \".txt\"\nenable_bucket = true\n\n[[datasets]]\n"
        "video_directory = \"other_videos\"\ncache_directory = \"work/video_dir\"\nframe_extraction = \"full\"\n"
        "fp_latent_window_size = 5\n")
    warnings: list[str] = []
    data = build_train_data("other.toml", seed=1, warn=warnings.append)
    assert data.num_items == 3
    assert warnings == [
        "Warning: other.toml: datasets[0] (video_directory = other_videos): cache_directory: 5 cache files in "
        "work/video_dir were made by framepack for another dataset: clip_a_00000-041-0000_0064x0048_fp.safetensors, "
        "clip_a_fp_te.safetensors, clip_a_00000-041-0001_0064x0048_fp.safetensors and 2 more; training uses them; if "
        "they are outdated, re-create them: framepack cache latents --dataset_config other.toml --vae <vae> "
        "--image_encoder <image_encoder> (text caches: framepack cache text --dataset_config other.toml "
        "--text_encoder1 <text_encoder1> --text_encoder2 <text_encoder2>)"]


@pytest.mark.parametrize("config, extra", [("datasets/video_full.toml", []),
                                           ("datasets/image_1f.toml", ["--one_frame"])])
def test_train_on_our_caches_through_the_cli(made, monkeypatch, tmp_path, capsys, config, extra):
    """cache -> train: `framepack train` on the caches `framepack cache` made writes a LoRA."""
    from safetensors import safe_open

    from framepack_cli.cli.app import main

    monkeypatch.chdir(made)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["train", "--dit", str(GOLDEN / "models" / "dit_single.safetensors"), "--dataset_config", config,
              "--output_dir", str(out), "--output_name", "ours", "--max_train_steps", "2", "--seed", "1",
              "--learning_rate", "1e-3", "--max_data_loader_n_workers", "0", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 0, err
    with safe_open(str(out / "ours.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "2"
        assert any(k.endswith("lora_up.weight") for k in f.keys())
