"""Dataset configs: schema, value resolution, source/caption/control discovery and every error line; the pure
frame-extraction / bucket / section math of `framepack_cli.plan.frames`; plan-time refusals of
`framepack cache latents` (short videos, wrong dataset kind for the mode) before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack_cli.cli.app import main
from framepack_cli.errors import FramepackError
from framepack_cli.options.dataset import load_dataset_config
from framepack_cli.plan.cache_names import crop_stem, image_cache_name, parse_cache_name, section_cache_name
from framepack_cli.plan.frames import (
    bucket_resolutions,
    converted_frame_count,
    f1_cache_sections,
    fps_kept_frames,
    frame_crops,
    linspace_int,
    num_cache_sections,
    one_frame_indices,
    round_target_frames,
    select_bucket,
    split_context,
    trimmed_frames,
    vanilla_cache_sections,
)
from tests.conftest import GOLDEN

# --------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """An empty working directory (relative dataset paths are read from the cwd first, as in the reference)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def png(path: Path, size=(40, 32), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (200, 100, 50, 128)[: len(mode)] if mode != "L" else 128).save(path)
    return path


def images(folder: str, names, captions=True, size=(40, 32)) -> None:
    for n in names:
        png(Path(folder) / f"{n}.png", size)
        if captions:
            (Path(folder) / f"{n}.txt").write_text(f"  caption of {n}\n")


def frames(folder: str, n: int, size=(40, 32)) -> None:
    for i in range(n):
        png(Path(folder) / f"frame_{i:04d}.png", size)


def videos(folder: str, names, captions=True) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    for n in names:
        (Path(folder) / f"{n}.mp4").write_bytes(b"")  # never decoded by the config loader
        if captions:
            (Path(folder) / f"{n}.txt").write_text(f"caption of {n}")


def toml(text: str, name="dataset.toml") -> Path:
    p = Path(name)
    p.write_text(text)
    return p


def errors(path: Path, **kw) -> list[str]:
    with pytest.raises(FramepackError) as e:
        load_dataset_config(path, **kw)
    return e.value.message.splitlines()


def assert_lines(path: Path, *expected: str, **kw) -> None:
    assert sorted(errors(path, **kw)) == sorted(f"{path}: {line}" for line in expected)


# --------------------------------------------------------------------------------------------------------------
# loading and resolution


@pytest.mark.skipif(not (GOLDEN / "datasets").is_dir(), reason="golden datasets missing")
def test_golden_configs(monkeypatch):
    monkeypatch.chdir(GOLDEN)
    cfg = load_dataset_config("datasets/video_full.toml")
    a, b = cfg.datasets
    assert a.kind == b.kind == "video" and a.resolution == (64, 48) and a.enable_bucket and a.batch_size == 1
    assert a.frame_extraction == "full" and a.max_frames == 129 and a.fp_latent_window_size == 5
    assert a.cache_directory == Path("work/video_dir") and b.cache_directory == Path("work/video_jsonl")
    assert [(i.stem, i.caption) for i in a.items] == [("clip_a", "A red ball rolls across a striped floor."),
                                                      ("clip_b", "Waves of colour drift slowly to the right.")]
    assert [i.path for i in b.items] == [Path("datasets/video_frames/clip_c"), Path("datasets/videos/clip_b.mp4")]
    head = load_dataset_config("datasets/video_chunk_head.toml").datasets[1]
    assert head.target_frames == (21, 25) and head.frame_extraction == "head"
    (one,) = load_dataset_config("datasets/image_1f.toml").datasets
    assert one.kind == "image" and one.fp_1f_clean_indices == (0,) and one.fp_1f_target_index == 9
    assert not one.fp_1f_no_post
    expected = json.loads((GOLDEN / "datasets" / "datasets.json").read_text())["images"]
    assert {i.stem: [str(c) for c in i.controls] for i in one.items} == expected


def test_defaults_and_fallback_order(ws):
    videos("v", ["a"])
    images("i", ["x"])
    png(Path("c/x.png"))
    cfg = toml("""
[general]
caption_extension = ".txt"
batch_size = 3

[[datasets]]
video_directory = "v"

[[datasets]]
image_directory = "i"
control_directory = "c"
cache_directory = "cache_i"
batch_size = 2
resolution = 512
enable_bucket = true
bucket_no_upscale = true
""")
    v, i = load_dataset_config(cfg, batch_size=7).datasets
    assert v.resolution == (960, 544) and not v.enable_bucket and not v.bucket_no_upscale
    assert v.batch_size == 3 and v.num_repeats == 1  # [general] wins over --batch_size
    assert v.target_frames == (1,) and v.frame_extraction == "head" and v.max_frames == 129
    assert v.frame_stride == 1 and v.frame_sample == 1 and v.source_fps is None and v.fp_latent_window_size == 9
    assert v.cache_directory == Path("v")  # defaults to the source folder
    assert v.items[0].caption == "caption of a"
    assert i.batch_size == 2 and i.resolution == (512, 512) and i.enable_bucket and i.bucket_no_upscale
    assert i.items[0].caption == "caption of x" and i.items[0].controls == (Path("c/x.png"),)
    assert i.fp_1f_clean_indices is None and i.fp_1f_target_index is None and not i.fp_1f_no_post

    cfg = toml('[[datasets]]\nvideo_directory = "v"\ncaption_extension = ".txt"\n', "b.toml")
    assert load_dataset_config(cfg, batch_size=7).datasets[0].batch_size == 7  # the command line comes third
    assert load_dataset_config(cfg).datasets[0].batch_size == 1


def test_json_config_and_video_options(ws):
    videos("v", ["a"])
    cfg = Path("d.json")
    cfg.write_text(json.dumps({"general": {"caption_extension": ".txt", "enable_bucket": True},
                               "datasets": [{"video_directory": "v", "target_frames": [1, 25, 45, 24],
                                             "frame_extraction": "uniform", "frame_sample": 1, "source_fps": 60,
                                             "bucket_no_upscale": True}]}))
    c = load_dataset_config(cfg)
    (v,) = c.datasets
    assert v.target_frames == (1, 21, 25, 45)  # rounded down to 4n+1, deduplicated, sorted
    assert v.frame_extraction == "head"  # uniform with one sample
    assert v.source_fps == 60.0 and isinstance(v.source_fps, float)  # an integer fps is accepted
    assert v.bucket_no_upscale
    assert c.warnings == (
        f"{cfg}: datasets[0] (video_directory = v): target_frames [1, 25, 45, 24] rounded down to 4n+1: "
        "[1, 21, 25, 45]",
        f"{cfg}: datasets[0] (video_directory = v): frame_extraction 'uniform' with frame_sample 1 is 'head'",
    )


def test_jsonl_datasets(ws):
    frames("clips/c1", 3)
    videos("clips", ["v1"], captions=False)
    Path("videos.jsonl").write_text(
        json.dumps({"video_path": "clips/c1", "caption": " frames "}) + "\n\n"
        + json.dumps({"video_path": "clips/v1.mp4", "caption": "video"}) + "\n")
    png(Path("img/a.png"))
    png(Path("ctl/a0.png"))
    png(Path("ctl/a1.png"))
    Path("images.jsonl").write_text(json.dumps({"image_path": "img/a.png", "caption": "cap",
                                                "control_path_1": "ctl/a1.png", "control_path_0": "ctl/a0.png"}))
    cfg = toml("""
[[datasets]]
video_jsonl_file = "videos.jsonl"
cache_directory = "cv"

[[datasets]]
image_jsonl_file = "images.jsonl"
cache_directory = "ci"
fp_1f_clean_indices = [0, 1]
fp_1f_target_index = 9
""")
    v, i = load_dataset_config(cfg).datasets
    # JSONL captions are used as written (the reference does not strip them; caption files are stripped)
    assert [(x.path, x.caption, x.stem) for x in v.items] == [(Path("clips/c1"), " frames ", "c1"),
                                                              (Path("clips/v1.mp4"), "video", "v1")]
    assert i.items[0].controls == (Path("ctl/a0.png"), Path("ctl/a1.png"))


def test_relative_paths_fall_back_to_the_config_folder(ws):
    """A dataset TOML kept with its data works from any working directory; the working directory still comes
    first (the reference reads relative paths from there only)."""
    videos("data/videos", ["a"])
    videos("data/ctl", ["a"], captions=False)
    images("data/imgs", ["x"])
    png(Path("data/imgs_ctl/x.png"))
    Path("data/old_cache").mkdir()
    Path("old_cache").mkdir()  # exists in both places: the working directory's wins
    Path("data/only_here").mkdir()
    Path("data/out").mkdir()
    Path("work").mkdir()
    videos("videos", ["b"])  # the working directory's "videos" wins over data/videos
    cfg = toml("""
[general]
caption_extension = ".txt"

[[datasets]]
video_directory = "videos"
cache_directory = "old_cache"

[[datasets]]
video_directory = "ctl"
cache_directory = "only_here"

[[datasets]]
image_directory = "imgs"
control_directory = "imgs_ctl"
cache_directory = "new_cache"

[[datasets]]
video_directory = "videos"
cache_directory = "new_cache_cwd"

[[datasets]]
video_directory = "ctl"
cache_directory = "out/c"

[[datasets]]
video_directory = "ctl"
cache_directory = "work/c"

[[datasets]]
video_directory = "ctl"
cache_directory = "nowhere/c"

[[datasets]]
image_directory = "imgs"
""", "data/dataset.toml")
    Path("data/ctl/a.txt").write_text("caption of a")
    ds = load_dataset_config(cfg).datasets
    assert ds[0].video_directory == Path("videos") and [i.path for i in ds[0].items] == [Path("videos/b.mp4")]
    assert ds[0].cache_directory == Path("old_cache")
    assert ds[1].video_directory == Path("data/ctl") and ds[1].cache_directory == Path("data/only_here")
    assert ds[2].image_directory == Path("data/imgs") and ds[2].control_directory == Path("data/imgs_ctl")
    assert ds[2].items[0].controls == (Path("data/imgs_ctl/x.png"),) and ds[2].items[0].caption == "caption of x"
    # a new cache folder: beside the sources when they were found beside the config, else the working directory
    assert ds[2].cache_directory == Path("data/new_cache")
    assert ds[3].cache_directory == Path("new_cache_cwd")
    # ... unless only one place has its parent folder
    assert ds[4].cache_directory == Path("data/out/c")
    assert ds[5].cache_directory == Path("work/c")
    assert ds[6].cache_directory == Path("data/nowhere/c")
    assert ds[7].cache_directory == Path("data/imgs")  # unset: the source folder, where it was found
    assert not Path("data/new_cache").exists()  # loading creates nothing

    absolute = toml(f'[[datasets]]\nvideo_directory = "{Path.cwd() / "data/ctl"}"\ncaption_extension = ".txt"\n'
                    f'cache_directory = "{Path.cwd() / "abs_cache"}"\n', "data/abs.toml")
    (a,) = load_dataset_config(absolute).datasets
    assert a.video_directory == Path.cwd() / "data/ctl" and a.cache_directory == Path.cwd() / "abs_cache"


def test_jsonl_paths_fall_back_to_the_jsonl_folder(ws):
    """Relative paths in a JSONL line: the working directory first, then the JSONL file's folder; the error
    names both places."""
    frames("set/clips/c1", 3)
    videos("set/clips", ["v1", "k1"], captions=False)
    frames("clips/c2", 3)  # found in the working directory
    Path("set/videos.jsonl").write_text(
        json.dumps({"video_path": "clips/c1", "caption": "one", "control_path": "clips/k1.mp4"}) + "\n"
        + json.dumps({"video_path": "clips/c2", "caption": "two", "control_path": "clips/c1"}) + "\n")
    png(Path("set/img/a.png"))
    png(Path("set/ctl/a0.png"))
    png(Path("set/ctl/a1.png"))
    Path("set/images.jsonl").write_text(json.dumps({"image_path": "img/a.png", "caption": "cap",
                                                    "control_path_0": "ctl/a0.png", "control_path_1": "ctl/a1.png"}))
    cfg = toml("""
[[datasets]]
video_jsonl_file = "set/videos.jsonl"
cache_directory = "cv"

[[datasets]]
image_jsonl_file = "set/images.jsonl"
cache_directory = "ci"
fp_1f_clean_indices = [0, 1]
""")
    v, i = load_dataset_config(cfg).datasets
    assert [(x.path, x.control) for x in v.items] == [(Path("set/clips/c1"), Path("set/clips/k1.mp4")),
                                                      (Path("clips/c2"), Path("set/clips/c1"))]
    assert i.items[0].path == Path("set/img/a.png")
    assert i.items[0].controls == (Path("set/ctl/a0.png"), Path("set/ctl/a1.png"))

    Path("set/bad.jsonl").write_text(
        json.dumps({"video_path": "clips/gone", "caption": "x", "control_path": "clips/k1.mp4"}) + "\n"
        + json.dumps({"video_path": "clips/c1", "caption": "x", "control_path": "clips/nope"}) + "\n")
    Path("set/bad_i.jsonl").write_text(json.dumps({"image_path": "img/gone.png", "caption": "x"}) + "\n"
                                       + json.dumps({"image_path": "img/a.png", "caption": "x",
                                                     "control_path": "ctl/gone.png"}) + "\n")
    cfg = toml('[[datasets]]\nvideo_jsonl_file = "set/bad.jsonl"\ncache_directory = "cv"\n\n'
               '[[datasets]]\nimage_jsonl_file = "set/bad_i.jsonl"\ncache_directory = "ci"\n', "bad.toml")

    def tried(value):
        return f" (looked in {Path.cwd() / value} and {Path.cwd() / 'set' / value})"

    assert_lines(
        cfg,
        "datasets[0] (video_jsonl_file = set/bad.jsonl): video_jsonl_file: set/bad.jsonl line 1: video or frame "
        "folder not found: clips/gone" + tried("clips/gone"),
        "datasets[0] (video_jsonl_file = set/bad.jsonl): video_jsonl_file: set/bad.jsonl line 2: control video or "
        "frame folder not found: clips/nope" + tried("clips/nope"),
        "datasets[1] (image_jsonl_file = set/bad_i.jsonl): image_jsonl_file: set/bad_i.jsonl line 1: image not "
        "found: img/gone.png" + tried("img/gone.png"),
        "datasets[1] (image_jsonl_file = set/bad_i.jsonl): image_jsonl_file: set/bad_i.jsonl line 2: control image "
        "not found: ctl/gone.png" + tried("ctl/gone.png"),
    )


def test_control_matching(ws):
    images("img", ["a", "a_b", "b"])
    for name in ("a.png", "a_1.png", "a_0.png", "a_b.png", "b_00.png", "b_x.png", "a.txt"):
        png(Path("ctl") / name) if name.endswith(".png") else Path("ctl", name).write_text("")
    cfg = toml("""
[[datasets]]
image_directory = "img"
control_directory = "ctl"
caption_extension = ".txt"
fp_1f_clean_indices = [0, 10]
""")
    d = "datasets[0] (image_directory = img): control_directory"
    assert_lines(cfg, f"{d}: img/a_b.png: 1 control image(s) in ctl, fp_1f_clean_indices needs 2",
                 f"{d}: img/b.png: 1 control image(s) in ctl, fp_1f_clean_indices needs 2")
    cfg = toml('[[datasets]]\nimage_directory = "img"\ncontrol_directory = "ctl"\ncaption_extension = ".txt"\n')
    by_stem = {i.stem: i.controls for i in load_dataset_config(cfg).datasets[0].items}
    # exact stem first, then _<n> by number; a_b.png belongs to a_b only, b_x.png to nobody
    assert by_stem == {"a": (Path("ctl/a.png"),), "a_b": (Path("ctl/a_b.png"),), "b": (Path("ctl/b_00.png"),)}


def test_deprecated_keys_are_renamed(ws):
    images("img", ["a"])
    cfg = toml('[[datasets]]\nimage_directory = "img"\ncaption_extension = ".txt"\n'
               'flux_kontext_no_resize_control = false\n')
    c = load_dataset_config(cfg)
    assert c.warnings == (f"{cfg}: datasets[0] (image_directory = img): flux_kontext_no_resize_control is "
                          "deprecated, read as no_resize_control",)


# --------------------------------------------------------------------------------------------------------------
# errors: one line each, naming file, dataset and key; all at once


def test_unknown_keys(ws):
    videos("v", ["a"])
    images("i", ["x"])
    cfg = toml("""
[general]
caption_extension = ".txt"
cache_directory = "c"

[[datasets]]
video_directory = "v"
cache_directory = "cv"
frame_extrction = "head"
fp_1f_target_index = 9

[[datasets]]
image_directory = "i"
max_frames = 10

[other]
x = 1
""")
    assert_lines(
        cfg,
        "other: unknown top-level key (only [general] and [[datasets]] are allowed)",
        "[general]: cache_directory: unknown key ([general] only takes caption_extension, batch_size, num_repeats, "
        "resolution, enable_bucket, bucket_no_upscale; put other keys in each [[datasets]] entry)",
        "datasets[0] (video_directory = v): frame_extrction: unknown key (allowed in video datasets: "
        "caption_extension, batch_size, num_repeats, resolution, enable_bucket, bucket_no_upscale, video_directory, "
        "video_jsonl_file, control_directory, target_frames, frame_extraction, frame_stride, frame_sample, "
        "max_frames, cache_directory, source_fps, fp_latent_window_size)",
        "datasets[0] (video_directory = v): fp_1f_target_index: an image-dataset key, but this entry is a video "
        "dataset (it has video_directory or video_jsonl_file)",
        "datasets[1] (image_directory = i): max_frames: a video-dataset key, but this entry is an image dataset "
        "(it has image_directory or image_jsonl_file)",
    )


def test_wrong_types(ws):
    videos("v", ["a"])
    images("i", ["x"])
    cfg = toml("""
[general]
caption_extension = 1
enable_bucket = 1

[[datasets]]
video_directory = "v"
resolution = "512"
batch_size = "2"
target_frames = [21, "x"]
source_fps = "30"
frame_stride = 0
frame_extraction = "chain"

[[datasets]]
image_directory = "i"
fp_1f_clean_indices = 0
fp_1f_no_post = "no"
num_repeats = 1.5
""")
    assert_lines(
        cfg,
        '[general]: caption_extension: expected a string such as ".txt", got integer 1',
        "[general]: enable_bucket: expected true or false, got integer 1",
        'datasets[0] (video_directory = v): resolution: expected an integer or a list [width, height] of two '
        'integers, got string "512"',
        'datasets[0] (video_directory = v): batch_size: expected an integer, got string "2"',
        'datasets[0] (video_directory = v): target_frames: expected a list of integers, got array [21, "x"]',
        'datasets[0] (video_directory = v): source_fps: expected a number such as 30.0, got string "30"',
        "datasets[0] (video_directory = v): frame_stride: must be >= 1, got integer 0",
        "datasets[1] (image_directory = i): fp_1f_clean_indices: expected a list of integers, got integer 0",
        'datasets[1] (image_directory = i): fp_1f_no_post: expected true or false, got string "no"',
        "datasets[1] (image_directory = i): num_repeats: expected an integer, got float 1.5",
    )


def test_value_errors(ws):
    videos("v", ["a"])
    videos("w", ["b"])
    images("i", ["x"])
    cfg = toml("""
[general]
caption_extension = ".txt"
resolution = [0, 16]

[[datasets]]
video_directory = "v"
resolution = [500, 300]
frame_extraction = "chain"
target_frames = []

[[datasets]]
video_directory = "w"
cache_directory = "v"
resolution = [64, 48, 3]

[[datasets]]
image_directory = "i"
cache_directory = "ci"
multiple_target = true
no_resize_control = true
fp_1f_clean_indices = [-1]
""")
    assert_lines(
        cfg,
        "[general]: resolution: width and height must be positive, got [0, 16]",
        "datasets[0] (video_directory = v): resolution: 500x300 without enable_bucket: width and height must be "
        "multiples of 16 (the latent grid is 8 px and the DiT patches 2x2 latents)",
        "datasets[0] (video_directory = v): frame_extraction: must be one of head, chunk, slide, uniform, full, "
        "got 'chain'",
        "datasets[0] (video_directory = v): target_frames: must list at least one frame count",
        "datasets[1] (video_directory = w): resolution: expected an integer or [width, height], got an array of 3 "
        "values",
        "datasets[1] (video_directory = w): cache_directory: v is also the cache of datasets[0] (video_directory = "
        "v); every dataset needs its own",
        "datasets[2] (image_directory = i): multiple_target: only for Qwen-Image-Layered datasets; FramePack has "
        "one target per image",
        "datasets[2] (image_directory = i): no_resize_control: not supported by FramePack: one-frame caching "
        "stacks the control images with the target, so they are always resized to the target's bucket",
        "datasets[2] (image_directory = i): fp_1f_clean_indices: indices must be >= 0, got [-1]",
    )


def test_missing_paths_and_captions(ws):
    images("imgs", ["a", "b", "c"], captions=False)
    Path("imgs/b.txt").write_text("ok")
    videos("vids", ["v1", "v2"], captions=False)
    Path("vids/v2.txt").write_text("ok")
    Path("sub").mkdir()
    images("sub/imgs2", ["z"])
    cfg = toml("""
[general]
caption_extension = ".txt"

[[datasets]]
image_directory = "imgs"

[[datasets]]
video_directory = "vids"

[[datasets]]
image_directory = "nope"
control_directory = "nope_ctl"

[[datasets]]
video_jsonl_file = "nope.jsonl"
cache_directory = "cj"

[[datasets]]
image_jsonl_file = "nope.jsonl"

[[datasets]]
image_directory = "imgs2"
cache_directory = "c5"
""", "sub/dataset.toml")
    def tried(value):  # the config is not in the working directory: both places are named
        return f" (looked in {Path.cwd() / value} and {Path.cwd() / 'sub' / value})"

    assert_lines(
        cfg,
        "datasets[0] (image_directory = imgs): caption_extension: imgs/a.png: caption file imgs/a.txt not found or "
        "unreadable",
        "datasets[0] (image_directory = imgs): caption_extension: imgs/c.png: caption file imgs/c.txt not found or "
        "unreadable",
        "datasets[1] (video_directory = vids): caption_extension: vids/v1.mp4: caption file vids/v1.txt not found "
        "or unreadable",
        "datasets[2] (image_directory = nope): image_directory: folder not found: nope" + tried("nope"),
        "datasets[2] (image_directory = nope): control_directory: folder not found: nope_ctl" + tried("nope_ctl"),
        "datasets[3] (video_jsonl_file = nope.jsonl): video_jsonl_file: file not found: nope.jsonl"
        + tried("nope.jsonl"),
        "datasets[4] (image_jsonl_file = nope.jsonl): cache_directory: required for a image_jsonl_file dataset "
        "(there is no folder to default to)",
        "datasets[4] (image_jsonl_file = nope.jsonl): image_jsonl_file: file not found: nope.jsonl"
        + tried("nope.jsonl"),
        # datasets[5]: imgs2 is not in the working directory but beside the config: found there
    )
    same = toml('[[datasets]]\nimage_directory = "nope"\ncaption_extension = ".txt"\n')
    assert_lines(same, "datasets[0] (image_directory = nope): image_directory: folder not found: nope")


def test_no_caption_extension_and_empty_folders(ws):
    images("i", ["a"])
    Path("empty").mkdir()
    cfg = toml('[[datasets]]\nimage_directory = "i"\n\n[[datasets]]\nvideo_directory = "empty"\n')
    assert_lines(
        cfg,
        "datasets[0] (image_directory = i): caption_extension: not set: the captions of i are read from "
        "<image name><caption_extension>",
        "datasets[1] (video_directory = empty): video_directory: no videos (.mp4, .webm, .avi, .mkv, .mov, .flv, "
        ".wmv, .m4v, .mpg, .mpeg) in empty",
    )


def test_dataset_kind_and_structure_errors(ws):
    images("i", ["a"])
    videos("v", ["b"])
    cfg = toml("""
datasets = [
  { image_directory = "i", video_directory = "v" },
  { cache_directory = "x" },
  { image_directory = "i", image_jsonl_file = "i.jsonl", cache_directory = "y", caption_extension = ".txt" },
  3,
]
""")
    assert_lines(
        cfg,
        "datasets[0] (image_directory = i): image_directory: a dataset is either an image dataset (image_directory "
        "/ image_jsonl_file) or a video dataset (video_directory / video_jsonl_file), not both",
        "datasets[1]: image_directory: each [[datasets]] entry needs one of image_directory, image_jsonl_file, "
        "video_directory, video_jsonl_file",
        "datasets[2] (image_directory = i): image_jsonl_file: give either image_directory or image_jsonl_file, not "
        "both",
        "datasets[3]: expected a table, got integer 3",
    )
    assert_lines(toml("[general]\n", "empty.toml"), "datasets: no [[datasets]] entries")


def test_jsonl_errors(ws):
    images("img", ["a"], captions=False)
    Path("v.jsonl").write_text('{"video_path": "missing.mp4", "caption": "x"}\nnot json\n[1]\n{"video_path": 3}\n')
    Path("i.jsonl").write_text(json.dumps({"image_path": "img/a.png", "caption": "x", "control_path": "nope.png"})
                               + "\n" + json.dumps({"image_path": "img/a.png"}) + "\n")
    cfg = toml("""
[[datasets]]
video_jsonl_file = "v.jsonl"
cache_directory = "cv"

[[datasets]]
image_jsonl_file = "i.jsonl"
cache_directory = "ci"
""")
    assert_lines(
        cfg,
        "datasets[0] (video_jsonl_file = v.jsonl): video_jsonl_file: v.jsonl line 1: video or frame folder not "
        "found: missing.mp4",
        "datasets[0] (video_jsonl_file = v.jsonl): video_jsonl_file: v.jsonl line 2: invalid JSON (Expecting value)",
        "datasets[0] (video_jsonl_file = v.jsonl): video_jsonl_file: v.jsonl line 3: expected a JSON object",
        'datasets[0] (video_jsonl_file = v.jsonl): video_jsonl_file: v.jsonl line 4: needs string entries '
        '"video_path" and "caption"',
        "datasets[1] (image_jsonl_file = i.jsonl): image_jsonl_file: i.jsonl line 1: control image not found: "
        "nope.png",
        'datasets[1] (image_jsonl_file = i.jsonl): image_jsonl_file: i.jsonl line 2: needs string entries '
        '"image_path" and "caption"',
    )


def test_duplicate_stems(ws):
    videos("v", ["a"])
    Path("v/a.mov").write_bytes(b"")
    cfg = toml('[[datasets]]\nvideo_directory = "v"\ncaption_extension = ".txt"\n')
    assert_lines(cfg, "datasets[0] (video_directory = v): video_directory: v/a.mov and v/a.mp4 share the name 'a', "
                      "so their caches would overwrite each other; rename one")


def test_file_errors(ws):
    with pytest.raises(FramepackError, match=r"nope\.toml: dataset config not found"):
        load_dataset_config("nope.toml")
    with pytest.raises(FramepackError, match=r"d\.yaml: dataset config must be a \.toml or \.json file"):
        load_dataset_config(toml("", "d.yaml"))
    with pytest.raises(FramepackError, match=r"bad\.toml: invalid TOML \("):
        load_dataset_config(toml("[[datasets]\n", "bad.toml"))
    with pytest.raises(FramepackError, match=r"bad\.json: invalid JSON \("):
        load_dataset_config(toml("{", "bad.json"))
    with pytest.raises(FramepackError, match=r"list\.json: expected a table"):
        load_dataset_config(toml("[]", "list.json"))


# --------------------------------------------------------------------------------------------------------------
# plan-time errors of `framepack cache latents` (no model is loaded: the model files are empty)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.err


@pytest.fixture
def fake_models(ws):
    Path("vae.safetensors").write_bytes(b"")
    Path("sig.safetensors").write_bytes(b"")
    return ["--vae", "vae.safetensors", "--image_encoder", "sig.safetensors"]


def test_short_videos_are_refused_up_front_with_strict(ws, fake_models, capsys):
    """`--strict`: a clip too short for one section refuses the whole run before any model loads (the model
    files here are empty); crops that no clip could fill are config errors with or without it."""
    frames("clips/c20", 20)
    frames("clips/c30", 30)
    for n in ("c20", "c30"):
        Path(f"clips/{n}.txt").write_text("x")
    Path("clips.jsonl").write_text("\n".join(json.dumps({"video_path": f"clips/{n}", "caption": "x"})
                                             for n in ("c20", "c30")))
    cfg = toml("""
[general]
resolution = [32, 32]

[[datasets]]
video_jsonl_file = "clips.jsonl"
cache_directory = "c1"
frame_extraction = "full"
fp_latent_window_size = 5

[[datasets]]
video_jsonl_file = "clips.jsonl"
cache_directory = "c2"
target_frames = [9, 13]
fp_latent_window_size = 5

[[datasets]]
video_jsonl_file = "clips.jsonl"
cache_directory = "c3"
target_frames = [25]
frame_extraction = "slide"
frame_stride = 5
fp_latent_window_size = 5

[[datasets]]
video_jsonl_file = "clips.jsonl"
cache_directory = "c4"
frame_extraction = "full"
max_frames = 17
fp_latent_window_size = 5
""")
    code, err = run_cli(["cache", "latents", "--dataset_config", cfg, *fake_models, "--strict"], capsys)
    assert code == 2
    d = "datasets[{}] (video_jsonl_file = clips.jsonl)"
    expected = [
        f"{d.format(0)}: fp_latent_window_size: clips/c20: 20 frames, cropped to 17: shorter than one section, "
        "fp_latent_window_size = 5 needs at least 21 frames (4 * 5 + 1)",
        f"{d.format(1)}: target_frames: clips/c20: crops of 9, 13 frames (head): shorter than one section, "
        "fp_latent_window_size = 5 needs at least 21 frames (4 * 5 + 1)",
        f"{d.format(1)}: target_frames: clips/c30: crops of 9, 13 frames (head): shorter than one section, "
        "fp_latent_window_size = 5 needs at least 21 frames (4 * 5 + 1)",
        f"{d.format(2)}: target_frames: clips/c20: 20 frames, fewer than every target_frames value [25]: nothing "
        "to cache",
        f"{d.format(3)}: fp_latent_window_size: clips/c20: 20 frames, cropped to 17: shorter than one section, "
        "fp_latent_window_size = 5 needs at least 21 frames (4 * 5 + 1)",
        f"{d.format(3)}: max_frames: clips/c30: 30 frames, cropped to 17: shorter than one section, "
        "fp_latent_window_size = 5 needs at least 21 frames (4 * 5 + 1)",
    ]
    assert sorted(err.strip().splitlines()) == sorted(f"Error: {cfg}: {line}" for line in expected), err


    # Without --strict the clips that are too short themselves are left out (they would be cached without the
    # others); the config errors remain and still stop the run before any model loads.
    code, err = run_cli(["cache", "latents", "--dataset_config", cfg, *fake_models], capsys)
    assert code == 2
    config_errors = [expected[i] for i in (1, 2, 4, 5)]
    assert sorted(err.strip().splitlines()) == sorted(f"Error: {cfg}: {line}" for line in config_errors), err


def test_mode_and_dataset_kind_mismatch(ws, fake_models, capsys):
    images("i", ["a"])
    images("j", ["b"])
    png(Path("ctl/b.png"))
    frames("clips/c", 21)
    Path("clips/c.txt").write_text("x")
    Path("clips.jsonl").write_text(json.dumps({"video_path": "clips/c", "caption": "x"}))
    cfg = toml("""
[general]
caption_extension = ".txt"

[[datasets]]
image_directory = "i"
fp_1f_target_index = 9

[[datasets]]
image_directory = "j"
control_directory = "ctl"

[[datasets]]
video_jsonl_file = "clips.jsonl"
cache_directory = "cv"
""")
    code, err = run_cli(["cache", "latents", "--dataset_config", cfg, *fake_models, "--one_frame"], capsys)
    assert code == 2
    assert sorted(err.strip().splitlines()) == sorted(f"Error: {cfg}: {line}" for line in [
        "datasets[0] (image_directory = i): control_directory: --one_frame needs control images: set "
        "control_directory (or control_path in the JSONL lines)",
        "datasets[1] (image_directory = j): fp_1f_target_index: required by --one_frame: the latent position of the "
        "target (9 for the default one-frame recipe, 1 for kisekaeichi)",
        "datasets[2] (video_jsonl_file = clips.jsonl): video_jsonl_file: video datasets cannot be cached with "
        "--one_frame (one-frame training uses image datasets with control images)",
    ]), err
    code, err = run_cli(["cache", "latents", "--dataset_config", cfg, *fake_models, "--f1"], capsys)
    assert code == 2
    image_line = ("image_directory: image datasets are cached with --one_frame only; --f1 section caching needs "
                  "video datasets (put one-frame datasets in their own config)")
    assert sorted(err.strip().splitlines()) == sorted([
        f"Error: {cfg}: datasets[0] (image_directory = i): {image_line}",
        f"Error: {cfg}: datasets[1] (image_directory = j): {image_line}",
        # the default target_frames = [1] with head extraction never makes a section (training.md §8.19)
        f"Error: {cfg}: datasets[2] (video_jsonl_file = clips.jsonl): target_frames: clips/c: crops of 1 frames "
        "(head): shorter than one section, fp_latent_window_size = 9 needs at least 37 frames (4 * 9 + 1)",
    ]), err


def test_config_errors_come_before_model_loading(ws, capsys):
    """Model files that are not models are never opened when the config is wrong."""
    videos("v", ["a"], captions=False)
    Path("vae.safetensors").write_bytes(b"junk")
    Path("sig.safetensors").write_bytes(b"junk")
    cfg = toml('[[datasets]]\nvideo_directory = "v"\ncaption_extension = ".txt"\n')
    code, err = run_cli(["cache", "latents", "--dataset_config", cfg, "--vae", "vae.safetensors", "--image_encoder",
                         "sig.safetensors"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"Error: {cfg}: datasets[0] (video_directory = v): caption_extension: "
                                        "v/a.mp4: caption file v/a.txt not found or unreadable"]
    code, err = run_cli(["cache", "text", "--dataset_config", cfg, "--text_encoder1", "vae.safetensors",
                         "--text_encoder2", "sig.safetensors"], capsys)
    assert code == 2 and "caption file v/a.txt not found" in err


# --------------------------------------------------------------------------------------------------------------
# frame extraction, fps conversion, buckets (plan.frames)


def test_round_target_frames():
    assert round_target_frames([25, 1, 24, 37, 38, 25]) == (1, 21, 25, 37)


@pytest.mark.parametrize(("mode", "count", "targets", "kw", "expected"), [
    ("head", 41, (21, 25, 45), {}, [(0, 21), (0, 25)]),
    ("chunk", 41, (21,), {}, [(0, 21)]),
    ("chunk", 27, (9, 13), {}, [(0, 9), (9, 9), (18, 9), (0, 13), (13, 13)]),
    ("slide", 30, (21,), {"frame_stride": 4}, [(0, 21), (4, 21), (8, 21)]),
    ("slide", 20, (21,), {}, []),
    ("uniform", 41, (21,), {"frame_sample": 3}, [(0, 21), (10, 21), (20, 21)]),
    ("uniform", 22, (21,), {"frame_sample": 4}, [(0, 21), (1, 21)]),  # duplicates dropped
    ("full", 27, (1,), {}, [(0, 25)]),
    ("full", 200, (1,), {"max_frames": 129}, [(0, 129)]),
    ("full", 23, (1,), {"max_frames": 19}, [(0, 17)]),
])
def test_frame_crops(mode, count, targets, kw, expected):
    assert frame_crops(mode, count, targets, **kw) == expected


def test_frame_crops_unknown_mode():
    with pytest.raises(ValueError, match="chain"):
        frame_crops("chain", 10, (1,))


@pytest.mark.parametrize(("start", "stop", "num"), [(0, 20, 3), (0, 1, 4), (0, 17, 7), (3, 100, 9), (0, 0, 2)])
def test_linspace_int_matches_numpy(start, stop, num):
    assert linspace_int(start, stop, num) == np.linspace(start, stop, num, dtype=int).tolist()


def test_fps_conversion():
    # 60 -> 30 fps keeps every other frame; 30 -> 30 keeps all; 24 -> 30 never duplicates (keeps all).
    assert list(fps_kept_frames(8, 60.0)) == [0, 2, 4, 6]
    assert list(fps_kept_frames(5, 30.0)) == [0, 1, 2, 3, 4]
    assert list(fps_kept_frames(5, 24.0)) == [0, 1, 2, 3, 4]
    # the reference accumulates the fractional position in floating point; 29.97 drops one frame in ~1000
    kept = list(fps_kept_frames(3000, 29.97))
    pos, prev, ref = 0.0, -1, []
    for i in range(3000):
        idx = int(pos)
        pos += 30.0 / 29.97
        if idx != prev:
            prev = idx
            ref.append(i)
    assert kept == ref
    assert converted_frame_count(41, None) == 41 and converted_frame_count(41, 60.0) == 21


def test_buckets():
    b = bucket_resolutions((960, 544), True)
    assert len(b) == 47 and b[0] == (352, 1472) and b[-1] == (1472, 352)
    assert len(bucket_resolutions((640, 640), True)) == 41
    assert bucket_resolutions((64, 48), True) == [(16, 192), (32, 96), (48, 64), (64, 48), (96, 32), (192, 16)]
    assert bucket_resolutions((500, 300), False) == [(500, 300)]
    assert select_bucket((128, 96), (64, 48), True) == (64, 48)
    assert select_bucket((72, 100), (64, 48), True) == (48, 64)
    assert select_bucket((1920, 1080), (960, 544), False) == (960, 544)
    # no_upscale: small images keep their size (rounded down to 16), large ones are bucketed
    assert select_bucket((100, 70), (960, 544), True, no_upscale=True) == (96, 64)
    assert select_bucket((1920, 1080), (960, 544), True, no_upscale=True) == select_bucket((1920, 1080),
                                                                                            (960, 544), True)
    assert select_bucket((100, 70), (960, 544), False, no_upscale=True) == (960, 544)  # needs enable_bucket


def test_section_counts():
    assert [num_cache_sections(f, 9) for f in (36, 37, 72, 73, 109)] == [0, 1, 1, 2, 3]
    assert [trimmed_frames(f, 5) for f in (21, 25, 41, 45)] == [21, 21, 41, 41]


def test_vanilla_sections_match_the_reference_example():
    # training.md §2.4: W=9, N=2 (73 frames, latent_f=19), saved last section first
    s1, s0 = vanilla_cache_sections(2, 9)
    assert (s1.index, s1.target_start, s1.latent_indices) == (1, 10, tuple(range(10, 19)))
    assert s1.clean_latent_indices == (0, 19) and s1.clean_latent_2x_indices == (20, 21)
    assert s1.clean_latent_4x_indices == tuple(range(22, 38)) and set(s1.context) == {None}
    assert (s0.index, s0.target_start, s0.latent_indices) == (0, 1, tuple(range(1, 10)))
    assert s0.clean_latent_indices == (0, 10) and s0.clean_latent_2x_indices == (11, 12)
    one, two, four = split_context(s0.context, f1=False)
    assert one == (10,) and two == (11, 12) and four == (*range(13, 19), *[None] * 10)
    # five sections: paddings [3, 2, 2, 1, 0]
    assert [s.clean_latent_indices[1] - s.latent_indices[0] for s in vanilla_cache_sections(5, 9)] == [9] * 5
    assert [s.latent_indices[0] for s in vanilla_cache_sections(5, 9)] == [28, 19, 19, 10, 1]


def test_f1_sections():
    secs = f1_cache_sections(3, 5)
    assert [s.index for s in secs] == [0, 1, 2]
    assert all(s.latent_indices == (20, 21, 22, 23, 24) and s.clean_latent_indices == (0, 19) for s in secs)
    assert secs[0].clean_latent_2x_indices == (17, 18) and secs[0].clean_latent_4x_indices == tuple(range(1, 17))
    one, two, four = split_context(secs[2].context, f1=True)  # target starts at 11: frames 0..10 precede it
    assert one == (10,) and two == (8, 9) and four == (*[None] * 8, *range(0, 8))


def test_one_frame_indices():
    d = one_frame_indices(9, [0], 9, False)
    assert (d.clean_latent_indices, d.latent_indices, d.zero_post) == ((0, 10), (9,), True)
    assert d.clean_latent_2x_indices == (11, 12) and d.clean_latent_4x_indices == tuple(range(13, 29))
    assert one_frame_indices(9, [0, 10], 1, True).clean_latent_indices == (0, 10)  # kisekaeichi
    assert one_frame_indices(9, [0, 1], 9, False).clean_latent_indices == (0, 1, 10)  # 1f-mc
    assert one_frame_indices(5, None, 9, False).clean_latent_indices == (0, 6)
    d = one_frame_indices(9, [0], 9, False, no_2x=True, no_4x=True)
    assert d.clean_latent_2x_indices is None and d.clean_latent_4x_indices is None


def test_cache_names_round_trip():
    assert image_cache_name("img_a", 100, 72) == "img_a_0100x0072_fp.safetensors"
    name = section_cache_name("my_clip", 0, 73, 1, 960, 544)
    assert name == "my_clip_00000-073-0001_0960x0544_fp.safetensors"
    assert crop_stem("my_clip", 21, 21) == "my_clip_00021-021"
    p = parse_cache_name(name, video=True)
    assert (p.item_key, p.width, p.height, p.start, p.length, p.section) == ("my_clip", 960, 544, 0, 73, 1)
    p = parse_cache_name("my_img_0100x0072_fp.safetensors", video=False)
    assert (p.item_key, p.width, p.height) == ("my_img", 100, 72)
    with pytest.raises(FramepackError):
        parse_cache_name("clip_fp_te.safetensors", video=True)
