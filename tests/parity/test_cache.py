"""Parity of `framepack cache latents` / `framepack cache text` with the reference's cache files (golden `cache/`).

Every command line recorded in `cache/cache.json` is run through our CLI, with the working directory set to
a stand-in of the golden folder (its `datasets/` and `models/` linked, `work/` fresh) exactly as the
reference ran, so the configs' relative paths and `cache_directory = "work/..."` resolve the same way. Then:
the same file names per dataset, the same tensor keys, shapes and dtypes, exact index values and reference
metadata (our extra metadata lives under `framepack_cli.*`), float tensors within atol 1e-4 of the stored
reference tensors, masks exact. Also: decoded frames against `datasets.json` md5s, and
`check_cache_compatible` on our caches and on the reference's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from framepack_cli.cli.app import main
from framepack_cli.engine.cache_latents import run_latents
from framepack_cli.engine.progress import NullProgress
from framepack_cli.errors import FramepackError
from framepack_cli.io.cache_format import META_PREFIX, cache_settings, check_cache_compatible
from framepack_cli.io.video_frames import read_frames
from framepack_cli.options.cache import CacheLatentsOptions
from framepack_cli.plan.cache_names import parse_cache_name
from tests.conftest import GOLDEN

CACHE = GOLDEN / "cache"
MANIFEST = json.loads((CACHE / "cache.json").read_text()) if (CACHE / "cache.json").is_file() else {"runs": [],
                                                                                                     "files": {}}
RUNS = MANIFEST["runs"]
TOL = {"atol": 1e-4, "rtol": 0.0}


def _workdir_name(run: dict) -> str:
    return run["mode"]  # the two text runs share a folder, as they share the reference's cache directories


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Run every recorded command line once; returns {mode: working directory}."""
    root = tmp_path_factory.mktemp("golden_cache_runs")
    dirs: dict[str, Path] = {}
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(root / "hf_home"))
        for run in RUNS:
            name = _workdir_name(run)
            wd = dirs.get(name)
            if wd is None:
                wd = dirs[name] = root / name
                wd.mkdir()
                for link in ("datasets", "models"):
                    (wd / link).symlink_to(GOLDEN / link, target_is_directory=True)
            command = ["cache", "latents" if run["entry"].startswith("latent") else "text", *run["argv"]]
            os.chdir(wd)
            try:
                with pytest.raises(SystemExit) as e:
                    main(command)
            finally:
                os.chdir(cwd)
            assert e.value.code == 0, f"{command} exited with {e.value.code}"
    return dirs


def _ids(run: dict) -> str:
    return f"{run['mode']}-{Path(run['argv'][1]).stem}"


@pytest.mark.parametrize("run", RUNS, ids=[_ids(r) for r in RUNS])
def test_same_file_names(run, workdirs):
    suffix = "_fp_te.safetensors" if run["mode"] == "text" else "_fp.safetensors"
    for dataset, names in run["produced"].items():
        folder = workdirs[_workdir_name(run)] / "work" / dataset
        ours = sorted(p.name for p in folder.iterdir() if p.name.endswith(suffix) and
                      (suffix != "_fp.safetensors" or not p.name.endswith("_fp_te.safetensors")))
        assert ours == sorted(names), dataset
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


def _full_reference(key: str) -> dict[str, torch.Tensor] | None:
    """Tensors of a golden cache file: the stored file, or its entries in the `.light` manifest file."""
    mode, dataset, name = key.split("/")[1:]
    path = CACHE / mode / dataset / name
    if path.is_file():
        return load_file(str(path))
    light = CACHE / mode / f"{dataset}.light.safetensors"
    if light.is_file():
        stored = load_file(str(light))
        return {k.split("/", 1)[1]: v for k, v in stored.items() if k.startswith(name + "/")}
    return None


def _embedding_source(key: str) -> Path:
    """A fully stored golden file of the same clip with the same first frame (image embeddings are omitted
    from the `.light` files; README §8.2: identical for crops that start at frame 0)."""
    name = key.rsplit("/", 1)[1]
    want = parse_cache_name(name, video=True)
    for other, info in MANIFEST["files"].items():
        if info["stored"] != "full file":
            continue
        cand = parse_cache_name(other.rsplit("/", 1)[1], video=True)
        if cand.item_key == want.item_key and cand.start == want.start == 0 and "video_" in other:
            return CACHE / Path(other).relative_to("cache")
    raise AssertionError(f"no fully stored cache of the same clip for {key}")


@pytest.mark.parametrize("key", sorted(MANIFEST["files"]))
def test_cache_file_matches_reference(key, workdirs):
    info = MANIFEST["files"][key]
    mode, dataset, name = key.split("/")[1:]
    ours_path = workdirs[mode] / "work" / dataset / name
    ours = load_file(str(ours_path))
    with safe_open(str(ours_path), framework="pt") as f:
        meta = f.metadata()

    assert sorted(ours) == sorted(info["tensors"])
    reference_meta = {k: v for k, v in meta.items() if not k.startswith(META_PREFIX)}
    assert reference_meta == info["metadata"]
    # on top of the reference's metadata: the writer and the dataset (latent caches: and their settings)
    ours_meta = {k for k in meta if k.startswith(META_PREFIX)}
    assert {META_PREFIX + "version", META_PREFIX + "dataset"} <= ours_meta
    if mode == "text":
        assert ours_meta == {META_PREFIX + "version", META_PREFIX + "dataset"}

    ref = _full_reference(key)
    assert ref is not None
    for k, spec in info["tensors"].items():
        t = ours[k]
        assert list(t.shape) == spec["shape"] and str(t.dtype).removeprefix("torch.") == spec["dtype"], k
        if spec.get("values") is not None:
            assert t.tolist() == spec["values"], k
        if t.dtype == torch.bool:
            assert torch.equal(t, ref[k]), k
            continue
        if spec.get("abs_mean") is not None:
            assert abs(t.abs().mean().item() - spec["abs_mean"]) < 1e-4, k
        if k in ref:
            torch.testing.assert_close(t, ref[k], **TOL, msg=k)
        else:
            assert k.startswith("image_embeddings_")
            full = load_file(str(_embedding_source(key)))
            torch.testing.assert_close(t, full[k], **TOL, msg=k)


def _md5(frames) -> str:
    h = hashlib.md5()
    for f in frames:
        h.update(f.tobytes())
    return h.hexdigest()


def test_decoded_frames_match_the_reference():
    info = json.loads((GOLDEN / "datasets" / "datasets.json").read_text())
    for clip in info["videos"].values():
        frames = read_frames(GOLDEN / clip["file"])
        assert len(frames) == clip["frames"] and frames[0].shape == (*clip["hw"], 3)
        assert _md5(frames) == clip["decoded_rgb_md5"], clip["file"]
    png = info["png_clip"]
    frames = read_frames(GOLDEN / png["dir"])
    assert len(frames) == png["frames"] and _md5(frames) == png["rgb_md5"]


# --------------------------------------------------------------------------------------------------------------
# check_cache_compatible (the future trainer's guard) and --skip_existing on an up-to-date cache


def _ours(workdirs, mode: str, dataset: str, name: str) -> Path:
    return workdirs[mode] / "work" / dataset / name


VANILLA_A0 = "clip_a_00000-041-0000_0064x0048_fp.safetensors"


def test_compatible_caches_pass(workdirs):
    check_cache_compatible(_ours(workdirs, "vanilla", "video_dir", VANILLA_A0),
                           {"mode": "vanilla", "latent_window_size": 5, "resolution": [64, 48], "enable_bucket": True,
                            "bucket_no_upscale": False})
    check_cache_compatible(_ours(workdirs, "f1", "video_dir", VANILLA_A0), {"mode": "f1", "latent_window_size": 5})
    check_cache_compatible(_ours(workdirs, "one_frame", "image_1f", "img_a_0100x0072_fp.safetensors"),
                           {"mode": "one_frame", "latent_window_size": 5, "one_frame_no_2x": False,
                            "one_frame_no_4x": False, "resolution": (64, 48)})


def test_incompatible_cache_is_refused_with_every_reason(workdirs):
    path = _ours(workdirs, "vanilla", "video_dir", VANILLA_A0)
    with pytest.raises(FramepackError) as e:
        check_cache_compatible(path, {"mode": "f1", "latent_window_size": 9, "resolution": 960})
    assert e.value.message.splitlines() == [
        f"{path}: cached with vanilla sections (no --f1 / --one_frame), but training expects F1 sections (--f1)",
        f"{path}: cached with fp_latent_window_size = 5, but training expects fp_latent_window_size = 9",
        f"{path}: cached with resolution 64x48, but training expects resolution 960x960",
    ]
    assert "framepack cache latents" in e.value.hint
    path = _ours(workdirs, "one_frame", "image_1f", "img_b_0072x0100_fp.safetensors")
    with pytest.raises(FramepackError, match=r"cached with 2x indices \(no --one_frame_no_2x\), but training "
                                             r"expects --one_frame_no_2x"):
        check_cache_compatible(path, {"one_frame_no_2x": True})


def test_reference_caches_are_checked_from_their_indices():
    """Caches made by the reference carry no settings metadata: mode and window come from the indices."""
    vanilla = CACHE / "vanilla" / "video_dir" / VANILLA_A0
    f1 = CACHE / "f1" / "video_dir" / "clip_a_00000-041-0001_0064x0048_fp.safetensors"
    one = CACHE / "one_frame" / "image_1f" / "img_a_0100x0072_fp.safetensors"
    assert cache_settings(vanilla) == {"mode": "vanilla", "latent_window_size": "5"}
    assert cache_settings(f1) == {"mode": "f1", "latent_window_size": "5"}
    assert cache_settings(one) == {"mode": "one_frame", "latent_window_size": "5", "one_frame_no_2x": "false",
                                   "one_frame_no_4x": "false"}
    check_cache_compatible(vanilla, {"mode": "vanilla", "latent_window_size": 5, "resolution": (960, 544)})
    with pytest.raises(FramepackError, match="cached with F1 sections"):
        check_cache_compatible(f1, {"mode": "vanilla"})
    with pytest.raises(FramepackError, match="cached with one-frame images"):
        check_cache_compatible(one, {"mode": "f1"})


def test_check_cache_compatible_errors(tmp_path, workdirs):
    with pytest.raises(ValueError, match="unknown cache setting 'latent_window'"):
        check_cache_compatible(CACHE / "vanilla" / "video_dir" / VANILLA_A0, {"latent_window": 9})
    with pytest.raises(FramepackError, match="cache file not found"):
        check_cache_compatible(tmp_path / "nope_fp.safetensors", {"mode": "vanilla"})
    cut = tmp_path / VANILLA_A0
    data = _ours(workdirs, "vanilla", "video_dir", VANILLA_A0).read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(FramepackError, match="truncated"):
        check_cache_compatible(cut, {"mode": "vanilla"})
    text = CACHE / "text" / "video_dir" / "clip_a_fp_te.safetensors"
    with pytest.raises(FramepackError, match="not a FramePack latent cache"):
        check_cache_compatible(text, {"mode": "vanilla"})


def test_skip_existing_leaves_an_up_to_date_cache_alone(workdirs, tmp_path, monkeypatch):
    src = workdirs["vanilla"]
    wd = tmp_path / "copy"
    wd.mkdir()
    for link in ("datasets", "models"):
        (wd / link).symlink_to(GOLDEN / link, target_is_directory=True)
    shutil.copytree(src / "work", wd / "work")
    # files only: the write probe of each cache folder (created and removed before any model loads) touches the
    # folders' own times
    before = {p: p.stat().st_mtime_ns for p in (wd / "work").rglob("*") if p.is_file()}
    monkeypatch.chdir(wd)
    opts = CacheLatentsOptions(dataset_config="datasets/video_full.toml", vae="models/vae.safetensors",
                               image_encoder="models/sigclip_tiny.safetensors", device="cpu", skip_existing=True)
    sink = NullProgress()
    summary = run_latents(opts, sink)
    assert (summary.cached, summary.skipped, summary.files, summary.failed) == (0, 4, 0, [])
    assert sink.items_total == sink.items_done == 4
    assert not any("Loading" in m for m in sink.messages)  # nothing to do: no model is loaded
    assert {p: p.stat().st_mtime_ns for p in (wd / "work").rglob("*") if p.is_file()} == before
    assert re.search(r"0 items cached \(0 files\), 4 skipped", sink.results[0])  # the summary is on stdout


def test_batched_encoding_matches_reference(tmp_path, monkeypatch):
    """With batch_size = 2, clip_c (21 frames) and clip_b (25, trimmed to 21) of the JSONL dataset share a bucket
    and an encoded length, so one VAE call encodes both; the caches still match the reference's."""
    import framepack_cli.engine.cache_latents as engine

    wd = tmp_path / "w"
    wd.mkdir()
    for link in ("datasets", "models"):
        (wd / link).symlink_to(GOLDEN / link, target_is_directory=True)
    (wd / "d.toml").write_text('[general]\nresolution = [64, 48]\nbatch_size = 2\nenable_bucket = true\n\n'
                               '[[datasets]]\nvideo_jsonl_file = "datasets/videos.jsonl"\n'
                               'cache_directory = "work/video_jsonl"\nframe_extraction = "full"\n'
                               "fp_latent_window_size = 5\n")
    sizes = []
    real = engine.encode_sections
    monkeypatch.setattr(engine, "encode_sections", lambda batch, *a, **k: sizes.append(len(batch)) or real(batch, *a,
                                                                                                             **k))
    monkeypatch.chdir(wd)
    with pytest.raises(SystemExit) as e:
        main(["cache", "latents", "--dataset_config", "d.toml", "--vae", "models/vae.safetensors", "--image_encoder",
              "models/sigclip_tiny.safetensors", "--device", "cpu"])
    assert e.value.code == 0 and sizes == [2]
    for name in ("clip_b_00000-025-0000_0064x0048_fp.safetensors", "clip_c_00000-021-0000_0064x0048_fp.safetensors"):
        ours = load_file(str(wd / "work" / "video_jsonl" / name))
        ref = load_file(str(CACHE / "vanilla" / "video_jsonl" / name))
        assert sorted(ours) == sorted(ref)
        for k in ref:
            torch.testing.assert_close(ours[k], ref[k], **TOL, msg=k)
