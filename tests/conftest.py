"""Shared test fixtures: paths to ../shared/golden and loaders for its tensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("FRAMEPACK_GOLDEN", REPO.parent / "shared" / "golden"))
MODELS = GOLDEN / "models"
INPUTS = GOLDEN / "inputs"
# The five model flags of generate / one-frame / kisekae on the golden single-file models.
MODEL_ARGS = [
    "--dit", str(MODELS / "dit_single.safetensors"), "--vae", str(MODELS / "vae.safetensors"),
    "--text_encoder1", str(MODELS / "llava_llama3_tiny.safetensors"),
    "--text_encoder2", str(MODELS / "clip_l_tiny.safetensors"),
    "--image_encoder", str(MODELS / "sigclip_tiny.safetensors"),
]


def golden(name: str) -> tuple[dict, dict]:
    """Tensors and JSON of a golden case, e.g. `golden("unit/dit_vanilla")`."""
    from safetensors.torch import load_file

    st = GOLDEN / f"{name}.safetensors"
    js = GOLDEN / f"{name}.json"
    tensors = load_file(str(st)) if st.exists() else {}
    meta = json.loads(js.read_text()) if js.exists() else {}
    return tensors, meta


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    """Never touch the real home or the network; restore torch's default dtype."""
    monkeypatch.setenv("FRAMEPACK_HOME", str(tmp_path / "fp_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    yield
    import sys

    if "torch" in sys.modules:
        import torch

        torch.set_default_dtype(torch.float32)


def pytest_collection_modifyitems(config, items):
    if not GOLDEN.is_dir():
        skip = pytest.mark.skip(reason=f"golden data not found at {GOLDEN}")
        for item in items:
            if "golden" in item.keywords or "parity" in str(item.fspath):
                item.add_marker(skip)
