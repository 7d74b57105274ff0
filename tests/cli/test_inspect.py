"""`framepack inspect`: every golden file is recognised; wrong files and folders get one clear line."""

from __future__ import annotations

import json

import pytest

from framepack_cli.cli.app import main
from tests.conftest import MODELS

CASES = [
    ("dit_single.safetensors", "dit", "diffusers", "single file", "float32"),
    ("dit_sharded", "dit", "diffusers", "sharded (2 files)", "bfloat16"),
    ("dit_sharded/diffusion_pytorch_model-00001-of-00002.safetensors", "dit", "diffusers", "sharded (2 files)",
     "bfloat16"),
    ("vae_official.pt", "vae", "official", "pickle", "float32"),
    ("vae.safetensors", "vae", "diffusers", "single file", "float32"),
    ("vae", "vae", "diffusers", "single file", "float32"),
    ("llava_llama3_tiny.safetensors", "text_encoder1", "comfy-org", "single file", "float16"),
    ("text_encoder/model-00001-of-00002.safetensors", "text_encoder1", "hf", "sharded (2 files)", "float32"),
    ("clip_l_tiny.safetensors", "text_encoder2", "hf", "single file", "float32"),
    ("image_encoder", "image_encoder", "hf", "single file", "float32"),
    ("lora_tiny.safetensors", "lora", "musubi-framepack", "single file", "float32"),
]


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("name, kind, fmt, layout, dtype", CASES)
def test_inspect_json(name, kind, fmt, layout, dtype, capsys):
    code, out, err = run(["inspect", MODELS / name, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert (info["kind"], info["format"], info["layout"], info["dtype"]) == (kind, fmt, layout, dtype)
    assert info["parameters"] > 0 and isinstance(info["config"], dict)


def test_inspect_configs(capsys):
    tiny = json.loads((MODELS / "tiny_models.json").read_text())
    code, out, _ = run(["inspect", MODELS / "dit_single.safetensors", "--json"], capsys)
    cfg = json.loads(out)["config"]
    assert (cfg["num_layers"], cfg["num_single_layers"], cfg["num_attention_heads"]) == (2, 2, 1)
    assert json.loads(out)["parameters"] == 3_129_536
    code, out, _ = run(["inspect", MODELS / "llava_llama3_tiny.safetensors", "--json"], capsys)
    cfg = json.loads(out)["config"]
    assert cfg["num_hidden_layers"] == tiny["llama_config"]["num_hidden_layers"]
    assert cfg["num_key_value_heads"] == tiny["llama_config"]["num_key_value_heads"]
    code, out, _ = run(["inspect", MODELS / "lora_tiny.safetensors", "--json"], capsys)
    cfg = json.loads(out)["config"]
    assert cfg["lora_format"] == "musubi-framepack" and cfg["ranks"] == [4] and cfg["modules"] == 34


def test_inspect_human_table(capsys):
    code, out, _ = run(["inspect", MODELS / "vae_official.pt"], capsys)
    assert code == 0
    assert "vae (a HunyuanVideo VAE)" in out and "official, pickle" in out


def test_inspect_errors(capsys, tmp_path):
    code, _, err = run(["inspect", MODELS / "tiny_models.json"], capsys)
    assert (code, err.strip()) == (2, f"Error: {MODELS / 'tiny_models.json'}: this is a JSON file, not model weights")
    code, _, err = run(["inspect", tmp_path / "missing.safetensors"], capsys)
    assert (code, err.strip()) == (2, f"Error: {tmp_path / 'missing.safetensors'}: no such file or directory")
    trunc = tmp_path / "cut.safetensors"
    trunc.write_bytes((MODELS / "vae.safetensors").read_bytes()[:100_000])
    code, _, err = run(["inspect", trunc], capsys)
    assert code == 2 and "file is truncated" in err and "Traceback" not in err
    code, _, err = run(["inspect", MODELS], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"Error: {MODELS}: a folder holding several models (")
    assert "; inspect one of them; framepack inspect " in line


@pytest.mark.parametrize("flag, wrong, says", [
    ("--dit", "vae.safetensors",
     "looks like a HunyuanVideo VAE (diffusers format), expected a FramePack DiT; pass it as --vae"),
    ("--vae", "lora_tiny.safetensors", "looks like a LoRA, expected a HunyuanVideo VAE; pass it as --lora_weight"),
    ("--text_encoder1", "clip_l_tiny.safetensors",
     "looks like a CLIP-L text encoder (text_encoder2) (hf format), expected a LLaMA text encoder (text_encoder1); "
     "pass it as --text_encoder2"),
    ("--image_encoder", "dit_single.safetensors",
     "looks like a FramePack DiT (diffusers format), expected a SigLIP image encoder; pass it as --dit"),
])
def test_generate_wrong_file_for_flag(flag, wrong, says, capsys, tmp_path):
    """A file passed to the wrong flag stops generate with one line naming the file and what it looks like."""
    args = {"--dit": "dit_single.safetensors", "--vae": "vae.safetensors",
            "--text_encoder1": "llava_llama3_tiny.safetensors", "--text_encoder2": "clip_l_tiny.safetensors",
            "--image_encoder": "sigclip_tiny.safetensors"}
    args[flag] = wrong
    argv = ["generate", "--prompt", "p", "--save_path", tmp_path, "--video_size", "32", "32", "--infer_steps", "1",
            "--video_sections", "1"]
    for k, v in args.items():
        argv += [k, MODELS / v]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    # refused before any model loads: the only output is the one error line
    assert err.strip() == f"Error: {flag}: {MODELS / wrong} {says}"
    assert list(tmp_path.iterdir()) == []  # nothing half-written
