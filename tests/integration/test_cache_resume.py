"""Crash safety and re-runs of `framepack cache latents|text` on the golden tiny dataset and models.

The kill tests run the real CLI (`python -m framepack_cli cache latents`) in a subprocess and SIGKILL it
at a chosen point of its real work -- while a cache file's temporary copy is being written, or between two
committed files -- found by watching the cache folders (`kill_when`); nothing in framepack helps. The
restart with `--skip_existing` must finish with every cache file complete and equal to a clean run's (the
reference's own caches of the same run, README §8: atol 1e-4, indices and metadata exact).
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
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli import __version__
from framepack_cli.cli.app import main
from framepack_cli.engine.cache_latents import run_latents
from framepack_cli.engine.cache_text import run_text
from framepack_cli.engine.progress import NullProgress
from framepack_cli.io.cache_format import TEMP_SUFFIX
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


SLICE_S = 0.0005  # how long the watched run goes on between two looks at its cache folders ...
WRITING_SLICE_S = 0.0001  # ... and once it writes cache files (a temporary file may live for a millisecond)
KILL_TIMEOUT_S = 300.0
KILL_ATTEMPTS = 5


def kill_when(wd: Path, args: list[str], at: Callable[[list[str]], bool], missed: Callable[[list[str]], bool],
              what: str) -> list[str]:
    """Run `framepack cache latents ARGS` in a subprocess and SIGKILL it the first time the files under work/
    (`cache_files`, temporary ones included) satisfy `at`; returns those files.

    The run goes on in short slices (shorter once it writes files): it is stopped (SIGSTOP, waited for until it
    is), its cache folders are listed, and it is continued. It runs at the lowest priority on the watcher's CPU,
    so that on a busy machine it does not go on for long while the watcher waits for a CPU. A stopped process
    writes nothing, so the state `at` saw is the state it is killed in. When `missed` says the run went past
    the point between two looks (a kill point inside one file's write can be a millisecond), work/ is cleared
    and the run is repeated; after `KILL_ATTEMPTS` misses, or when the run ends first, the test fails, saying so.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    seen: list[list[str]] = []
    cpu = min(os.sched_getaffinity(0))
    mask = os.sched_getaffinity(0)

    def low_priority_on_one_cpu() -> None:
        os.sched_setaffinity(0, {cpu})
        os.nice(19)

    os.sched_setaffinity(0, {cpu})  # this thread, until the end: the run goes on only while the watcher sleeps
    try:
        return _kill_when(wd, args, at, missed, what, env, seen, low_priority_on_one_cpu)
    finally:
        os.sched_setaffinity(0, mask)


def _kill_when(wd, args, at, missed, what, env, seen, preexec) -> list[str]:
    for _ in range(KILL_ATTEMPTS):
        shutil.rmtree(wd / "work", ignore_errors=True)
        log = wd / "stderr.txt"
        with open(log, "wb") as err:
            p = subprocess.Popen([sys.executable, "-m", "framepack_cli", "cache", "latents", *args], cwd=wd, env=env,
                                 stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec)
        status = None
        try:
            deadline = time.monotonic() + KILL_TIMEOUT_S
            files: list[str] = []
            while time.monotonic() < deadline:
                time.sleep(WRITING_SLICE_S if files else SLICE_S)
                os.kill(p.pid, signal.SIGSTOP)
                _, status = os.waitpid(p.pid, os.WUNTRACED)
                if not os.WIFSTOPPED(status):
                    break  # it ended by itself (and is reaped)
                status = None
                files = cache_files(wd)
                if at(files):
                    os.kill(p.pid, signal.SIGKILL)
                    _, status = os.waitpid(p.pid, 0)
                    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
                    return files
                if missed(files):
                    seen.append(files)
                    break
                os.kill(p.pid, signal.SIGCONT)
            else:
                pytest.fail(f"{what}: not reached within {KILL_TIMEOUT_S:.0f}s; files: {cache_files(wd)}")
        finally:
            if status is None:  # still running (missed, timed out or failed): end it
                p.kill()
                os.waitpid(p.pid, 0)
            p.returncode = -1  # reaped here, not by Popen
        if status is not None:
            pytest.fail(f"{what}: the run ended (wait status {status}) before that point; files: "
                        f"{cache_files(wd)}; stderr: {log.read_text()[-2000:]}")
    pytest.fail(f"{what}: the run went past that point between two looks {KILL_ATTEMPTS} times; files seen "
                f"right after: {seen}")


def committed(files: list[str]) -> list[str]:
    return [f for f in files if not f.endswith(TEMP_SUFFIX)]


def temporary(files: list[str]) -> list[str]:
    return [f for f in files if f.endswith(TEMP_SUFFIX)]


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
    work = wd / "work"
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()) if work.is_dir() else []


def vanilla_opts(**kw) -> CacheLatentsOptions:
    return CacheLatentsOptions(dataset_config="datasets/video_full.toml", vae="models/vae.safetensors",
                               image_encoder="models/sigclip_tiny.safetensors", device="cpu", **kw)


def test_killed_run_resumes_to_a_clean_result(tmp_path, monkeypatch):
    wd = workdir(tmp_path / "killed")
    work = wd / "work"

    # Killed while writing its second file: the first (clip_a's last section) is committed and complete, the
    # second exists only as a temporary file -- never as a truncated cache under a real name.
    first = [f"video_dir/{VIDEO_DIR[0]}"]
    files = kill_when(wd, VANILLA, at=lambda fs: committed(fs) == first and len(temporary(fs)) == 1,
                      missed=lambda fs: len(committed(fs)) > 1, what="killing the run while it writes its 2nd file")
    assert committed(cache_files(wd)) == first
    (tmp,) = temporary(files)
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


def test_run_killed_between_two_files_resumes_with_what_it_committed(tmp_path, monkeypatch):
    """Killed after the first dataset's last file was committed and before the second dataset's first one is
    begun: the restart keeps the three committed files as they are and caches only the second dataset."""
    wd = workdir(tmp_path / "between")
    work = wd / "work"
    done = sorted(f"video_dir/{n}" for n in VIDEO_DIR)
    files = kill_when(wd, VANILLA, at=lambda fs: fs == done, missed=lambda fs: len(fs) > len(done),
                      what="killing the run between its 3rd and 4th file")
    assert files == done and cache_files(wd) == done and (work / "video_jsonl").is_dir()
    stamps = {f: (work / f).stat().st_mtime_ns for f in done}
    for f in done:
        load_file(str(work / f))

    sink = NullProgress()
    monkeypatch.chdir(wd)
    summary = run_latents(vanilla_opts(skip_existing=True), sink)
    assert (summary.skipped, summary.recached, summary.cached, summary.files, summary.removed, summary.failed) == (
        2, 0, 2, 2, 0, [])
    assert {f: (work / f).stat().st_mtime_ns for f in done} == stamps
    assert cache_files(wd) == sorted(ALL)
    assert_matches_reference(wd)


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
