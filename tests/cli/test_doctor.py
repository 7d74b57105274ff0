"""`framepack doctor`: the machine report, its `--json`, the planned memory settings with a fake GPU, and the
models listed from a folder of golden files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framepack_cli.cli.app import main
from framepack_cli.engine import doctor
from framepack_cli.engine import memory_plan as mp
from tests.conftest import MODELS

GiB = 2**30
KEYS = {"torch", "gpus", "ram", "disk", "attention", "video", "memory", "models", "stored"}


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_json_parses_and_has_every_fact(tmp_path, capsys):
    code, out, _ = cli(["doctor", "--json", "--save_path", tmp_path / "not" / "yet"], capsys)
    assert code == 0
    facts = json.loads(out)  # stdout is the JSON object alone
    assert set(facts) == KEYS
    assert set(facts["torch"]) == {"torch", "cuda", "driver"}
    assert set(facts["ram"]) == {"total", "available"} and facts["ram"]["total"] > 0
    assert facts["disk"]["output"]["path"] == str(tmp_path / "not" / "yet") and facts["disk"]["output"]["free"] > 0
    assert set(facts["attention"]) == {"flash_attn", "flash_attn_3", "sageattention", "xformers"}
    assert all("importable" in k and "version" in k for k in facts["attention"].values())
    assert set(facts["video"]) == {"av", "libx264", "ffmpeg"}
    assert facts["models"] == []
    if not facts["gpus"]:  # this machine: no CUDA
        m = facts["memory"]
        assert m["device"] == "cpu" and m["line"].startswith("no CUDA GPU: runs on CPU; sampling 640x640 with the "
                                                             "released DiT needs about 52.5 GiB of RAM (float32)")
    assert not (tmp_path / "not").exists()  # doctor creates nothing


def test_a_fake_gpu_shows_the_planned_settings(tmp_path, capsys, monkeypatch):
    gpu = {"index": 0, "name": "NVIDIA GeForce RTX 4070", "capability": "8.9", "free": int(11.5 * GiB),
           "total": 12 * GiB}
    monkeypatch.setattr(doctor, "gpu_devices", lambda: [gpu])
    monkeypatch.setattr(doctor, "ram_facts", lambda: {"total": 64 * GiB, "available": 50 * GiB})
    code, out, _ = cli(["doctor", "--json", "--save_path", tmp_path], capsys)
    assert code == 0
    m = json.loads(out)["memory"]
    size, vae = doctor.released_sizes()
    want = mp.plan_memory(size, mp.Request(640, 640, 9, sections=5), free_vram=gpu["free"], total_ram=64 * GiB,
                          vae=vae)
    assert m["device"] == "cuda:0" and m["fits"] and m["line"] == want.line
    assert (m["fp8"], m["blocks_to_swap"]) == (want.fp8, want.blocks_to_swap) == ("fp8_scaled", want.blocks_to_swap)
    assert m["blocks_to_swap"] > 0  # 17 GB of fp8 weights on a 12 GB card: some blocks swapped
    code, out, _ = cli(["doctor", "--save_path", tmp_path], capsys)
    lines = out.splitlines()
    assert "NVIDIA GeForce RTX 4070 (capability 8.9): 11.5 GiB free of 12.0 GiB" in next(
        line for line in lines if line.startswith("GPU 0"))
    assert next(line for line in lines if line.startswith("memory at 640x640")).endswith(want.line)
    # A GPU too small for 640x640 even with everything on: the planner's one line, not a crash.
    monkeypatch.setattr(doctor, "gpu_devices", lambda: [{**gpu, "free": 2 * GiB, "total": 2 * GiB}])
    code, out, _ = cli(["doctor", "--json"], capsys)
    m = json.loads(out)["memory"]
    assert code == 0 and not m["fits"] and m["line"].startswith("not enough GPU memory at 640x640: even with ")


def test_models_found_in_a_folder(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("dit_single.safetensors", "vae.safetensors", "lora_tiny.safetensors", "clip_l_tiny.safetensors"):
        (folder / name).symlink_to(MODELS / name)
    (folder / "sharded").symlink_to(MODELS / "dit_sharded", target_is_directory=True)
    (folder / "tokenizer").symlink_to(MODELS / "tokenizer", target_is_directory=True)  # no weights: not listed
    (folder / "notes.safetensors").write_bytes(b"not a safetensors file")
    found = {Path(m["path"]).name: m for m in doctor.models_found([folder, tmp_path / "missing"])}
    assert {k: v["kind"] for k, v in found.items()} == {
        "clip_l_tiny.safetensors": "text_encoder2", "dit_single.safetensors": "dit", "lora_tiny.safetensors": "lora",
        "notes.safetensors": None, "vae.safetensors": "vae", "sharded": "dit", "missing": None}
    assert found["missing"]["error"] == "not a folder"
    assert found["notes.safetensors"]["error"]
    assert found["dit_single.safetensors"]["parameters"] == found["sharded"]["parameters"] > 0
    code, out, _ = cli(["doctor", "--models_dir", folder], capsys)
    assert code == 0
    rows = out.splitlines()
    assert f"models in {folder}" in rows
    assert any(r.startswith("  dit_single.safetensors") and "a FramePack DiT" in r for r in rows)
    assert any(r.startswith("  sharded") and "a FramePack DiT" in r for r in rows)


def test_help_does_not_import_torch():
    code = ("import sys; from framepack_cli.cli.app import main\n"
            "try:\n    main(['doctor', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "--models_dir DIR" in res.stdout and "--json" in res.stdout


def test_models_a_run_would_find_and_what_each_command_lacks(tmp_path, capsys):
    """The resolver's view: a VAE downloaded into --models_dir (hub-cache layout) is found and used; the DiT is
    missing, and the line for generate names the exact download command."""
    from tests.unit.test_model_store import put

    mine = tmp_path / "mine"
    put(mine, "hunyuanvideo-community/HunyuanVideo",
        {"vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": b"x"})
    code, out, _ = cli(["doctor", "--json", "--models_dir", mine, "--save_path", tmp_path], capsys)
    assert code == 0
    stored = json.loads(out)["stored"]
    assert stored["places"][0] == {"path": str(mine), "label": "--models_dir"}
    vae = stored["components"]["vae"]
    assert vae["place"] == "--models_dir" and vae["path"].endswith("vae/diffusion_pytorch_model.safetensors")
    assert stored["components"]["dit"] is None
    gen = stored["commands"]["generate / one-frame / kisekae"]
    assert "vae" not in gen["missing"] and "dit" in gen["missing"]
    assert gen["fetch"].startswith("framepack download") and f"--models_dir {mine}" in gen["fetch"]
    assert json.loads(out)["models"] == []  # the hub-layout folder is not listed as a loose model file
    code, out, _ = cli(["doctor", "--models_dir", mine, "--save_path", tmp_path], capsys)
    assert code == 0
    assert "  vae" in out and "(--models_dir, hunyuanvideo-community/HunyuanVideo)" in out
    assert "ready: cache latents" in out
