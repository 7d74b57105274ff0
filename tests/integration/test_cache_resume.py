"""Crash safety and re-runs of `framepack cache latents|text` on the golden tiny dataset and models.

The kill tests run the real CLI in a subprocess and SIGKILL it at deterministic points through the
`FRAMEPACK_CACHE_KILL_AFTER` hook (half-way through writing a file, and right after one is committed);
the restart with `--skip_existing` must finish with every cache file complete and equal to a clean run's
(the reference's own caches of the same run, README §8: atol 1e-4, indices and metadata exact).
The other tests run in-process: truncated or outdated caches are redone, stale files are removed (or kept),
text caches follow caption changes and keep foreign keys, and a source that fails mid-run is reported
without stopping the others.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli import __version__
from framepack_cli.cli.app import main
from framepack_cli.engine.cache import run_latents, run_text
from framepack_cli.engine.progress import NullProgress
from framepack_cli.io.cache_format import KILL_ENV, TEMP_SUFFIX
from framepack_cli.options.cache import CacheLatentsOptions, CacheTextOptions
from tests.conftest import GOLDEN, REPO

pytestmark = pytest.mark.skipif(not (GOLDEN / "datasets").is_dir(), reason="golden datasets missing")

MODELS = ["--vae", "models/vae.safetensors", "--image_encoder", "models/sigclip_tiny.safetensors", "--device", "cpu"]
VANILLA = ["--dataset_config", "datasets/video_full.toml", *MODELS]
TEXT = ["--dataset_config", "datasets/image_1f.toml", "--text_encoder1",
        "models/text_encoder/model-00001-of-00002.safetensors", "--text_encoder2", "models/clip_l_tiny.safetensors",
        "--device", "cpu"]
# vanilla caching writes clip_a's sections last-in-time first, then clip_b, then the JSONL dataset
VIDEO_DIR = ["clip_a_00000-041-0001_0064x0048_fp.safetensors", "clip_a_00000-041-0000_0064x0048_fp.safetensors",
             "clip_b_00000-025-0000_0064x0048_fp.safetensors"]
ALL = [f"video_dir/{n}" for n in VIDEO_DIR] + [
    "video_jsonl/clip_b_00000-025-0000_0064x0048_fp.safetensors",
    "video_jsonl/clip_c_00000-021-0000_0064x0048_fp.safetensors",
]


def workdir(path: Path) -> Path:
    """A stand-in of the golden folder: its datasets/ and models/ linked, work/ fresh."""
    path.mkdir(parents=True, exist_ok=True)
    for link in ("datasets", "models"):
        (path / link).symlink_to(GOLDEN / link, target_is_directory=True)
    return path


def cli(wd: Path, args: list[str], monkeypatch) -> int:
    monkeypatch.chdir(wd)
    with pytest.raises(SystemExit) as e:
        main(["cache", "latents", *args])
    return e.value.code


def subprocess_cli(wd: Path, args: list[str], kill: str) -> subprocess.CompletedProcess:
    env = {**os.environ, KILL_ENV: kill, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "framepack_cli", "cache", "latents", *args], cwd=wd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_matches_reference(wd: Path, reference_made: frozenset | set = frozenset()) -> None:
    """Every cache of the run is complete and equal (atol 1e-4, indices and metadata exact) to the reference's;
    `reference_made` are files the reference wrote itself (no `framepack_cli.*` metadata)."""
    for rel in ALL:
        path = wd / "work" / rel
        ours = load_file(str(path))
        ref = load_file(str(GOLDEN / "cache" / "vanilla" / rel))
        assert sorted(ours) == sorted(ref), rel
        for k in ref:
            torch.testing.assert_close(ours[k], ref[k], atol=1e-4, rtol=0, msg=f"{rel}: {k}")
        with safe_open(str(path), framework="pt") as f, safe_open(str(GOLDEN / "cache" / "vanilla" / rel), "pt") as g:
            assert {k: v for k, v in f.metadata().items() if not k.startswith("framepack_cli.")} == g.metadata()
            if rel not in reference_made:
                assert f.metadata()["framepack_cli.mode"] == "vanilla"


def cache_files(wd: Path) -> list[str]:
    return sorted(str(p.relative_to(wd / "work")) for p in (wd / "work").rglob("*") if p.is_file())


def vanilla_opts(**kw) -> CacheLatentsOptions:
    return CacheLatentsOptions(dataset_config="datasets/video_full.toml", vae="models/vae.safetensors",
                               image_encoder="models/sigclip_tiny.safetensors", device="cpu", **kw)


def test_killed_run_resumes_to_a_clean_result(tmp_path, monkeypatch):
    wd = workdir(tmp_path / "killed")
    work = wd / "work"

    # Killed half-way through writing its second file: the first (clip_a's last section) is committed and
    # complete, the second exists only as a temporary file -- never as a truncated cache under a real name.
    r = subprocess_cli(wd, VANILLA, kill="2:partial")
    assert r.returncode == -signal.SIGKILL, r.stderr
    files = cache_files(wd)
    assert [f for f in files if not f.endswith(TEMP_SUFFIX)] == [f"video_dir/{VIDEO_DIR[0]}"]
    (tmp,) = [f for f in files if f.endswith(TEMP_SUFFIX)]
    assert Path(tmp).name.startswith(f".{VIDEO_DIR[1]}.")
    load_file(str(work / "video_dir" / VIDEO_DIR[0]))

    # More states a restart meets, all made by the reference: an F1 cache under a vanilla name (other
    # settings, seen from its indices), a truncated file, an up-to-date vanilla cache, a stale cache of a
    # clip no longer in the dataset; plus a text cache that latent caching must not touch.
    golden = GOLDEN / "cache"
    jsonl = work / "video_jsonl"
    assert jsonl.is_dir()  # every cache folder was created (and proven writable) before the models loaded
    shutil.copy(golden / "f1" / "video_dir" / VIDEO_DIR[2], work / "video_dir" / VIDEO_DIR[2])
    cut = jsonl / "clip_b_00000-025-0000_0064x0048_fp.safetensors"
    cut.write_bytes((golden / "vanilla" / "video_jsonl" / cut.name).read_bytes()[:-64])
    shutil.copy(golden / "vanilla" / "video_jsonl" / "clip_c_00000-021-0000_0064x0048_fp.safetensors", jsonl)
    stale = work / "video_dir" / "old_00000-041-0000_0064x0048_fp.safetensors"
    shutil.copy(work / "video_dir" / VIDEO_DIR[0], stale)  # ours, for this dataset: stale, removed
    foreign = work / "video_dir" / "ref_00000-041-0000_0064x0048_fp.safetensors"
    shutil.copy(golden / "vanilla" / "video_dir" / VIDEO_DIR[0], foreign)  # the reference's: kept
    junk = work / "video_dir" / "notes_fp.safetensors"
    junk.write_bytes(b"a user's file that happens to end in _fp.safetensors")  # kept
    te = work / "video_dir" / "clip_a_fp_te.safetensors"
    te.write_bytes(b"not a latent cache, and not ours to delete")

    # Restarted with --skip_existing: clip_a (one of two sections) and both clip_b are redone, the reference's
    # clip_c cache is accepted as it is, the temporary and stale files go; the result equals a clean run.
    sink = NullProgress()
    monkeypatch.chdir(wd)
    summary = run_latents(vanilla_opts(skip_existing=True), sink)
    assert (summary.skipped, summary.recached, summary.cached, summary.files, summary.removed, summary.failed) == (
        1, 2, 3, 4, 1, [])
    assert "2 re-cached (incomplete or made with other settings)" in sink.results[0]
    assert sink.results[0].endswith("; 1 stale cache file(s) removed; 2 other cache file(s) kept")
    not_ours = ("not written by framepack (no framepack_cli metadata: made by another tool, such as musubi-tuner, "
                "or by hand)")
    unreadable = "unreadable or incomplete, so not known to be written by framepack"
    assert sink.results[1:] == [
        "Removed stale cache file work/video_dir/old_00000-041-0000_0064x0048_fp.safetensors",
        f"Kept work/video_dir/notes_fp.safetensors: {unreadable}",
        f"Kept work/video_dir/ref_00000-041-0000_0064x0048_fp.safetensors: {not_ours}",
    ]
    assert not stale.exists() and foreign.exists() and junk.exists() and te.exists()
    foreign.unlink()
    junk.unlink()
    assert sorted(f for f in cache_files(wd) if f != "video_dir/clip_a_fp_te.safetensors") == sorted(ALL)
    assert_matches_reference(wd, reference_made={"video_jsonl/clip_c_00000-021-0000_0064x0048_fp.safetensors"})

    # Once more, with --keep_cache, a stale file and one of the other dataset: everything is up to date, nothing
    # is loaded, written or deleted.
    shutil.copy(work / "video_dir" / VIDEO_DIR[0], stale)
    other = work / "video_dir" / "other_00000-025-0000_0064x0048_fp.safetensors"
    shutil.copy(work / "video_jsonl" / "clip_b_00000-025-0000_0064x0048_fp.safetensors", other)
    stamps = {f: (work / f).stat().st_mtime_ns for f in ALL}
    sink = NullProgress()
    summary = run_latents(vanilla_opts(skip_existing=True, keep_cache=True), sink)
    assert (summary.skipped, summary.cached, summary.removed, summary.kept) == (4, 0, 0, 2) and stale.exists()
    assert sink.results[1:] == [
        "Kept work/video_dir/old_00000-041-0000_0064x0048_fp.safetensors: stale (not produced by this run), kept "
        "because of --keep_cache",
        "Kept work/video_dir/other_00000-025-0000_0064x0048_fp.safetensors: written by framepack for another dataset",
    ]
    assert not any("Loading" in m for m in sink.messages)
    assert {f: (work / f).stat().st_mtime_ns for f in ALL} == stamps

    # Without --keep_cache the other dataset's file is still kept; only this dataset's stale file goes.
    sink = NullProgress()
    summary = run_latents(vanilla_opts(skip_existing=True), sink)
    assert [p.name for p in summary.removed_files] == [stale.name] and other.exists()
    assert [(p.name, why) for p, why in summary.kept_files] == [(other.name, "written by framepack for another "
                                                                             "dataset")]


def test_kill_hook_points(tmp_path, monkeypatch):
    """Both kill points of the test hook, with the kill intercepted (a real SIGKILL is exercised above)."""
    import framepack_cli.io.cache_format as fmt

    class Killed(Exception):
        pass

    def fake_kill(pid, sig):
        assert pid == os.getpid() and sig == signal.SIGKILL
        raise Killed

    monkeypatch.setattr(fmt.os, "kill", fake_kill)
    monkeypatch.setattr(fmt, "_written", 0)
    t = {"x": torch.arange(1000, dtype=torch.float32)}
    monkeypatch.setenv(KILL_ENV, "2")
    fmt.save_cache_file(tmp_path / "a_fp.safetensors", t, {})
    with pytest.raises(Killed):
        fmt.save_cache_file(tmp_path / "b_fp.safetensors", t, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_fp.safetensors", "b_fp.safetensors"]  # b committed
    monkeypatch.setenv(KILL_ENV, "3:partial")
    with pytest.raises(Killed):
        fmt.save_cache_file(tmp_path / "c_fp.safetensors", t, {})
    (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".c_fp")]
    assert 0 < tmp.stat().st_size < (tmp_path / "a_fp.safetensors").stat().st_size
    assert fmt.remove_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_fp.safetensors", "b_fp.safetensors"]


def test_a_failing_source_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    wd = workdir(tmp_path / "w")
    frames = wd / "clips" / "bad"
    shutil.copytree(GOLDEN / "datasets" / "video_frames" / "clip_c", frames)
    (frames / "frame_0010.png").write_bytes(b"not a png")  # probing reads frame 0 only: this fails mid-decode
    (wd / "clips.jsonl").write_text('{"video_path": "clips/bad", "caption": "x"}\n'
                                    '{"video_path": "datasets/videos/clip_b.mp4", "caption": "y"}\n')
    (wd / "d.toml").write_text('[general]\nresolution = [64, 48]\nenable_bucket = true\n\n[[datasets]]\n'
                               'video_jsonl_file = "clips.jsonl"\ncache_directory = "work/j"\n'
                               'frame_extraction = "full"\nfp_latent_window_size = 5\n')
    code = cli(wd, ["--dataset_config", "d.toml", *MODELS], monkeypatch)
    out, err = capsys.readouterr()
    assert code == 2
    assert "Done in" in out and "1 items cached (1 files), 0 skipped (already cached), 1 failed" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert lines[0] == "Error: 1 item(s) could not be cached:"
    assert lines[1].startswith("Error:   bad_00000-021: clips/bad/frame_0010.png: cannot read frame image (")
    assert lines[1].endswith("; fix them and re-run with --skip_existing to cache only what is missing")
    assert cache_files(wd) == ["j/clip_b_00000-025-0000_0064x0048_fp.safetensors"]


def test_text_cache_reruns(tmp_path, monkeypatch):
    wd = workdir(tmp_path / "w")
    monkeypatch.chdir(wd)
    opts = CacheTextOptions(dataset_config="datasets/image_1f.toml", text_encoder1=TEXT[3], text_encoder2=TEXT[5],
                            device="cpu")
    run_text(opts, NullProgress())
    folder = wd / "work" / "image_1f"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["img_a_fp_te.safetensors", "img_b_fp_te.safetensors", "img_c_fp_te.safetensors"]
    reference = {n: load_file(str(GOLDEN / "cache" / "text" / "image_1f" / n)) for n in names}

    # img_a: truncated; img_b: another caption recorded, plus a key of another tool; a stale temp; a stale cache
    a = folder / names[0]
    a.write_bytes(a.read_bytes()[:100])
    b = folder / names[1]
    tensors = load_file(str(b))
    tensors["other_tool_vec_float16"] = torch.ones(3, dtype=torch.float16)
    tensors["llama_vec_float16"] = torch.zeros(2, dtype=torch.float16)  # replaced by the float32 one
    save_file(tensors, str(b), {"architecture": "framepack", "caption1": "old caption", "format_version": "1.0.1",
                                "note": "kept"})
    (folder / f".{names[2]}.123{TEMP_SUFFIX}").write_bytes(b"half")
    shutil.copy(folder / names[2], folder / "gone_fp_te.safetensors")  # ours, of an image no longer there
    (folder / "user_fp_te.safetensors").write_bytes(b"")  # not ours: kept
    before_c = (folder / names[2]).stat().st_mtime_ns

    sink = NullProgress()
    summary = run_text(CacheTextOptions(**{**opts.model_dump(), "skip_existing": True}), sink)
    assert (summary.skipped, summary.recached, summary.cached, summary.removed, summary.kept) == (1, 2, 2, 1, 1)
    assert sink.results[1:] == ["Removed stale cache file work/image_1f/gone_fp_te.safetensors",
                                "Kept work/image_1f/user_fp_te.safetensors: unreadable or incomplete, so not known to "
                                "be written by framepack"]
    (folder / "user_fp_te.safetensors").unlink()
    assert sorted(p.name for p in folder.iterdir()) == names  # temp and stale files gone
    assert (folder / names[2]).stat().st_mtime_ns == before_c
    for n in names:
        ours = load_file(str(folder / n))
        for k, v in reference[n].items():
            torch.testing.assert_close(ours[k], v, atol=1e-4, rtol=1e-4)
    merged = load_file(str(b))
    assert sorted(merged) == ["clip_l_pooler_float32", "llama_attention_mask", "llama_vec_float32",
                              "other_tool_vec_float16"]
    with safe_open(str(b), framework="pt") as f:
        meta = f.metadata()
    assert meta.pop("framepack_cli.version") == __version__ and len(meta.pop("framepack_cli.dataset")) == 16
    assert meta == {"architecture": "framepack", "caption1": "A cat sits on the window sill.",
                    "format_version": "1.0.1", "note": "kept"}


def test_one_frame_without_2x_4x_indices(tmp_path, monkeypatch):
    """`--one_frame_no_2x --one_frame_no_4x`: the same caches as the reference's minus those two index tensors."""
    wd = workdir(tmp_path / "w")
    assert cli(wd, ["--dataset_config", "datasets/image_1f.toml", *MODELS, "--one_frame", "--one_frame_no_2x",
                    "--one_frame_no_4x"], monkeypatch) == 0
    out = wd / "work" / "image_1f"
    for name in ("img_a_0100x0072_fp.safetensors", "img_b_0072x0100_fp.safetensors", "img_c_0066x0050_fp.safetensors"):
        ours = load_file(str(out / name))
        ref = load_file(str(GOLDEN / "cache" / "one_frame" / "image_1f" / name))
        assert sorted(ours) == sorted(k for k in ref if not k.startswith(("clean_latent_2x", "clean_latent_4x")))
        for k in ours:
            torch.testing.assert_close(ours[k], ref[k], atol=1e-4, rtol=0, msg=k)
        with safe_open(str(out / name), framework="pt") as f:
            assert f.metadata()["framepack_cli.one_frame_no_2x"] == "true"
            assert f.metadata()["framepack_cli.one_frame_no_4x"] == "true"


def test_a_clip_too_short_is_left_out_with_a_warning(tmp_path, monkeypatch, capsys):
    """A clip shorter than one section does not stop the run: warned about up front, listed in the summary,
    exit 0; with --strict the run is refused before any model loads, as before."""
    wd = workdir(tmp_path / "w")
    frames = wd / "clips" / "short"
    frames.mkdir(parents=True)
    for f in sorted((GOLDEN / "datasets" / "video_frames" / "clip_c").iterdir())[:20]:
        shutil.copy(f, frames / f.name)
    (wd / "clips.jsonl").write_text('{"video_path": "clips/short", "caption": "x"}\n'
                                    '{"video_path": "datasets/videos/clip_b.mp4", "caption": "y"}\n')
    (wd / "d.toml").write_text('[general]\nresolution = [64, 48]\nenable_bucket = true\n\n[[datasets]]\n'
                               'video_jsonl_file = "clips.jsonl"\ncache_directory = "work/j"\n'
                               'frame_extraction = "full"\nfp_latent_window_size = 5\n')
    reason = ("20 frames, cropped to 17: shorter than one section, fp_latent_window_size = 5 needs at least 21 "
              "frames (4 * 5 + 1)")
    line = f"d.toml: datasets[0] (video_jsonl_file = clips.jsonl): fp_latent_window_size: clips/short: {reason}"

    assert cli(wd, ["--dataset_config", "d.toml", *MODELS, "--strict"], monkeypatch) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"Error: {line}"] and out == ""
    assert not (wd / "work").exists()  # refused before anything was created or loaded

    assert cli(wd, ["--dataset_config", "d.toml", *MODELS], monkeypatch) == 0
    out, err = capsys.readouterr()
    assert f"Warning: {line}; this clip is not cached (--strict refuses the run instead)" in err.splitlines()
    lines = out.splitlines()
    assert lines[0].startswith("Done in ") and lines[0].endswith(
        ": 1 items cached (1 files), 0 skipped (already cached), 0 failed, 1 clip(s) too short (not cached)")
    assert lines[1:] == [f"Not cached (too short): clips/short: {reason}"]
    assert cache_files(wd) == ["j/clip_b_00000-025-0000_0064x0048_fp.safetensors"]


def test_full_disk_while_writing_latents_stops_the_run_with_exit_3(tmp_path, monkeypatch, capsys):
    """A write that fails (disk full) ends the run at once -- every other item would fail the same way -- in one
    line naming the file and the errno text, exit 3; the file's temporary copy is gone, the files committed
    before it are complete."""
    import builtins
    import errno

    import framepack_cli.io.cache_format as fmt

    wd = workdir(tmp_path / "w")
    calls = []

    def full_disk(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            f = builtins.open(path, *a, **k)
            f.write(b"half a cache file")
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(fmt, "open", full_disk, raising=False)
    assert cli(wd, VANILLA, monkeypatch) == 3
    out, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if ln.startswith("Error")]
    assert errors == [f"Error: cache_directory: cannot write work/video_dir/{VIDEO_DIR[1]}: No space left on device; "
                      "free some disk space or point the flag at another disk"]
    assert "Done in" not in out
    assert cache_files(wd) == [f"video_dir/{VIDEO_DIR[0]}"]  # no temporary file, the first one complete
    load_file(str(wd / "work" / "video_dir" / VIDEO_DIR[0]))
