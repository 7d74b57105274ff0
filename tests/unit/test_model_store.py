"""Model resolution (`framepack_cli.models.store`) on hand-made hub-cache layouts: order of the places, --f1,
incomplete shard sets, alternatives (Comfy-Org single files), and the catalog's download commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from framepack_cli.models.store import resolve_models, scan_places, store_places
from framepack_cli.plan.model_catalog import COMPONENTS, download_command, path_matches

SHA = "f" * 40


def put(cache: Path, repo: str, files: dict[str, bytes], sha: str = SHA) -> Path:
    """Write `files` as huggingface_hub lays a snapshot out (blobs, snapshot symlinks, refs/main)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / sha
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        blob = root / "blobs" / f"{abs(hash((repo, path))):x}"
        blob.write_bytes(data)
        link = snap / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(sha)
    return snap


def sharded(n: int = 2, drop: int | None = None) -> dict[str, bytes]:
    names = [f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = {"weight_map": {f"k{i}": name for i, name in enumerate(names)}}
    files = {"config.json": b"{}", "diffusion_pytorch_model.safetensors.index.json": json.dumps(index).encode()}
    files.update({name: b"x" for i, name in enumerate(names) if i != drop})
    return files


def test_places_in_order(tmp_path):
    places = store_places(tmp_path / "mine")
    assert places == [(tmp_path / "mine", "--models_dir"), (tmp_path / "fp_home" / "models", "$FRAMEPACK_HOME"),
                      (tmp_path / "hf_home" / "hub", "HF cache")]


def test_f1_picks_the_f1_dit_and_models_dir_wins(tmp_path):
    home = tmp_path / "fp_home" / "models"
    van = put(home, "lllyasviel/FramePackI2V_HY", sharded(3))
    f1 = put(home, "lllyasviel/FramePack_F1_I2V_HY_20250503", sharded(2))
    res = resolve_models(["--dit"])
    assert res.found["--dit"].path == van / "diffusion_pytorch_model-00001-of-00003.safetensors"
    res = resolve_models(["--dit"], f1=True)
    assert res.found["--dit"].path == f1 / "diffusion_pytorch_model-00001-of-00002.safetensors"
    assert res.found["--dit"].place == "$FRAMEPACK_HOME"
    mine = put(tmp_path / "mine", "lllyasviel/FramePack_F1_I2V_HY_20250503", sharded(2))
    res = resolve_models(["--dit"], f1=True, models_dir=tmp_path / "mine")
    assert res.found["--dit"].path.parent == mine and res.found["--dit"].place == "--models_dir"
    assert res.line() == f"Models: --dit {mine / 'diffusion_pytorch_model-00001-of-00002.safetensors'} (--models_dir)"


def test_incomplete_shard_set_is_not_found(tmp_path):
    put(tmp_path / "fp_home" / "models", "lllyasviel/FramePackI2V_HY", sharded(3, drop=2))
    res = resolve_models(["--dit"])
    assert res.missing == ["dit"] and res.command == "framepack download --components dit"


def test_alternatives_and_hf_cache(tmp_path):
    hf = tmp_path / "hf_home" / "hub"
    snap = put(hf, "Comfy-Org/HunyuanVideo_repackaged", {
        "split_files/text_encoders/llava_llama3_fp16.safetensors": b"x",
        "split_files/text_encoders/clip_l.safetensors": b"x"})
    ie = put(hf, "Kijai/HunyuanVideo_comfy", {"FramePackI2V_HY_bf16.safetensors": b"x"})
    res = resolve_models(["--text_encoder1", "--text_encoder2", "--dit", "--vae"])
    assert res.found["--text_encoder1"].path == snap / "split_files/text_encoders/llava_llama3_fp16.safetensors"
    assert res.found["--text_encoder2"].place == "HF cache"
    assert res.found["--dit"].path == ie / "FramePackI2V_HY_bf16.safetensors"
    # tokenizers are missing too, so the command fetches them with the VAE
    assert res.missing == ["vae"] and res.command == "framepack download --components vae,tokenizers"
    assert {f.component for f in scan_places(store_places())} == {"dit", "text_encoder1", "text_encoder2"}


def test_download_commands():
    assert download_command(["dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizers"]) == \
        "framepack download"
    assert download_command(["dit"], f1=True, models_dir="/a b") == \
        "framepack download --variant f1 --components dit --models_dir '/a b'"


@pytest.mark.parametrize("path, pattern, ok", [
    ("tokenizer/vocab.json", "tokenizer/*", True),
    ("tokenizer/x/vocab.json", "tokenizer/*", False),
    ("diffusion_pytorch_model-00001-of-00003.safetensors", "diffusion_pytorch_model-*-of-*.safetensors", True),
    ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model-*-of-*.safetensors", False),
])
def test_patterns(path, pattern, ok):
    assert path_matches(path, pattern) is ok


def test_catalog_kinds_match_flags():
    for comp in COMPONENTS.values():
        assert (comp.flag is None) == (comp.kind is None)
        if comp.flag:
            assert comp.flag == "--" + comp.kind
