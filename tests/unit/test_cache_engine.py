"""`framepack cache text` / `cache latents` around the encoders: empty captions, cache folders checked before any
model loads, a full disk while writing, and the writer / dataset metadata stale-file removal relies on.

The text encoders are replaced by fakes that record what they are asked to encode (no model, no torch work):
the real encoders are exercised by tests/parity/test_cache.py and tests/integration/test_cache_resume.py.
"""

from __future__ import annotations

import builtins
import errno
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import framepack_cli.models.text_encoders as te
from framepack_cli import __version__
from framepack_cli.cli.app import main
from framepack_cli.engine.cache_text import run_text
from framepack_cli.engine.progress import NullProgress
from framepack_cli.io.cache_format import cache_owner
from framepack_cli.options.cache import CacheTextOptions
from framepack_cli.options.dataset import dataset_identity, load_dataset_config


@pytest.fixture
def fake_text(tmp_path, monkeypatch):
    """A working directory with two empty 'model' files and fake text encoders; returns the prompts encoded."""
    monkeypatch.chdir(tmp_path)
    Path("te1.safetensors").write_bytes(b"")
    Path("te2.safetensors").write_bytes(b"")
    prompts: list[str] = []
    loads: list[str] = []

    def encode(prompt, *a, **k):
        prompts.append(prompt)
        mask = torch.zeros(1, 512, dtype=torch.bool)
        mask[0, : len(prompt) + 1] = True
        return torch.full((1, 512, 8), float(len(prompt))), mask, torch.zeros(1, 4)

    def tokenizers(*a, **k):
        loads.append("tokenizers")
        return None, None

    monkeypatch.setattr(te, "load_tokenizers", tokenizers)
    monkeypatch.setattr(te, "load_text_encoder1", lambda *a, **k: loads.append("te1"))
    monkeypatch.setattr(te, "load_text_encoder2", lambda *a, **k: loads.append("te2"))
    monkeypatch.setattr(te, "encode_prompt", encode)
    return prompts, loads


TEXT_ARGS = ["--text_encoder1", "te1.safetensors", "--text_encoder2", "te2.safetensors", "--device", "cpu"]


def dataset(captions: dict[str, str], cache: str = "cache", folder: str = "imgs") -> Path:
    from PIL import Image

    Path(folder).mkdir(exist_ok=True)
    for stem, caption in captions.items():
        Image.new("RGB", (32, 32)).save(f"{folder}/{stem}.png")
        Path(f"{folder}/{stem}.txt").write_text(caption)
    cfg = Path("d.toml")
    cfg.write_text(f'[[datasets]]\nimage_directory = "{folder}"\ncaption_extension = ".txt"\n'
                   f'cache_directory = "{cache}"\n')
    return cfg


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_empty_caption_is_encoded_as_it_is(fake_text, capsys):
    """The reference's text caching encodes a caption as read (an empty caption file gives ""), unlike
    inference, which replaces an empty --prompt by " ". Kept for parity with the reference trainer's caches."""
    prompts, _ = fake_text
    Path("set").mkdir()
    Path("set/v.jsonl").write_text('{"video_path": "clip", "caption": ""}\n{"video_path": "clip2", "caption": " "}\n')
    Path("set/clip").mkdir()
    Path("set/clip2").mkdir()
    cfg = dataset({"a": "", "b": "  \n", "c": "a cat"})
    cfg.write_text(cfg.read_text() + '\n[[datasets]]\nvideo_jsonl_file = "set/v.jsonl"\ncache_directory = "cv"\n')
    code, out, err = run(["cache", "text", "--dataset_config", cfg, *TEXT_ARGS], capsys)
    assert code == 0, err
    assert "Warning: 4 empty caption(s), encoded as they are (as the reference does): imgs/a.png (and 3 more)" in (
        err.splitlines())
    # caption files are stripped, JSONL captions used as written: both as the reference reads them
    assert prompts == ["", "", "a cat", "", " "]
    for path, caption in (("cache/a_fp_te.safetensors", ""), ("cache/b_fp_te.safetensors", ""),
                          ("cache/c_fp_te.safetensors", "a cat"), ("cv/clip_fp_te.safetensors", ""),
                          ("cv/clip2_fp_te.safetensors", " ")):
        with safe_open(path, framework="pt") as f:
            assert f.metadata()["caption1"] == caption
            assert f.get_tensor("llama_attention_mask").sum().item() == len(caption) + 1  # what encode_prompt gave


def test_cache_folder_is_created_before_the_models_load(fake_text, capsys, monkeypatch):
    _, loads = fake_text
    cfg = dataset({"a": "x"}, cache="new/deeper/cache")
    seen = []
    real = te.load_text_encoder1
    monkeypatch.setattr(te, "load_text_encoder1", lambda *a, **k: (seen.append(Path("new/deeper/cache").is_dir()),
                                                                     real(*a, **k))[1])
    code, out, err = run(["cache", "text", "--dataset_config", cfg, *TEXT_ARGS], capsys)
    assert code == 0, err
    assert seen == [True] and sorted(p.name for p in Path("new/deeper/cache").iterdir()) == ["a_fp_te.safetensors"]


def test_unwritable_cache_folder_is_refused_before_the_models_load(fake_text, capsys, monkeypatch):
    _, loads = fake_text
    cfg = dataset({"a": "x"}, cache="new/cache")
    import framepack_cli.io.writable as writable

    def read_only(path, *a, **k):
        if ".framepack-write-probe" in str(path):
            raise OSError(errno.EROFS, "Read-only file system")
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(writable, "open", read_only, raising=False)
    code, out, err = run(["cache", "text", "--dataset_config", cfg, *TEXT_ARGS], capsys)
    assert code == 3
    assert err.splitlines() == ["Error: d.toml: datasets[0] (image_directory = imgs): cache_directory: cannot write "
                                "new/cache: Read-only file system; choose a folder you can write to"]
    assert loads == [] and not Path("new").exists()  # nothing loaded; the folders it created are gone again

    Path("blocker").write_text("a file")
    cfg = dataset({"a": "x"}, cache="blocker")
    code, out, err = run(["cache", "text", "--dataset_config", cfg, *TEXT_ARGS], capsys)
    assert code == 2 and err.splitlines() == [
        "Error: d.toml: datasets[0] (image_directory = imgs): cache_directory: blocker exists and is not a folder"]


def test_full_disk_is_one_line_exit_3_and_leaves_no_partial_file(fake_text, capsys, monkeypatch):
    cfg = dataset({"a": "x", "b": "y", "c": "z"})
    import framepack_cli.io.cache_format as fmt

    writes = []

    class FullDisk:
        """The second cache file's temporary copy hits a full disk half-way."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            writes.append(len(data))
            if len(writes) == 2:
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(fmt, "open", lambda path, *a, **k: FullDisk(builtins.open(path, *a, **k)), raising=False)
    code, out, err = run(["cache", "text", "--dataset_config", cfg, *TEXT_ARGS], capsys)
    assert code == 3
    assert err.splitlines()[-1:] == ["Error: cache_directory: cannot write cache/b_fp_te.safetensors: No space left "
                                     "on device; free some disk space or point the flag at another disk"]
    assert [ln for ln in err.splitlines() if ln.startswith("Error")] == err.splitlines()[-1:]
    assert sorted(p.name for p in Path("cache").iterdir()) == ["a_fp_te.safetensors"]  # no temp, no partial b


def test_caches_record_writer_and_dataset(fake_text):
    cfg = dataset({"a": "x"})
    run_text(CacheTextOptions(dataset_config=str(cfg), text_encoder1="te1.safetensors",
                              text_encoder2="te2.safetensors", device="cpu"), NullProgress())
    (ds,) = load_dataset_config(cfg).datasets
    with safe_open("cache/a_fp_te.safetensors", framework="pt") as f:
        meta = f.metadata()
    assert meta == {"architecture": "framepack", "caption1": "x", "format_version": "1.0.1",
                    "framepack_cli.version": __version__, "framepack_cli.dataset": dataset_identity(ds)}
    owner = cache_owner(Path("cache/a_fp_te.safetensors"))
    assert owner.ours and owner.dataset == dataset_identity(ds)
    # the identity is the source folder's, whatever the working directory or the spelling of the path
    Path("sub").mkdir()
    Path("sub/d.toml").write_text(f'[[datasets]]\nimage_directory = "{Path.cwd() / "imgs"}"\n'
                                  'caption_extension = ".txt"\n')
    assert dataset_identity(load_dataset_config("sub/d.toml").datasets[0]) == dataset_identity(ds)
    Path("imgs2").mkdir()
    Path("sub/e.toml").write_text('[[datasets]]\nimage_directory = "imgs2"\ncaption_extension = ".txt"\n')
    (Path("imgs2") / "q.png").write_bytes(Path("imgs/a.png").read_bytes())
    (Path("imgs2") / "q.txt").write_text("q")
    assert dataset_identity(load_dataset_config("sub/e.toml").datasets[0]) != dataset_identity(ds)
