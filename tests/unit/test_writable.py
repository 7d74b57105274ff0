"""The output-folder write probe and the one-line write errors (exit code 3)."""

from __future__ import annotations

import errno
import os

import pytest

from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.io.writable import ensure_writable_dir, remove_created, resource_error_for


def test_creates_missing_folders_and_reports_the_top_one(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    top = ensure_writable_dir(target, "--save_path")
    assert target.is_dir() and top == tmp_path / "a"
    assert list(target.iterdir()) == []  # the probe file is gone
    assert remove_created(target, top) is True
    assert not (tmp_path / "a").exists()


def test_existing_folder_is_not_reported_as_created(tmp_path):
    assert ensure_writable_dir(tmp_path, "--save_path") is None
    assert remove_created(tmp_path, None) is False and tmp_path.is_dir()


def test_remove_created_keeps_a_folder_with_files(tmp_path):
    target = tmp_path / "new"
    top = ensure_writable_dir(target, "--save_path")
    (target / "video.mp4").write_bytes(b"x")
    assert remove_created(target, top) is False
    assert (target / "video.mp4").exists()


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(FramepackError, match=r"^--save_path: .*f\.txt is a file, expected a folder$") as e:
        ensure_writable_dir(f, "--save_path")
    assert e.value.exit_code == 2
    with pytest.raises(FramepackError, match="a parent is a file"):
        ensure_writable_dir(f / "sub", "--save_path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_a_resource_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ResourceError, match="--save_path: cannot write"):
            ensure_writable_dir(ro, "--save_path")
    finally:
        ro.chmod(0o700)


def test_probe_failure_is_exit_3_and_undoes_the_creation(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def full_disk(path, *a, **k):
        if ".framepack-write-probe" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", full_disk)
    with pytest.raises(ResourceError) as e:
        ensure_writable_dir(tmp_path / "out", "--save_path")
    assert str(e.value.message) == f"--save_path: cannot write {tmp_path / 'out'}: No space left on device"
    assert e.value.hint == "free some disk space or point the flag at another disk"
    assert e.value.exit_code == 3
    assert not (tmp_path / "out").exists()


def test_resource_error_for_names_flag_path_and_errno_text():
    err = resource_error_for(OSError(errno.EACCES, "Permission denied"), "--output_dir", "/x/y")
    assert err.message == "--output_dir: cannot write /x/y: Permission denied"
    assert err.hint == "choose a folder you can write to"
