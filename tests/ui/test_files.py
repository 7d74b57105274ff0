"""Uploads under generated names and the served-path check of `framepack ui` (framepack_cli.ui.files)."""

from __future__ import annotations

import os
import re

import pytest

from framepack_cli.errors import FramepackError
from framepack_cli.ui.files import resolve_allowed, sniff_extension, store_upload
from tests.conftest import INPUTS

pytestmark = pytest.mark.ui


def test_upload_gets_a_generated_name_and_the_extension_of_its_content(tmp_path):
    crafted = tmp_path / "passwd.exe"
    crafted.write_bytes((INPUTS / "start.png").read_bytes())
    uploads = tmp_path / "app" / "uploads"
    stored = store_upload(crafted, uploads)
    assert stored.parent == uploads
    assert re.fullmatch(r"[0-9a-f]{32}\.png", stored.name)
    assert stored.read_bytes() == crafted.read_bytes()
    assert sorted(p.name for p in uploads.iterdir()) == [stored.name]  # no temp file left
    assert store_upload(crafted, uploads) != stored  # a new name each time


@pytest.mark.parametrize(("head", "ext"), [
    (b"\xff\xd8\xff\xe0" + b"\0" * 12, ".jpg"), (b"RIFF\0\0\0\0WEBPVP8 ", ".webp"), (b"GIF89a" + b"\0" * 10, ".gif"),
    (b"BM" + b"\0" * 14, ".bmp"), (b"<?php echo 1; ?>", None), (b"", None),
])
def test_sniff_extension(head, ext):
    assert sniff_extension(head) == ext


def test_an_upload_that_is_not_an_image_is_refused(tmp_path):
    bad = tmp_path / "cat.png"
    bad.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(FramepackError) as e:
        store_upload(bad, tmp_path / "uploads", "Start image")
    assert e.value.message == "Start image: the uploaded file is not a PNG, JPEG, WebP, BMP, GIF or TIFF image"
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


@pytest.fixture
def roots(tmp_path):
    uploads, save = tmp_path / "save" / ".framepack-ui" / "uploads", tmp_path / "save"
    uploads.mkdir(parents=True)
    (save / "a.mp4").write_bytes(b"v")
    (uploads / "u.png").write_bytes(b"p")
    (tmp_path / "secret.txt").write_text("secret")
    return uploads, save


def test_files_inside_the_roots_resolve(roots):
    uploads, save = roots
    assert resolve_allowed(save / "a.mp4", [uploads, save]) == (save / "a.mp4").resolve()
    assert resolve_allowed("u.png", [uploads, save]) == (uploads / "u.png").resolve()  # relative: the first root


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "u.png\x00.mp4", "", "sub/../../secret.txt"])
def test_crafted_names_are_refused(roots, name):
    uploads, save = roots
    with pytest.raises(FramepackError, match=r"^file: .*refused"):
        resolve_allowed(name, [uploads, save])


def test_a_symlink_escaping_the_roots_is_refused(roots, tmp_path):
    uploads, save = roots
    os.symlink(tmp_path / "secret.txt", save / "link.mp4")
    os.symlink(tmp_path, uploads / "dir")
    with pytest.raises(FramepackError, match="outside the app's uploads and --save_path"):
        resolve_allowed(save / "link.mp4", [uploads, save])
    with pytest.raises(FramepackError, match="outside the app's uploads and --save_path"):
        resolve_allowed("dir/secret.txt", [uploads, save])


def test_a_sibling_folder_with_the_same_prefix_is_outside(tmp_path):
    (tmp_path / "save").mkdir()
    (tmp_path / "save-other").mkdir()
    (tmp_path / "save-other" / "x.mp4").write_bytes(b"")
    with pytest.raises(FramepackError, match="outside"):
        resolve_allowed(tmp_path / "save-other" / "x.mp4", [tmp_path / "save"])
