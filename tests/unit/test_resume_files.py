"""`framepack_cli.options.resume`: finding checkpoints and fingerprinting model files (no torch, no models)."""

from __future__ import annotations

import json
import os
import struct

import pytest

from framepack_cli.options.resume import file_fingerprint, find_checkpoint, model_mismatch, read_checkpoint


def fake_safetensors(path, meta):
    header = json.dumps({"__metadata__": meta}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_missing_path_and_non_checkpoint_files_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--resume: .*nope not found; give a checkpoint"):
        find_checkpoint(str(tmp_path / "nope"))
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x01")
    with pytest.raises(ValueError, match=r"is not a resume checkpoint \(not a safetensors file\)"):
        read_checkpoint(bad)
    other = fake_safetensors(tmp_path / "y.safetensors", {"format": "pt"})
    with pytest.raises(ValueError, match=r"is not a framepack resume checkpoint"):
        read_checkpoint(other)


def test_a_batch_record_hides_its_jobs_checkpoints(tmp_path):
    job = fake_safetensors(tmp_path / ".a.resume.safetensors", {})
    alone = fake_safetensors(tmp_path / ".b.resume.safetensors", {})
    batch = tmp_path / ".jobs.txt.batch.resume.json"
    batch.write_text(json.dumps({"jobs": {"jobs.txt line 1": {"checkpoint": job.name, "files": None}}}))
    os.utime(alone, (1, 1))
    path, note = find_checkpoint(str(tmp_path))
    assert path == batch
    assert note == (f"Resuming {batch}, the newest of 2 checkpoints in {tmp_path} (also there: {alone.name}); "
                    "pass one to --resume to pick another")


def test_fingerprint_is_size_and_header(tmp_path):
    a = fake_safetensors(tmp_path / "m.safetensors", {"k": "v"})
    with open(a, "ab") as f:
        f.write(b"\0" * 8)
    rec = {"dit": [file_fingerprint(a)]}
    assert model_mismatch(rec, {"dit": str(a)}) is None
    with open(a, "r+b") as f:  # same size, another byte in the tensor data: the header still matches
        f.seek(-1, 2)
        f.write(b"\1")
    assert model_mismatch(rec, {"dit": str(a)}) is None
    fake_safetensors(a, {"k": "w"})
    with open(a, "ab") as f:
        f.write(b"\0" * 8)
    assert model_mismatch(rec, {"dit": str(a)}) == (
        f"--resume: --dit {a} is not the file the checkpoint was made with (its header differs); pass --dit with "
        f"the original file ({a})")
