"""Training data (`io.train_data`, `engine.train_data`): the reference-made golden caches (README §8) found,
checked, bucketed, ordered and loaded like the reference trainer loads them (training.md §1.8).

Caches made by `framepack cache latents|text` are covered in tests/integration/test_train_data_caches.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli.engine.train_data import build_train_data
from framepack_cli.errors import FramepackError
from framepack_cli.io.train_data import EpochSampler, TrainData, batch_key, make_loader
from tests.conftest import GOLDEN

pytestmark = pytest.mark.skipif(not (GOLDEN / "cache").is_dir(), reason="golden caches missing")

CACHE = GOLDEN / "cache"
VIDEO_DIR = ["clip_a_00000-041-0000_0064x0048_fp.safetensors", "clip_a_00000-041-0001_0064x0048_fp.safetensors",
             "clip_b_00000-025-0000_0064x0048_fp.safetensors"]
VIDEO_JSONL = ["clip_b_00000-025-0000_0064x0048_fp.safetensors", "clip_c_00000-021-0000_0064x0048_fp.safetensors"]
IMAGES = ["img_a_0100x0072_fp.safetensors", "img_b_0072x0100_fp.safetensors", "img_c_0066x0050_fp.safetensors"]
LATENTS = "framepack cache latents --dataset_config {cfg} --vae <vae> --image_encoder <image_encoder>"
TEXT = "framepack cache text --dataset_config {cfg} --text_encoder1 <text_encoder1> --text_encoder2 <text_encoder2>"
VIDEO_LABEL = "datasets[0] (video_directory = datasets/videos)"
IMAGE_LABEL = "datasets[0] (image_directory = datasets/images_1f)"


def fill(folder: Path, mode: str, name: str, text: str | None = None) -> Path:
    """Copy the golden caches `cache/<mode>/<name>` and `cache/text/<text or name>` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in (CACHE / mode / name, CACHE / "text" / (text or name)):
        for f in src.iterdir():
            shutil.copy(f, folder / f.name)
    return folder


def video_toml(wd: Path, *, name: str = "video.toml", batch_size: int = 1, num_repeats: int = 1, window: int = 5,
               enable_bucket: bool = True, jsonl: bool = True, extra: str = "") -> str:
    text = (f"[general]\nresolution = [64, 48]\ncaption_extension = \".txt\"\nbatch_size = {batch_size}\n"
            f"enable_bucket = {str(enable_bucket).lower()}\n\n"
            f"[[datasets]]\nvideo_directory = \"datasets/videos\"\ncache_directory = \"work/video_dir\"\n"
            f"frame_extraction = \"full\"\nmax_frames = 129\nfp_latent_window_size = {window}\n"
            f"num_repeats = {num_repeats}\n{extra}")
    if jsonl:
        text += ("\n[[datasets]]\nvideo_jsonl_file = \"datasets/videos.jsonl\"\n"
                 "cache_directory = \"work/video_jsonl\"\nframe_extraction = \"full\"\nmax_frames = 129\n"
                 "fp_latent_window_size = 5\n")
    (wd / name).write_text(text)
    return name


def image_toml(wd: Path, *, name: str = "image.toml", window: int = 5, extra: str = "") -> str:
    (wd / name).write_text(
        "[general]\nresolution = [64, 48]\ncaption_extension = \".txt\"\nbatch_size = 1\nenable_bucket = true\n\n"
        "[[datasets]]\nimage_directory = \"datasets/images_1f\"\ncontrol_directory = \"datasets/images_1f_control\"\n"
        f"cache_directory = \"work/image_1f\"\nfp_latent_window_size = {window}\nfp_1f_clean_indices = [0]\n"
        f"fp_1f_target_index = 9\nfp_1f_no_post = false\n{extra}")
    return name


@pytest.fixture
def wd(tmp_path, monkeypatch) -> Path:
    """A working folder like the golden one: datasets/ linked, work/ holding copies of the golden caches."""
    (tmp_path / "datasets").symlink_to(GOLDEN / "datasets", target_is_directory=True)
    fill(tmp_path / "work" / "video_dir", "vanilla", "video_dir")
    fill(tmp_path / "work" / "video_jsonl", "vanilla", "video_jsonl")
    fill(tmp_path / "work" / "image_1f", "one_frame", "image_1f")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refusal(*args, **kw) -> list[str]:
    with pytest.raises(FramepackError) as e:
        build_train_data(*args, **kw)
    assert e.value.exit_code == 2
    return str(e.value).split("\n")


def order(data: TrainData, epoch: int, **kw) -> list[list[str]]:
    return [[f"{it.dataset_index}/{it.latent_path.name}" for it in data.items(k)] for k in data.epoch_keys(epoch, **kw)]


def find_batch(data: TrainData, item_key: str, epoch: int = 1) -> dict:
    for key in data.epoch_keys(epoch):
        if item_key in [f"{it.dataset_index}/{it.latent_path.name}" for it in data.items(key)]:
            return data[key]
    raise AssertionError(item_key)


def shapes(batch: dict) -> dict:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in batch.items()
            if isinstance(v, torch.Tensor)}


# --------------------------------------------------------------------------------------------------
# keys and loading
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "key"), [
    ("latents_5x6x8_float32", "latents"),
    ("latents_clean_2x_5x6x8_float16", "latents_clean_2x"),
    ("latents_clean_1x6x8_float8_e4m3fn", "latents_clean"),  # longest dtype name, not just "fn"
    ("image_embeddings_bfloat16", "image_embeddings"),
    ("clean_latent_4x_indices_int64", "clean_latent_4x_indices"),
    ("llama_attention_mask", "llama_attention_mask"),
    ("llama_vec_float8_e5m2", "llama_vec"),
    ("clip_l_pooler_float32", "clip_l_pooler"),
    ("no_dtype_here", "no_dtype_here"),
])
def test_batch_keys_are_normalised_like_the_reference(raw, key):
    assert batch_key(raw) == key


@pytest.mark.parametrize(("case", "config", "item"), [
    ("step_vanilla", "video", "0/clip_a_00000-041-0000_0064x0048_fp.safetensors"),
    ("step_one_frame", "image", "0/img_a_0100x0072_fp.safetensors"),
])
def test_a_batch_is_what_the_reference_trainer_loads(wd, case, config, item):
    """Keys, order, shapes and dtypes equal the golden step's `batch_keys_after_loading`; the tensors are the
    stored ones (the golden caches are float32), and `in.latents` of the golden step is this batch's latents."""
    cfg = video_toml(wd) if config == "video" else image_toml(wd)
    data = build_train_data(cfg, seed=3)
    batch = find_batch(data, item)
    golden = json.loads((GOLDEN / "train" / f"{case}.json").read_text())
    assert list(shapes(batch).items()) == list(golden["batch_keys_after_loading"].items())
    assert batch["timesteps"] is None and batch["item_keys"] == [item]
    stored = {**load_file(str(GOLDEN / golden["latent_cache_file"])),
              **load_file(str(GOLDEN / golden["text_cache_file"]))}
    for raw, t in stored.items():
        assert torch.equal(batch[batch_key(raw)][0], t), raw
    step = load_file(str(GOLDEN / "train" / f"{case}.safetensors"))
    assert torch.equal(batch["latents"], step["in.latents"])


def test_golden_datasets_build(wd):
    data = build_train_data(video_toml(wd), seed=1)
    assert (len(data), data.num_items, data.modes, data.latent_window_size) == (5, 5, {"vanilla"}, 5)
    got = sorted(n for batch in order(data, 1) for n in batch)
    assert got == sorted([f"0/{n}" for n in VIDEO_DIR] + [f"1/{n}" for n in VIDEO_JSONL])
    items = [it for k in data.epoch_keys(1) for it in data.items(k)]
    clip_a = next(it for it in items if it.latent_path.name == VIDEO_DIR[0])
    assert clip_a.text_path == Path("work/video_dir/clip_a_fp_te.safetensors")
    assert clip_a.bucket[:3] == (64, 48, 41)  # the reference's video key: bucket + crop length
    images = build_train_data(image_toml(wd), seed=1)
    assert (len(images), images.modes) == (3, {"one_frame"})
    keys = {it.latent_path.name: it.bucket[:5] for k in images.epoch_keys(1) for it in images.items(k)}
    # image key: bucket of the original size + window + (number of clean indices, no_post)
    assert keys == {IMAGES[0]: (64, 48, 5, 1, False), IMAGES[1]: (48, 64, 5, 1, False),
                    IMAGES[2]: (64, 48, 5, 1, False)}


def test_batches_stack_items_of_one_bucket(wd):
    data = build_train_data(video_toml(wd, batch_size=2), seed=1)
    # video_dir: clip_a's two sections (41 frames) in one batch, clip_b alone; the JSONL dataset: 2 crop lengths
    assert len(data) == 4
    sizes = sorted(len(data.items(k)) for k in data.epoch_keys(0))
    assert sizes == [1, 1, 1, 2]
    key = next(k for k in data.epoch_keys(0) if len(data.items(k)) == 2)
    batch = data[key]
    assert batch["latents"].shape == (2, 16, 5, 6, 8) and batch["llama_vec"].shape == (2, 512, 128)
    assert sorted(batch["item_keys"]) == [f"0/{VIDEO_DIR[0]}", f"0/{VIDEO_DIR[1]}"]


def test_without_bucketing_videos_of_other_latent_shapes_are_not_mixed(wd):
    """The reference's quirk: with enable_bucket = false every video has the configured resolution's key, though
    the latents were cached at an aspect bucket; such batches would not stack. Here they go to another bucket."""
    folder = wd / "work" / "video_dir"
    sd = load_file(str(folder / VIDEO_DIR[0]))
    wide = {k: (torch.zeros(*v.shape[:-1], 10) if k.startswith("latents_") else v) for k, v in sd.items()}
    wide = {k.replace("5x6x8", "5x6x10"): v for k, v in wide.items()}
    save_file(wide, str(folder / "clip_d_00000-041-0000_0080x0048_fp.safetensors"), {"architecture": "framepack"})
    shutil.copy(folder / "clip_a_fp_te.safetensors", folder / "clip_d_fp_te.safetensors")
    data = build_train_data(video_toml(wd, batch_size=3, enable_bucket=False, jsonl=False), seed=1)
    buckets = {it.latent_path.name: it.bucket for k in data.epoch_keys(0) for it in data.items(k)}
    assert buckets[VIDEO_DIR[0]][:3] == buckets["clip_d_00000-041-0000_0080x0048_fp.safetensors"][:3] == (64, 48, 41)
    assert buckets[VIDEO_DIR[0]] != buckets["clip_d_00000-041-0000_0080x0048_fp.safetensors"]
    loaded = [data[k] for k in data.epoch_keys(0)]
    assert sorted(tuple(b["latents"].shape) for b in loaded) == [(1, 16, 5, 6, 8), (1, 16, 5, 6, 10),
                                                                 (2, 16, 5, 6, 8)]


def test_video_and_image_datasets_in_one_config_are_never_batched_together(wd):
    text = (wd / video_toml(wd, jsonl=False)).read_text() + (
        "\n[[datasets]]\nimage_directory = \"datasets/images_1f\"\ncontrol_directory = \"datasets/images_1f_control\"\n"
        "cache_directory = \"work/image_1f\"\nfp_latent_window_size = 5\nfp_1f_clean_indices = [0]\n"
        "fp_1f_target_index = 9\nbatch_size = 3\n")
    (wd / "both.toml").write_text(text)
    data = build_train_data("both.toml", seed=1)
    assert data.modes == {"vanilla", "one_frame"} and data.num_items == 6
    for k in data.epoch_keys(2):
        assert len({it.dataset_index for it in data.items(k)}) == 1
        assert len({it.bucket for it in data.items(k)}) == 1
        data[k]  # stacks


# --------------------------------------------------------------------------------------------------
# order
# --------------------------------------------------------------------------------------------------


def test_the_order_is_a_function_of_seed_and_epoch(wd):
    cfg = video_toml(wd, num_repeats=4)
    a, b = build_train_data(cfg, seed=7), build_train_data(cfg, seed=7)
    assert order(a, 1) == order(b, 1)
    assert order(a, 1) != order(a, 2)
    assert order(a, 1) != order(build_train_data(cfg, seed=8), 1)
    assert sorted(map(tuple, order(a, 1))) == sorted(map(tuple, order(a, 2)))  # the same batches, reordered
    import random

    random.seed(0)
    torch.manual_seed(0)
    first = order(a, 3)
    random.seed(1)
    random.random()
    torch.manual_seed(1)
    assert order(build_train_data(cfg, seed=7), 3) == first  # no global RNG involved


def test_num_repeats(wd):
    data = build_train_data(video_toml(wd, num_repeats=3), seed=1)
    assert (data.num_items, len(data)) == (3 * 3 + 2, 11)
    counts = Counter(n for batch in order(data, 1) for n in batch)
    assert counts == {**{f"0/{n}": 3 for n in VIDEO_DIR}, **{f"1/{n}": 1 for n in VIDEO_JSONL}}


def test_resume_start_is_the_tail_and_ranks_split_the_epoch(wd):
    data = build_train_data(video_toml(wd, num_repeats=3), seed=1)  # 11 batches
    full = data.epoch_keys(4)
    assert [p for _, p in full] == list(range(11)) and {e for e, _ in full} == {4}
    assert data.epoch_keys(4, start=7) == full[7:]
    world = 3
    per_rank = [data.epoch_keys(4, rank=r, world=world) for r in range(world)]
    assert [len(keys) for keys in per_rank] == [math.ceil(11 / 3)] * 3 == [data.num_batches(3)] * 3
    positions = [p for keys in per_rank for _, p in keys]
    assert set(positions) == set(range(11))  # covering
    assert Counter(positions) == {**{p: 1 for p in range(11)}, 0: 2}  # disjoint, one batch padded by wrapping
    assert data.epoch_keys(4, rank=2, world=3, start=2) == per_rank[2][2:]
    even = [data.epoch_keys(4, rank=r, world=2) for r in range(2)]
    assert [p for _, p in even[0]] == [0, 2, 4, 6, 8, 10] and [p for _, p in even[1]] == [1, 3, 5, 7, 9, 0]


def test_timestep_pool(wd):
    cfg = video_toml(wd, num_repeats=4, jsonl=False)  # 12 batches of 1
    assert build_train_data(cfg, seed=1)[(1, 0)]["timesteps"] is None
    assert build_train_data(cfg, seed=1, num_timestep_buckets=1)[(1, 0)]["timesteps"] is None
    data = build_train_data(cfg, seed=1, num_timestep_buckets=4)
    values = [data[k]["timesteps"] for k in data.epoch_keys(1)]
    assert all(len(v) == 1 for v in values)
    flat = [v[0] for v in values]
    assert all(0.0 <= t < 1.0 for t in flat)
    assert Counter(int(t * 4) for t in flat) == {0: 3, 1: 3, 2: 3, 3: 3}  # 12 samples, 4 strata of 3
    again = build_train_data(cfg, seed=1, num_timestep_buckets=4)
    assert [again[k]["timesteps"] for k in again.epoch_keys(1)] == values
    assert [data[k]["timesteps"] for k in data.epoch_keys(2)] != values
    # the order does not depend on whether timesteps are drawn
    assert order(data, 1) == order(build_train_data(cfg, seed=1), 1)


def test_the_timestep_pool_follows_batch_sizes(wd):
    data = build_train_data(video_toml(wd, batch_size=2, jsonl=False), seed=5, num_timestep_buckets=3)
    for k in data.epoch_keys(1):
        ts = data[k]["timesteps"]
        assert len(ts) == len(data.items(k)) and all(0 <= t < 1 for t in ts)


# --------------------------------------------------------------------------------------------------
# refusals and warnings
# --------------------------------------------------------------------------------------------------


def test_no_latent_caches(wd):
    cfg = video_toml(wd, jsonl=False)
    for f in (wd / "work" / "video_dir").glob("*_fp.safetensors"):
        f.unlink()
    assert refusal(cfg, seed=1) == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: no latent caches (*_fp.safetensors) in work/video_dir; create "
        f"them first: {LATENTS.format(cfg=cfg)}"]
    shutil.rmtree(wd / "work" / "video_dir")
    assert refusal(cfg, seed=1, video_mode="f1") == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: no latent caches (*_fp.safetensors) in work/video_dir; create "
        f"them first: {LATENTS.format(cfg=cfg)} --f1, then the text caches: {TEXT.format(cfg=cfg)}"]


def test_a_latent_cache_without_its_text_cache(wd):
    cfg = video_toml(wd)
    (wd / "work" / "video_dir" / "clip_a_fp_te.safetensors").unlink()
    (wd / "work" / "video_jsonl" / "clip_c_fp_te.safetensors").unlink()
    assert refusal(cfg, seed=1) == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: 1 text cache missing in work/video_dir: "
        f"clip_a_fp_te.safetensors (needed by 2 latent caches); create them: {TEXT.format(cfg=cfg)}",
        "video.toml: datasets[1] (video_jsonl_file = datasets/videos.jsonl): cache_directory: 1 text cache missing in "
        f"work/video_jsonl: clip_c_fp_te.safetensors (needed by 1 latent cache); create them: {TEXT.format(cfg=cfg)}",
    ]


def test_many_missing_text_caches_are_listed_briefly(wd):
    folder = wd / "work" / "video_dir"
    for f in folder.glob("*_fp_te.safetensors"):
        f.unlink()
    for stem in ("clip_e", "clip_f", "clip_g"):
        shutil.copy(folder / VIDEO_DIR[2], folder / f"{stem}_00000-025-0000_0064x0048_fp.safetensors")
    cfg = video_toml(wd, jsonl=False)
    assert refusal(cfg, seed=1) == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: 5 text caches missing in work/video_dir: "
        "clip_a_fp_te.safetensors, clip_b_fp_te.safetensors, clip_e_fp_te.safetensors and 2 more (needed by 6 latent "
        f"caches); create them: {TEXT.format(cfg=cfg)}"]


def test_caches_of_another_mode(wd):
    cfg = video_toml(wd, jsonl=False)
    lines = refusal(cfg, seed=1, video_mode="f1")
    assert lines == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: 3 latent caches in work/video_dir are cached with vanilla "
        "sections (no --f1 / --one_frame), but training expects F1 sections (--f1): "
        f"{', '.join(VIDEO_DIR)}; re-cache: {LATENTS.format(cfg=cfg)} --f1; or train without --f1"]
    shutil.rmtree(wd / "work" / "video_dir")
    fill(wd / "work" / "video_dir", "f1", "video_dir")
    assert build_train_data(cfg, seed=1, video_mode="f1").modes == {"f1"}
    assert refusal(cfg, seed=1) == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: 3 latent caches in work/video_dir are cached with F1 sections "
        "(--f1), but training expects vanilla sections (no --f1 / --one_frame): "
        f"{', '.join(VIDEO_DIR)}; re-cache: {LATENTS.format(cfg=cfg)}; or train FramePack-F1 on them with --f1"]


def test_an_image_dataset_needs_one_frame_caches(wd):
    shutil.rmtree(wd / "work" / "image_1f")
    folder = wd / "work" / "image_1f"
    folder.mkdir()
    shutil.copy(CACHE / "vanilla" / "video_dir" / VIDEO_DIR[2], folder / "img_a_0100x0072_fp.safetensors")
    shutil.copy(CACHE / "text" / "image_1f" / "img_a_fp_te.safetensors", folder)
    cfg = image_toml(wd)
    assert refusal(cfg, seed=1) == [
        f"image.toml: {IMAGE_LABEL}: cache_directory: 1 latent cache in work/image_1f is cached with vanilla sections "
        "(no --f1 / --one_frame), but training expects one-frame images (--one_frame): "
        f"img_a_0100x0072_fp.safetensors; re-cache: {LATENTS.format(cfg=cfg)} --one_frame"]


def test_caches_of_another_window_size(wd):
    cfg = video_toml(wd, window=9, jsonl=False)
    assert refusal(cfg, seed=1) == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: 3 latent caches in work/video_dir are cached with "
        "fp_latent_window_size = 5, but training expects fp_latent_window_size = 9: "
        f"{', '.join(VIDEO_DIR)}; re-cache: {LATENTS.format(cfg=cfg)}; or set fp_latent_window_size = 5 in this "
        "dataset"]
    icfg = image_toml(wd, window=7)
    assert refusal(icfg, seed=1) == [
        f"image.toml: {IMAGE_LABEL}: cache_directory: 3 latent caches in work/image_1f are cached with "
        "fp_latent_window_size = 5, but training expects fp_latent_window_size = 7: "
        f"{', '.join(IMAGES)}; re-cache: {LATENTS.format(cfg=icfg)} --one_frame; or set fp_latent_window_size = 5 in "
        "this dataset"]


def test_different_window_sizes_across_datasets(wd):
    """Caches that match their datasets, but the datasets disagree: refused (one window per run)."""
    folder = wd / "work" / "video_dir"
    for name in VIDEO_DIR:  # rewrite as our caches of window 9 (the setting is read from our metadata)
        sd = load_file(str(folder / name))
        save_file(sd, str(folder / name), {"architecture": "framepack", "framepack_cli.mode": "vanilla",
                                           "framepack_cli.latent_window_size": "9"})
    cfg = video_toml(wd, window=9)
    assert refusal(cfg, seed=1) == [
        f"video.toml: fp_latent_window_size: the datasets use different window sizes ({VIDEO_LABEL}: 9, "
        "datasets[1] (video_jsonl_file = datasets/videos.jsonl): 5); one training run uses one: set the same "
        f"fp_latent_window_size in every [[datasets]] entry and re-cache: {LATENTS.format(cfg=cfg)}"]


def test_all_problems_of_a_run_at_once(wd):
    cfg = video_toml(wd)
    (wd / "work" / "video_dir" / "clip_b_fp_te.safetensors").unlink()
    (wd / "work" / "video_dir" / VIDEO_DIR[0]).write_bytes(b"truncated")
    (wd / "work" / "video_dir" / "stray_fp.safetensors").write_bytes(b"")
    for f in (wd / "work" / "video_jsonl").glob("*_fp.safetensors"):
        f.unlink()
    lines = refusal(cfg, seed=1)
    where = f"video.toml: {VIDEO_LABEL}: cache_directory"
    assert lines == [
        f"{where}: 1 file in work/video_dir is not named like a FramePack video latent cache "
        "(<clip>_<start>-<length>-<section>_<W>x<H>_fp.safetensors): stray_fp.safetensors; move them out of the "
        f"cache_directory, or re-create the caches: {LATENTS.format(cfg=cfg)}",
        f"{where}: 1 cache file in work/video_dir is incomplete or unreadable: {VIDEO_DIR[0]} (not a safetensors file "
        f"(bad header length {int.from_bytes(b'truncate', 'little')})); re-create them: {LATENTS.format(cfg=cfg)} "
        f"--skip_existing (text caches: {TEXT.format(cfg=cfg)} --skip_existing)",
        f"{where}: 1 text cache missing in work/video_dir: clip_b_fp_te.safetensors (needed by 1 latent cache); "
        f"create them: {TEXT.format(cfg=cfg)}",
        "video.toml: datasets[1] (video_jsonl_file = datasets/videos.jsonl): cache_directory: no latent caches "
        f"(*_fp.safetensors) in work/video_jsonl; create them first: {LATENTS.format(cfg=cfg)}",
    ]


def test_caches_made_for_another_dataset_or_other_settings_only_warn(wd):
    folder = wd / "work" / "video_dir"
    meta = {"architecture": "framepack", "framepack_cli.version": "0.0.1", "framepack_cli.mode": "vanilla",
            "framepack_cli.latent_window_size": "5", "framepack_cli.resolution": "96x64",
            "framepack_cli.enable_bucket": "true", "framepack_cli.dataset": "0123456789abcdef"}
    save_file(load_file(str(folder / VIDEO_DIR[0])), str(folder / VIDEO_DIR[0]), meta)
    cfg = video_toml(wd, jsonl=False)
    warnings: list[str] = []
    data = build_train_data(cfg, seed=1, warn=warnings.append)
    assert data.num_items == 3
    where = f"video.toml: {VIDEO_LABEL}: cache_directory"
    assert warnings == [
        f"Warning: {where}: 1 latent cache in work/video_dir is cached with resolution 96x64, but training expects "
        f"resolution 64x48 (the dataset config changed since): {VIDEO_DIR[0]}; training uses them as cached; to "
        f"apply the config, re-cache: {LATENTS.format(cfg=cfg)}",
        f"Warning: {where}: 1 cache file in work/video_dir was made by framepack for another dataset: {VIDEO_DIR[0]}; "
        f"training uses them; if they are outdated, re-create them: {LATENTS.format(cfg=cfg)} (text caches: "
        f"{TEXT.format(cfg=cfg)})",
    ]


def test_config_problems_come_first(wd):
    (wd / "bad.toml").write_text("[general]\nresolution = [64, 48]\n[[datasets]]\nvideo_directory = \"nowhere\"\n")
    with pytest.raises(FramepackError, match="bad.toml: datasets\\[0\\] \\(video_directory = nowhere\\): "
                                             "video_directory: folder not found: nowhere"):
        build_train_data("bad.toml", seed=1)
    with pytest.raises(ValueError, match="video_mode"):
        build_train_data(video_toml(wd), seed=1, video_mode="one_frame")


# --------------------------------------------------------------------------------------------------
# metadata, sampler, loader
# --------------------------------------------------------------------------------------------------


def test_datasets_metadata(wd):
    data = build_train_data(video_toml(wd), seed=1)
    common = {"resolution": [64, 48], "caption_extension": ".txt", "batch_size_per_device": 1, "num_repeats": 1,
              "enable_bucket": True, "bucket_no_upscale": False}
    video = {"frame_extraction": "full", "frame_stride": 1, "frame_sample": 1, "target_frames": [1],
             "max_frames": 129, "source_fps": None, "has_control": False}
    assert data.datasets_metadata() == [{**common, "video_directory": "videos", **video},
                                        {**common, "video_jsonl_file": "videos.jsonl", **video}]
    json.dumps(data.datasets_metadata())
    images = build_train_data(image_toml(wd), seed=1)
    assert images.datasets_metadata() == [{**common, "image_directory": "images_1f",
                                           "control_directory": "images_1f_control", "has_control": True}]


def test_sampler_follows_set_epoch(wd):
    data = build_train_data(video_toml(wd, num_repeats=2), seed=1)  # 8 batches
    s = EpochSampler(data, rank=1, world=3)
    assert list(s) == data.epoch_keys(0, rank=1, world=3) and len(s) == 3
    s.set_epoch(5, start=1)
    assert list(s) == data.epoch_keys(5, rank=1, world=3)[1:] and len(s) == 2
    with pytest.raises(ValueError):
        EpochSampler(data, rank=3, world=3)


def test_loader_workers_give_the_same_batches(wd):
    data = build_train_data(video_toml(wd, batch_size=2), seed=2, num_timestep_buckets=2)
    plain = EpochSampler(data)
    plain.set_epoch(3)
    expected = list(make_loader(data, plain, workers=0, persistent=True))
    assert len(expected) == 4
    sampler = EpochSampler(data)
    loader = make_loader(data, sampler, workers=2, persistent=True)
    assert (loader.num_workers, loader.persistent_workers) == (min(2, os.cpu_count() or 1), True)
    for epoch, start in ((3, 0), (3, 2)):
        sampler.set_epoch(epoch, start)
        got = list(loader)
        assert len(got) == len(expected) - start
        for a, b in zip(got, expected[start:], strict=True):
            assert a.keys() == b.keys() and a["item_keys"] == b["item_keys"] and a["timesteps"] == b["timesteps"]
            for k, v in a.items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, b[k]) and v.dtype == b[k].dtype, k


def test_loader_caps_workers_and_ignores_persistence_without_workers(wd):
    data = build_train_data(video_toml(wd, jsonl=False), seed=2)
    loader = make_loader(data, EpochSampler(data), workers=10_000, persistent=True)
    assert loader.num_workers == os.cpu_count()
    loader = make_loader(data, EpochSampler(data), workers=0, persistent=True)
    assert (loader.num_workers, loader.persistent_workers) == (0, False)
    assert len(list(loader)) == 3


def test_reference_caches_carry_no_framepack_metadata():
    """The golden caches are the reference's own (so the tests above load caches framepack did not write)."""
    with safe_open(str(CACHE / "vanilla" / "video_dir" / VIDEO_DIR[0]), framework="pt") as f:
        assert not any(k.startswith("framepack_cli.") for k in f.metadata())


def test_an_unreadable_text_cache_shared_by_two_sections_is_named_once(wd):
    cfg = video_toml(wd, jsonl=False)
    (wd / "work" / "video_dir" / "clip_a_fp_te.safetensors").write_bytes(b"truncated")
    assert refusal(cfg, seed=1) == [
        f"video.toml: {VIDEO_LABEL}: cache_directory: 1 cache file in work/video_dir is incomplete or unreadable: "
        f"clip_a_fp_te.safetensors (not a safetensors file (bad header length {int.from_bytes(b'truncate', 'little')}"
        f")); re-create them: {LATENTS.format(cfg=cfg)} --skip_existing (text caches: {TEXT.format(cfg=cfg)} "
        "--skip_existing)"]
