"""`framepack train` end to end on the tiny models: caches in, a LoRA out that `framepack generate` loads.

The caches are the golden ones the reference made (copied into a temporary cache folder with a dataset
config pointing at them), so these runs also prove the reference's caches train as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli.cli.app import main
from tests.conftest import GOLDEN, INPUTS, MODEL_ARGS, MODELS, REPO

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (GOLDEN / "cache").is_dir(), reason="golden caches missing")]

DIT = MODELS / "dit_single.safetensors"
CACHE = GOLDEN / "cache"
DATASETS = GOLDEN / "datasets"


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _copy(dst: Path, *patterns: tuple[Path, str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for folder, pattern in patterns:
        for f in sorted(folder.glob(pattern)):
            shutil.copy(f, dst / f.name)


def video_dataset(tmp: Path, mode: str = "vanilla", window: int = 5, batch_size: int = 1, only: str = "*",
                  repeats: int = 1) -> Path:
    """A dataset config over the golden video caches of `mode` (vanilla / f1)."""
    cache = tmp / f"cache_{mode}"
    _copy(cache, (CACHE / mode / "video_dir", f"{only}_fp.safetensors"), (CACHE / "text" / "video_dir",
                                                                          f"{only}_fp_te.safetensors"))
    toml = tmp / f"{mode}.toml"
    toml.write_text(
        f'[general]\nresolution = [64, 48]\ncaption_extension = ".txt"\nbatch_size = {batch_size}\n'
        f'enable_bucket = true\nnum_repeats = {repeats}\n\n[[datasets]]\n'
        f'video_directory = "{DATASETS / "videos"}"\ncache_directory = "{cache}"\nframe_extraction = "full"\n'
        f"max_frames = 129\nfp_latent_window_size = {window}\n")
    return toml


def image_dataset(tmp: Path) -> Path:
    cache = tmp / "cache_1f"
    _copy(cache, (CACHE / "one_frame" / "image_1f", "*_fp.safetensors"), (CACHE / "text" / "image_1f",
                                                                           "*_fp_te.safetensors"))
    toml = tmp / "one_frame.toml"
    toml.write_text(
        '[general]\nresolution = [64, 48]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = true\n\n'
        f'[[datasets]]\nimage_directory = "{DATASETS / "images_1f"}"\n'
        f'control_directory = "{DATASETS / "images_1f_control"}"\ncache_directory = "{cache}"\n'
        "fp_latent_window_size = 5\nfp_1f_clean_indices = [0]\nfp_1f_target_index = 9\nfp_1f_no_post = false\n")
    return toml


def train_args(toml: Path, out: Path, *extra) -> list:
    return ["train", "--dit", DIT, "--dataset_config", toml, "--output_dir", out, "--output_name", "lora",
            "--learning_rate", "1e-3", "--network_dim", "4", "--seed", "7", "--max_data_loader_n_workers", "0",
            *extra]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


# ---------------------------------------------------------------------------------------------------------------


def test_vanilla_training_saves_checkpoints_and_a_lora_generate_loads(tmp_path, capsys):
    toml = video_dataset(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = cli(train_args(toml, out, "--max_train_epochs", "3", "--save_every_n_epochs", "1",
                                       "--timestep_sampling", "shift", "--discrete_flow_shift", "3.0",
                                       "--vae", MODELS / "vae.safetensors"), capsys)
    assert code == 0, err
    # 3 batches per epoch (3 sections) -> 9 steps; epoch checkpoints 1 and 2, not 3 (the final file replaces it)
    assert sorted(p.name for p in out.iterdir()) == ["lora-000001.safetensors", "lora-000002.safetensors",
                                                     "lora.safetensors"]
    assert stdout.splitlines() == [f"Wrote {out / n}" for n in ("lora-000001.safetensors",
                                                                 "lora-000002.safetensors", "lora.safetensors")]
    saved = json.loads((GOLDEN / "train" / "lora_saved.json").read_text())
    m = meta(out / "lora.safetensors")
    assert set(saved["metadata"]) <= set(m), set(saved["metadata"]) - set(m)
    assert (m["ss_steps"], m["ss_epoch"], m["ss_num_epochs"], m["ss_max_train_steps"]) == ("9", "3", "3", "9")
    assert m["ss_network_module"] == "networks.lora_framepack" and m["ss_timestep_sampling"] == "shift"
    assert m["ss_vae_name"] == "vae.safetensors" and m["ss_sd_model_name"] == "dit_single.safetensors"
    assert set(tensors(out / "lora.safetensors")) == set(saved["keys"])
    assert "Trained 9 steps" in err

    # the LoRA loads in generate and changes its output
    gen = ["generate", *MODEL_ARGS, "--video_size", "32", "48", "--infer_steps", "2", "--image_path",
           INPUTS / "start.png", "--prompt", "a cat", "--seed", "3", "--output_type", "latent",
           "--video_sections", "1", "--latent_window_size", "2"]
    code, _, err = cli([*gen, "--save_path", tmp_path / "g0", "--output_name", "base"], capsys)
    assert code == 0, err
    code, _, err = cli([*gen, "--save_path", tmp_path / "g1", "--output_name", "lora", "--lora_weight",
                        out / "lora.safetensors", "--lora_multiplier", "5"], capsys)
    assert code == 0, err
    (a,) = (tmp_path / "g0").glob("*.safetensors")
    (b,) = (tmp_path / "g1").glob("*.safetensors")
    la, lb = next(iter(tensors(a).values())), next(iter(tensors(b).values()))
    assert (la - lb).abs().max() > 1e-4


def test_same_seed_same_lora_other_seed_other_lora(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    runs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        args = train_args(toml, tmp_path / name, "--max_train_steps", "3")
        args[args.index("--seed") + 1] = seed
        code, _, err = cli(args, capsys)
        assert code == 0, err
        runs[name] = tensors(tmp_path / name / "lora.safetensors")
    for k in runs["a"]:
        assert torch.equal(runs["a"][k], runs["b"][k]), k
    assert any(not torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"] if k.endswith("lora_up.weight"))


@pytest.mark.parametrize("kind", ["f1", "one_frame", "loha"])
def test_modes_train(kind, tmp_path, capsys):
    if kind == "one_frame":
        toml, extra = image_dataset(tmp_path), ["--one_frame"]
    elif kind == "f1":
        toml, extra = video_dataset(tmp_path, mode="f1"), ["--f1"]
    else:
        toml, extra = video_dataset(tmp_path, only="clip_b*"), ["--network_module", "networks.loha"]
    out = tmp_path / "out"
    code, _, err = cli(train_args(toml, out, "--max_train_steps", "2", *extra), capsys)
    assert code == 0, err
    m = meta(out / "lora.safetensors")
    assert m["ss_steps"] == "2"
    keys = set(tensors(out / "lora.safetensors"))
    if kind == "loha":
        assert m["ss_network_module"] == "networks.loha"
        assert any(k.endswith(".hada_w1_a") for k in keys)
    else:
        assert any(k.endswith(".lora_up.weight") for k in keys)


def test_overfit_lowers_the_loss(tmp_path, capsys):
    """40 steps on one section: the loss at fixed noise and timesteps drops by at least 20%."""
    from framepack_cli.engine.train_data import build_train_data
    from framepack_cli.engine.train_step import training_step
    from framepack_cli.models.lora.training import create_network
    from framepack_cli.models.transformer import load_dit
    from framepack_cli.sampling.train_timesteps import TimestepSettings

    toml = video_dataset(tmp_path, only="clip_b*")
    out = tmp_path / "out"
    code, _, err = cli(train_args(toml, out, "--max_train_steps", "40", "--learning_rate", "3e-3",
                                  "--timestep_sampling", "uniform", "--network_dim", "8"), capsys)
    assert code == 0, err
    data = build_train_data(toml, seed=0)
    batch = data[data.epoch_keys(0)[0]]

    def loss(weights):
        dit = load_dit(DIT)
        net = create_network("networks.lora_framepack", dit, dim=8, alpha=1.0, dropout=None, network_args={},
                             weights=weights)
        net.eval()
        with torch.no_grad():
            vals = [training_step(dit, batch, seed=123, step=i,
                                  settings=TimestepSettings(timestep_sampling="uniform"), guidance_scale=1.0,
                                  device=torch.device("cpu"), dtype=torch.float32, autocast_dtype=None).loss.item()
                    for i in range(8)]
        return sum(vals) / len(vals)

    before, after = loss(None), loss(str(out / "lora.safetensors"))
    assert after < 0.8 * before, (before, after)


def test_seed_command_line_under_accelerate_launch(tmp_path):
    """The seed's command line (with `-m framepack_cli train`): bf16 autocast on the CPU, AdamW8bit falls
    back to AdamW with one warning when bitsandbytes or CUDA is missing."""
    toml = video_dataset(tmp_path, only="clip_b*")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1",
           "--mixed_precision", "bf16", "-m", "framepack_cli", "train", *MODEL_ARGS[:2], "--vae", MODEL_ARGS[3],
           "--text_encoder1", MODEL_ARGS[5], "--text_encoder2", MODEL_ARGS[7], "--image_encoder", MODEL_ARGS[9],
           "--dataset_config", toml, "--sdpa", "--mixed_precision", "bf16", "--optimizer_type", "adamw8bit",
           "--learning_rate", "2e-4", "--gradient_checkpointing", "--timestep_sampling", "shift",
           "--weighting_scheme", "none", "--discrete_flow_shift", "3.0", "--max_data_loader_n_workers", "2",
           "--persistent_data_loader_workers", "--network_module", "networks.lora_framepack", "--network_dim", "32",
           "--max_train_epochs", "2", "--save_every_n_epochs", "1", "--seed", "42", "--output_dir", out,
           "--output_name", "name-of-lora"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["name-of-lora-000001.safetensors", "name-of-lora.safetensors"]
    m = meta(out / "name-of-lora.safetensors")
    assert m["ss_mixed_precision"] == "bf16" and m["ss_network_dim"] == "32"
    if not torch.cuda.is_available():
        warnings = [line for line in r.stderr.splitlines() if "AdamW8bit" in line or "adamw8bit" in line]
        assert len(warnings) == 1, r.stderr


# ---------------------------------------------------------------------------------------------------------------
# Resume


def _train_subprocess(args, tmp_path, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "framepack_cli", *[str(a) for a in args]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, **kw)


def test_resume_after_sigkill_is_bit_identical(tmp_path, capsys):
    toml = video_dataset(tmp_path)  # 3 batches per epoch
    common = ["--max_train_steps", "7", "--save_every_n_steps", "2", "--save_state", "--network_dropout", "0.1"]
    code, _, err = cli(train_args(toml, tmp_path / "full", *common), capsys)
    assert code == 0, err
    out = tmp_path / "cut"
    proc = _train_subprocess(train_args(toml, out, *common), tmp_path)
    state = out / "lora-step00000004-state"
    deadline = time.time() + 300
    while not (state / "state.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "lora.safetensors").exists()
    code, _, err = cli(train_args(toml, out, *common, "--resume", out), capsys)
    assert code == 0, err
    assert "Resuming from" in err and "step 4 of 7" in err
    full, resumed = tensors(tmp_path / "full" / "lora.safetensors"), tensors(out / "lora.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert meta(out / "lora.safetensors")["ss_steps"] == "7"


def test_ctrl_c_stops_after_the_step_and_saves(tmp_path):
    toml = video_dataset(tmp_path)
    out = tmp_path / "out"
    args = train_args(toml, out, "--max_train_steps", "40", "--save_state")
    args[args.index("--max_data_loader_n_workers") + 1] = "2"  # workers get the terminal's Ctrl-C too
    proc = _train_subprocess(args, tmp_path, start_new_session=True)
    deadline = time.time() + 300
    buf = ""
    while "step " not in buf:
        assert proc.poll() is None
        assert time.time() < deadline
        line = proc.stderr.readline()
        buf += line
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the whole process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Internal error" not in err, err
    saved = {p.name for p in out.iterdir()}
    (lora,) = [n for n in saved if n.endswith(".safetensors")]
    assert lora.startswith("lora-step") and saved == {lora, lora.replace(".safetensors", "-state")}, saved
    step = int(lora[len("lora-step"):-len(".safetensors")])
    assert 2 <= step < 40
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"Interrupted at step {step} of 40; saved {out / lora}; resume with "
                           "the same command and --resume "), last


# ---------------------------------------------------------------------------------------------------------------
# Refusals


def test_existing_file_of_another_run_is_not_overwritten(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    out = tmp_path / "out"
    out.mkdir()
    (out / "lora.safetensors").write_bytes(b"precious")
    code, _, err = cli(train_args(toml, out, "--max_train_steps", "1"), capsys)
    assert code == 2
    assert err.strip().splitlines()[0].startswith(f"Error: --output_name: {out / 'lora.safetensors'} already "
                                                  "exists")
    assert (out / "lora.safetensors").read_bytes() == b"precious"


def test_no_caches(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="nothing")
    code, _, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "framepack cache latents" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_window_mismatch(tmp_path, capsys):
    toml = video_dataset(tmp_path, window=9, only="clip_b*")
    code, _, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1"), capsys)
    assert code == 2 and "fp_latent_window_size" in err and "framepack cache latents" in err, err


def test_missing_optimizer_package(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    code, _, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1", "--optimizer_type",
                                  "Prodigy"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install prodigyopt" in err, err


def test_network_weights_of_another_architecture(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    hv = tmp_path / "hv.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4),
               "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0)}, str(hv))
    code, _, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1", "--network_weights", hv),
                       capsys)
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("Error: --network_weights: "), err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# Multi-process


def test_two_processes_average_gradients_like_one_process_with_the_double_batch(tmp_path, capsys):
    """`accelerate launch --num_processes 2 --cpu` (gloo DDP) with batch 1 per process ends with the LoRA of a
    single process with batch 2 (the two sections of clip_a are one bucket): the ranks saw different samples
    and their gradients were averaged. Only rank 0 writes."""
    # SGD: Adam would divide float noise in near-zero gradients by their own tiny norms
    opt = ["--optimizer_type", "SGD", "--learning_rate", "0.5", "--max_grad_norm", "0"]
    single = video_dataset(tmp_path / "one", batch_size=2, only="clip_a*")
    code, _, err = cli(train_args(single, tmp_path / "one" / "out", "--max_train_steps", "3", *opt), capsys)
    assert code == 0, err
    double = video_dataset(tmp_path / "two", batch_size=1, only="clip_a*")
    out = tmp_path / "two" / "out"
    cmd = ["accelerate", "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", "29513", "-m", "framepack_cli",
           *train_args(double, out, "--max_train_steps", "3",
                                                       "--save_every_n_steps", "2", *opt)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == [f"Wrote {out / 'lora-step00000002.safetensors'}",
                                     f"Wrote {out / 'lora.safetensors'}"]
    assert r.stderr.count("Trained 3 steps") == 1
    a, b = tensors(tmp_path / "one" / "out" / "lora.safetensors"), tensors(out / "lora.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.endswith("lora_up.weight"))


# ---------------------------------------------------------------------------------------------------------------
# Samples during training


def test_one_frame_training_with_samples(tmp_path, capsys):
    toml = image_dataset(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# samples\na cat --i {INPUTS / 'start.png'} --ci {INPUTS / 'start.png'} "
                       "--of target_index=1,control_index=0 --w 64 --h 48 --s 2 --d 5 --f 1\n")
    out = tmp_path / "out"
    code, stdout, err = cli(train_args(toml, out, "--one_frame", *MODEL_ARGS[2:], "--sample_prompts", prompts,
                                       "--sample_at_first", "--sample_every_n_steps", "2", "--max_train_steps",
                                       "2"), capsys)
    assert code == 0, err
    samples = sorted(p.name for p in (out / "sample").iterdir())
    assert len(samples) == 2 and samples[0].startswith("lora_000000_00_") and samples[1].startswith(
        "lora_000002_00_"), samples
    assert all(s.endswith("_5_000.png") for s in samples)
    from PIL import Image

    with Image.open(out / "sample" / samples[1]) as im:
        assert im.size == (64, 48)
    assert "Samples:" in err


def test_tensorboard_logs(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    toml = video_dataset(tmp_path, only="clip_b*")
    code, _, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "2", "--logging_dir",
                                  tmp_path / "logs", "--log_prefix", "run-"), capsys)
    assert code == 0, err
    (run,) = (tmp_path / "logs").iterdir()
    assert run.name.startswith("run-") and f"Logs: {run}" in err
    events = [p for p in run.rglob("events.out.tfevents.*")]
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/current", "loss/average", "lr/unet", "loss/epoch"} <= tags, tags
    assert [e.step for e in acc.Scalars("loss/current")] == [1, 2]


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path, capsys):
    """Batch 1 with --gradient_accumulation_steps 2 ends with the LoRA of batch 2 (same samples per step,
    same per-sample noise: it is keyed by the optimizer step)."""
    opt = ["--optimizer_type", "SGD", "--learning_rate", "0.5", "--max_grad_norm", "0", "--max_train_steps", "2"]
    big = video_dataset(tmp_path / "big", batch_size=2, only="clip_a*")
    code, _, err = cli(train_args(big, tmp_path / "big" / "out", *opt), capsys)
    assert code == 0, err
    small = video_dataset(tmp_path / "small", batch_size=1, only="clip_a*")
    code, _, err = cli(train_args(small, tmp_path / "small" / "out", *opt, "--gradient_accumulation_steps", "2"),
                       capsys)
    assert code == 0, err
    assert "Trained 2 steps" in err
    a, b = tensors(tmp_path / "big" / "out" / "lora.safetensors"), tensors(tmp_path / "small" / "out" /
                                                                           "lora.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    assert meta(tmp_path / "small" / "out" / "lora.safetensors")["ss_gradient_accumulation_steps"] == "2"


def test_continue_from_weights_on_merged_base_with_max_norm_and_bf16(tmp_path, capsys):
    toml = video_dataset(tmp_path, only="clip_b*")
    first = tmp_path / "first"
    code, _, err = cli(train_args(toml, first, "--max_train_steps", "2"), capsys)
    assert code == 0, err
    code, _, err = cli(train_args(toml, tmp_path / "second", "--max_train_steps", "2", "--network_weights",
                                  first / "lora.safetensors", "--base_weights", MODELS / "lora_tiny.safetensors",
                                  "--base_weights_multiplier", "0.5", "--scale_weight_norms", "0.001",
                                  "--mixed_precision", "bf16", "--full_bf16", "--save_precision", "bf16"), capsys)
    assert code == 0, err
    saved = tensors(tmp_path / "second" / "lora.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in saved.values())
    m = meta(tmp_path / "second" / "lora.safetensors")
    assert m["ss_full_bf16"] == "True" and m["ss_mixed_precision"] == "bf16"
    # max-norm regularisation: every module's update norm is at most the bound
    for key in [k for k in saved if k.endswith("lora_up.weight")]:
        name = key[: -len(".lora_up.weight")]
        up, down = saved[key].float(), saved[f"{name}.lora_down.weight"].float()
        scale = saved[f"{name}.alpha"].float() / down.shape[0]
        assert float((up @ down * scale).norm()) <= 0.001 * 1.01, name


def test_out_of_memory_in_a_step_is_one_line_exit_3(tmp_path, capsys, monkeypatch):
    import framepack_cli.engine.train_step as train_step

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_step, "training_step", oom)
    toml = video_dataset(tmp_path, only="clip_b*")
    code, out, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1"), capsys)
    assert code == 3 and out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("Error")]
    assert "training step 1 (epoch 1)" in line and "--gradient_checkpointing" in line, line


def test_disk_full_while_saving_a_state_is_exit_3(tmp_path, capsys, monkeypatch):
    import errno

    import framepack_cli.engine.train_state as train_state

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_state, "save_state", full)
    toml = video_dataset(tmp_path, only="clip_b*")
    code, _, err = cli(train_args(toml, tmp_path / "out", "--max_train_steps", "1", "--save_state"), capsys)
    assert code == 3, err
    (line,) = [x for x in err.splitlines() if x.startswith("Error")]
    assert "--output_dir" in line and "lora-state" in line, line
