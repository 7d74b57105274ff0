"""`framepack cache latents|text`, `train`, `lora inspect|convert|merge`, `download`: parsing and validation.

The cache engines are built: with the empty dataset config of these tests they get as far as reading it, which
proves that parsing and every cross-field check passed.
Other tests capture the validated options with a patched runner, or check the exact validation lines.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from framepack_cli.cli.app import main
from framepack_cli.options.train import parse_kwargs, parse_steps_or_ratio

# Built engines: the first thing they do with valid options is read the (empty) dataset config.
ENGINE_RAN = {
    "cache latents": "dataset.toml: datasets: no [[datasets]] entries",
    "cache text": "dataset.toml: datasets: no [[datasets]] entries",
    # The LoRA engines' first step is reading the (empty) LoRA / DiT file.
    "lora inspect": "lora.safetensors: file is empty or truncated (0 bytes), not a safetensors file",
    "lora convert": "lora.safetensors: file is empty or truncated (0 bytes), not a safetensors file",
    "lora merge": "dit.safetensors: file is empty or truncated (0 bytes), not a safetensors file",
    # The trainer's first step after the option checks is reading the dataset config.
    "train": "dataset.toml: datasets: no [[datasets]] entries",
}
NOT_BUILT: dict[str, str] = {}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def assert_not_built(command: str, args, capsys) -> None:
    code, _, err = run_cli([*command.split(), *args], capsys)
    assert code == 2, err
    if command in ENGINE_RAN:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith(ENGINE_RAN[command]), err
        return
    assert err.strip().splitlines() == [NOT_BUILT[command]], err


def assert_errors(args, capsys, *lines: str) -> None:
    """Exit 2 and exactly these `Error: ...` lines, in any order, no traceback."""
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert sorted(err.strip().splitlines()) == sorted(f"Error: {line}" for line in lines), err
    assert "Traceback" not in err


@pytest.fixture
def files(tmp_path):
    """Real files for every path of the reference command lines."""
    p = {
        "toml": tmp_path / "dataset.toml",
        "vae": tmp_path / "vae.safetensors",
        "image_encoder": tmp_path / "image_encoder.safetensors",
        "dit": tmp_path / "dit.safetensors",
        "te1": tmp_path / "text_encoder1",
        "te2": tmp_path / "text_encoder2.safetensors",
        "lora": tmp_path / "lora.safetensors",
        "prompts": tmp_path / "prompts.txt",
    }
    for key, path in p.items():
        if key == "te1":
            path.mkdir()
        else:
            path.write_text("")
    return {k: str(v) for k, v in p.items()}


def latents_line(f):
    # python src/musubi_tuner/fpack_cache_latents.py --dataset_config path/to/toml --vae path/to/vae.safetensors
    #     --image_encoder path/to/image_encoder.safetensors --vae_chunk_size 32
    return ["--dataset_config", f["toml"], "--vae", f["vae"], "--image_encoder", f["image_encoder"],
            "--vae_chunk_size", "32"]


def text_line(f):
    # python src/musubi_tuner/fpack_cache_text_encoder_outputs.py --dataset_config path/to/toml
    #     --text_encoder1 path/to/text_encoder1 --text_encoder2 path/to/text_encoder2 --batch_size 16
    return ["--dataset_config", f["toml"], "--text_encoder1", f["te1"], "--text_encoder2", f["te2"],
            "--batch_size", "16"]


def train_line(f):
    # accelerate launch ... src/musubi_tuner/fpack_train_network.py (Appendix A, verbatim apart from the paths)
    return [
        "--dit", f["dit"], "--vae", f["vae"], "--text_encoder1", f["te1"], "--text_encoder2", f["te2"],
        "--image_encoder", f["image_encoder"],
        "--dataset_config", f["toml"], "--sdpa", "--mixed_precision", "bf16",
        "--optimizer_type", "adamw8bit", "--learning_rate", "2e-4", "--gradient_checkpointing",
        "--timestep_sampling", "shift", "--weighting_scheme", "none", "--discrete_flow_shift", "3.0",
        "--max_data_loader_n_workers", "2", "--persistent_data_loader_workers",
        "--network_module", "networks.lora_framepack", "--network_dim", "32",
        "--max_train_epochs", "16", "--save_every_n_epochs", "1", "--seed", "42", "--output_dir", "out",
        "--output_name", "name-of-lora",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Appendix A command lines


def _check_flags(opts, given: dict, switches: tuple[str, ...]) -> None:
    """Each flag of the line reached the options with its value; every other switch stayed off."""
    for name, value in given.items():
        assert getattr(opts, name) == value, name
    for name in switches:
        if name not in given:
            assert not getattr(opts, name), name


LATENT_SWITCHES = ("f1", "one_frame", "one_frame_no_2x", "one_frame_no_4x")


@pytest.mark.parametrize("extra,given", [
    ([], {}), (["--f1"], {"f1": True}), (["--one_frame"], {"one_frame": True}),
    (["--one_frame", "--one_frame_no_2x"], {"one_frame": True, "one_frame_no_2x": True}),
    (["--one_frame", "--one_frame_no_4x"], {"one_frame": True, "one_frame_no_4x": True}),
    (["--one_frame", "--one_frame_no_2x", "--one_frame_no_4x"],
     {"one_frame": True, "one_frame_no_2x": True, "one_frame_no_4x": True}),
])
def test_reference_cache_latents_lines(extra, given, files, captured, capsys):
    o = parse(["cache", "latents", *latents_line(files), *extra], captured, capsys)
    assert (o.dataset_config, o.vae, o.image_encoder, o.vae_chunk_size) == (
        files["toml"], files["vae"], files["image_encoder"], 32)
    _check_flags(o, given, LATENT_SWITCHES)


@pytest.mark.parametrize("extra,given", [([], {}), (["--fp8_llm"], {"fp8_llm": True})])
def test_reference_cache_text_lines(extra, given, files, captured, capsys):
    o = parse(["cache", "text", *text_line(files), *extra], captured, capsys)
    assert (o.dataset_config, o.text_encoder1, o.text_encoder2, o.batch_size) == (
        files["toml"], files["te1"], files["te2"], 16)
    _check_flags(o, given, ("fp8_llm",))


@pytest.mark.parametrize("command,line", [("cache latents", latents_line), ("cache text", text_line)])
def test_reference_cache_lines_reach_the_engine(command, line, files, capsys):
    """Unpatched: the engine runs and its first step (reading the dataset config) reports the empty TOML."""
    assert_not_built(command, line(files), capsys)


TRAIN_SWITCHES = ("f1", "one_frame", "fp8_base", "fp8_scaled", "split_attn")


@pytest.mark.parametrize("extra,given", [
    ([], {}), (["--f1"], {"f1": True}), (["--one_frame"], {"one_frame": True}),
    (["--fp8_base", "--fp8_scaled"], {"fp8_base": True, "fp8_scaled": True}),
    (["--blocks_to_swap", "36"], {"blocks_to_swap": 36}), (["--split_attn"], {"split_attn": True}),
    (["--fp8_base", "--fp8_scaled", "--blocks_to_swap", "20", "--split_attn", "--f1"],
     {"fp8_base": True, "fp8_scaled": True, "blocks_to_swap": 20, "split_attn": True, "f1": True}),
])
def test_reference_train_lines(extra, given, files, captured, capsys):
    o = parse(["train", *train_line(files), *extra], captured, capsys)
    assert (o.dit, o.dataset_config, o.network_dim, o.learning_rate, o.output_name) == (
        files["dit"], files["toml"], 32, 2e-4, "name-of-lora")
    _check_flags(o, given, TRAIN_SWITCHES)
    if "blocks_to_swap" not in given:
        assert o.blocks_to_swap is None


def test_reference_train_line_reaches_the_runner(files, capsys):
    """Unpatched runner: validation passes and the engine's first step reports the empty dataset config."""
    assert_not_built("train", train_line(files), capsys)


def test_validation_comes_before_the_engine(files, capsys):
    """A validation error wins: the runner only sees valid options."""
    code, _, err = run_cli(["train", *train_line(files), "--fp8_scaled"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["Error: --fp8_scaled needs --fp8_base"]


# ---------------------------------------------------------------------------------------------------------------
# Captured options: defaults, both spellings, config file


@pytest.fixture
def captured(monkeypatch):
    """Replace the runners: record the validated options instead of refusing."""
    seen: list = []
    import framepack_cli.engine.cache_latents as cache_latents
    import framepack_cli.engine.cache_text as cache_text
    import framepack_cli.engine.download as download
    import framepack_cli.engine.lora_tools as lora_tools
    import framepack_cli.engine.train as train
    from framepack_cli.cli import reports

    for module, names in ((cache_latents, ("run_latents",)), (cache_text, ("run_text",)), (train, ("run",)),
                          (download, ("run",)), (lora_tools, ("run_convert", "run_merge")),
                          (reports, ("lora_inspect",))):
        for name in names:
            monkeypatch.setattr(module, name, lambda opts: seen.append(opts))
    return seen


def parse(args, captured, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    return captured[-1]


def test_train_reference_defaults(files, captured, capsys):
    o = parse(["train", "--dit", files["dit"], "--dataset_config", files["toml"], "--sdpa", "--output_dir", "out",
               "--output_name", "x"], captured, capsys)
    assert o.max_train_steps == 1600 and o.learning_rate == 2e-6 and o.max_grad_norm == 1.0
    assert o.lr_scheduler == "constant" and o.lr_warmup == 0 and o.lr_scheduler_num_cycles == 1
    assert o.timestep_sampling == "sigma" and o.weighting_scheme == "none" and o.discrete_flow_shift == 1.0
    assert o.logit_mean == 0.0 and o.logit_std == 1.0 and o.mode_scale == 1.29 and o.guidance_scale == 1.0
    assert o.network_module is None and o.network_module_name == "networks.lora_framepack"
    assert o.network_dim is None and o.network_alpha == 1.0 and o.latent_window_size == 9
    assert o.max_data_loader_n_workers == 8 and o.gradient_accumulation_steps == 1 and o.block_swap_ring_size == 2
    assert o.dynamo_backend == "NO" and o.compile_backend == "inductor" and o.compile_mode == "default"
    assert o.attention == "sdpa" and o.dtype == "auto"


def test_cache_reference_defaults(files, captured, capsys):
    o = parse(["cache", "latents", *latents_line(files)], captured, capsys)
    assert o.console_width == 80 and o.batch_size is None and o.num_workers is None and o.debug_mode is None
    assert o.vae_chunk_size == 32 and not o.f1 and not o.one_frame
    assert o.vae_dtype == o.image_encoder_dtype == "auto"
    t = parse(["cache", "text", *text_line(files)], captured, capsys)
    assert t.batch_size == 16 and not t.fp8_llm and t.tokenizer1 is None and t.text_encoder_dtype == "auto"


@pytest.mark.parametrize("underscore,dash,field,value", [
    (["--learning_rate", "2e-4"], ["--learning-rate", "2e-4"], "learning_rate", 2e-4),
    (["--network_dim", "32"], ["--network-dim", "32"], "network_dim", 32),
    (["--timestep_sampling", "shift"], ["--timestep-sampling=shift"], "timestep_sampling", "shift"),
    (["--gradient_checkpointing"], ["--gradient-checkpointing"], "gradient_checkpointing", True),
    (["--optimizer_args", "weight_decay=0.01", "betas=(0.9,0.99)"],
     ["--optimizer-args", "weight_decay=0.01", "betas=(0.9,0.99)"], "optimizer_args",
     ["weight_decay=0.01", "betas=(0.9,0.99)"]),
])
def test_train_both_spellings(underscore, dash, field, value, files, captured, capsys):
    base = ["train", "--dit", files["dit"], "--dataset-config", files["toml"], "--sdpa", "--output-dir", "out",
            "--output_name", "x"]
    a = parse([*base, *underscore], captured, capsys)
    b = parse([*base, *dash], captured, capsys)
    assert getattr(a, field) == getattr(b, field) == value


def test_cache_both_spellings(files, captured, capsys):
    a = parse(["cache", "latents", *latents_line(files), "--one_frame", "--one_frame_no_2x"], captured, capsys)
    b = parse(["cache", "latents", "--dataset-config", files["toml"], "--vae", files["vae"], "--image-encoder",
               files["image_encoder"], "--vae-chunk-size", "32", "--one-frame", "--one-frame-no-2x"], captured, capsys)
    assert a == b


def test_train_variadic_and_parsed_values(files, captured, capsys):
    o = parse(["train", *train_line(files), "--base_weights", files["lora"], files["lora"],
               "--base_weights_multiplier", "0.5", "--network_args", "loraplus_lr_ratio=4", "verbose=True",
               "--optimizer_args", "weight_decay=0.01", "betas=(0.9,0.99)", "--lr_scheduler", "cosine",
               "--lr_warmup_steps", "10%", "--lr_scheduler_args", "foo='bar'"], captured, capsys)
    assert o.base_multipliers == [0.5, 1.0]
    assert o.network_kwargs == {"loraplus_lr_ratio": "4", "verbose": "True"}
    assert o.optimizer_kwargs == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert o.lr_scheduler_kwargs == {"foo": "bar"}
    assert o.lr_warmup == pytest.approx(0.1)


def test_config_file_flattened_and_command_line_wins(files, captured, capsys, tmp_path):
    cfg = tmp_path / "train_config.toml"
    cfg.write_text(
        f'dit = "{files["dit"]}"\ndataset_config = "{files["toml"]}"\nsdpa = true\n'
        '[optimizer]\noptimizer_type = "AdamW8bit"\nlearning_rate = 2e-4\noptimizer_args = "weight_decay=0.01"\n'
        '[network]\nnetwork_dim = 32\nnetwork_alpha = 16\n'
        '[save]\noutput_dir = "out"\noutput_name = "from-toml"\nlr_warmup_steps = 100\n'
        'lr_scheduler = "constant_with_warmup"\n'
    )
    # `.toml` is appended when missing, as the reference does
    o = parse(["train", "--config_file", str(tmp_path / "train_config"), "--network_dim", "16"], captured, capsys)
    assert o.network_dim == 16  # command line wins
    assert o.network_alpha == 16 and o.optimizer_type == "AdamW8bit" and o.learning_rate == 2e-4
    assert o.optimizer_args == ["weight_decay=0.01"] and o.lr_warmup == 100 and o.output_name == "from-toml"


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('learning_rat = 1\n[x]\nbogus = 2\n')
    assert_errors(["train", "--config_file", bad], capsys,
                  f"--config_file: unknown option(s) in {bad}: bogus, learning_rat")
    assert_errors(["train", "--config_file", tmp_path / "none.toml"], capsys,
                  f"--config_file: file not found: {tmp_path / 'none.toml'}")
    bad.write_text('timestep_sampling = "linear"\n')
    code, _, err = run_cli(["train", "--config_file", bad, "--show_timesteps", "console"], capsys)
    assert code == 2 and err.startswith("Error: --timestep_sampling: 'linear' is not one of sigma, uniform, ")


# ---------------------------------------------------------------------------------------------------------------
# Cross-field rules: exact messages


def not_found(tmp_path, flags: str, components: str) -> str:
    """The model-resolution line for models neither given nor downloaded (conftest's empty FRAMEPACK_HOME, HF_HOME)."""
    return (f"{flags}: not given and not found (looked in $FRAMEPACK_HOME {tmp_path / 'fp_home' / 'models'}, "
            f"HF cache {tmp_path / 'hf_home' / 'hub'}); fetch with `framepack download --components {components}` "
            f"or pass {flags.replace(', ', ' / ')}")


def test_cache_latents_cross_rules(files, capsys, tmp_path):
    base = ["cache", "latents", *latents_line(files)]
    assert_errors([*base, "--f1", "--one_frame"], capsys,
                  "--f1 and --one_frame cannot be combined: F1 caches video sections, one-frame caches single "
                  "images; pick one")
    assert_errors([*base, "--one_frame_no_2x", "--one_frame_no_4x"], capsys,
                  "--one_frame_no_2x needs --one_frame", "--one_frame_no_4x needs --one_frame")
    assert_errors(["cache", "latents", "--dataset_config", files["toml"]], capsys,
                  not_found(tmp_path, "--vae, --image_encoder", "vae,image_encoder"))
    assert_errors([*base, "--vae_dtype", "float8"], capsys,
                  "--vae_dtype: 'float8' is not one of auto, float32, bfloat16, float16")


def test_cache_debug_mode_needs_no_models(files, capsys):
    assert_errors(["cache", "latents", "--dataset_config", files["toml"], "--debug_mode", "console"], capsys,
                  "--debug_mode: dataset previews are not built yet in framepack 0.1.0; run without it to cache")
    assert_not_built("cache latents", [*latents_line(files), "--vae_dtype", "float16"], capsys)


def test_dataset_config_extension(tmp_path, files, capsys):
    yaml = tmp_path / "dataset.yaml"
    yaml.write_text("")
    assert_errors(["cache", "text", *text_line(files)[2:], "--dataset_config", yaml], capsys,
                  f"--dataset_config: expected a .toml or .json dataset config, got {yaml}")


TRAIN_RULES = [
    (["--xformers"], "--sdpa and --xformers: give exactly one attention backend"),
    (["--sage_attn"], "--sage_attn cannot be used for training (SageAttention has no backward pass; the reference "
                      "refuses it too); use --sdpa, --flash_attn, --xformers or --flash3"),
    (["--fp8_scaled"], "--fp8_scaled needs --fp8_base"),
    (["--gradient_checkpointing_cpu_offload"], None),  # gradient checkpointing is on in the reference line
    (["--min_timestep", "500", "--max_timestep", "500"], "--max_timestep (500) must be greater than --min_timestep "
                                                         "(500)"),
    (["--min_timestep", "999"], None),
    (["--base_weights_multiplier", "0.5"], "--base_weights_multiplier given without --base_weights"),
    (["--lr_warmup_steps", "100"], "--lr_warmup_steps: the constant scheduler takes no warmup; use --lr_scheduler "
                                   "constant_with_warmup"),
    (["--lr_scheduler", "cosine_with_min_lr"], "--lr_scheduler_min_lr_ratio is required with --lr_scheduler "
                                               "cosine_with_min_lr"),
    (["--lr_scheduler", "adafactor"], "--lr_scheduler adafactor needs --optimizer_type Adafactor"),
    (["--dim_from_weights"], "--dim_from_weights needs --network_weights"),
    (["--f1", "--one_frame"], "--f1 and --one_frame cannot be combined (they pick how samples are generated)"),
    (["--sample_every_n_steps", "100", "--sample_at_first"],
     "--sample_every_n_steps / --sample_at_first need --sample_prompts"),
    (["--save_last_n_steps", "3"], "--save_last_n_steps needs --save_every_n_steps"),
    (["--log_with", "tensorboard"], "--log_with tensorboard needs --logging_dir"),
    (["--async_upload"], "--async_upload needs --huggingface_repo_id"),
    (["--resume_from_huggingface"], "--resume_from_huggingface needs --resume REPO_ID/PATH[:REVISION[:REPO_TYPE]]"),
    (["--block_swap_h2d_only"], "--block_swap_h2d_only needs --blocks_to_swap (there is nothing to swap)"),
    (["--vae_dtype", "bfloat16"], "--vae_dtype: FramePack's VAE always encodes in float16 (the reference refuses "
                                  "any other --vae_dtype and its caches are float16); leave it unset, or pick the "
                                  "compute dtype with --dtype (got 'bfloat16')"),
    (["--blocks_to_swap", "37"], "--blocks_to_swap: '37' is too large; expected a value <= 36"),
    (["--lr_warmup_steps", "1.5"], "--lr_warmup_steps: a step count must be a whole number and a ratio must be "
                                   "below 1, got '1.5'"),
    (["--optimizer_args", "lr", "eps=abc"], "--optimizer_args: 'lr' is not key=value; value of 'eps' is not a "
                                            "Python literal: 'abc' (quote strings: eps='abc')"),
]


@pytest.mark.parametrize("extra,message", TRAIN_RULES)
def test_train_cross_rules(extra, message, files, capsys):
    if message is None:
        assert_not_built("train", [*train_line(files), *extra], capsys)
    else:
        assert_errors(["train", *train_line(files), *extra], capsys, message)


def test_train_rules_without_the_reference_line(files, capsys, tmp_path):
    assert_errors(["train", "--sdpa", "--gradient_checkpointing_cpu_offload", "--block_swap_h2d_only",
                   "--blocks_to_swap", "4"], capsys,
                  "--dataset_config: required to train (or give it in --config_file)",
                  not_found(tmp_path, "--dit", "dit"),
                  "--output_dir: required to train (or give it in --config_file)",
                  "--output_name: required to train (or give it in --config_file)",
                  "--gradient_checkpointing_cpu_offload needs --gradient_checkpointing",
                  "--block_swap_h2d_only needs --gradient_checkpointing")
    line = train_line(files)
    no_attention = [a for a in line if a != "--sdpa"]
    assert_not_built("train", no_attention, capsys)  # no attention flag needed: SDPA (the reference refuses)
    assert_errors(["train", *line, "--base_weights", files["lora"], "--base_weights_multiplier", "1", "0.5"], capsys,
                  "--base_weights_multiplier: 2 values for 1 --base_weights files (at most one per file)")
    no_vae = line[:2] + line[4:]
    assert_errors(["train", *no_vae, "--sample_prompts", files["prompts"]], capsys,
                  not_found(tmp_path, "--vae", "vae"))
    # --show_timesteps only plots the distributions and exits: no data, model, output or attention needed
    code, _, err = run_cli(["train", "--show_timesteps", "console", "--timestep_sampling", "logsnr"], capsys)
    assert code == 0, err


def test_network_module_choices(files, capsys):
    code, _, err = run_cli(["train", *train_line(files)[:-4], "--network_module", "networks.lora"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == ("Error: --network_module: 'networks.lora' is not one of networks.lora_framepack, "
                           "networks.loha, networks.lokr")
    for module in ("networks.loha", "networks.lokr"):
        line = train_line(files)
        line[line.index("networks.lora_framepack")] = module
        assert_not_built("train", line, capsys)


def test_missing_files_name_flag_and_path(files, tmp_path, capsys):
    missing = str(tmp_path / "nope.safetensors")
    line = train_line(files)
    line[line.index(files["dit"])] = missing
    assert_errors(["train", *line, "--base_weights", missing], capsys,
                  f"--dit: file not found: {missing}", f"--base_weights: file not found: {missing}")
    assert_errors(["cache", "latents", *latents_line(files), "--vae", missing], capsys,
                  f"--vae: file not found: {missing}")
    assert_errors(["cache", "text", *text_line(files), "--tokenizer2", str(tmp_path / "tok")], capsys,
                  f"--tokenizer2: file not found: {tmp_path / 'tok'}")


def test_typo_option_is_one_line(files, capsys):
    code, _, err = run_cli(["train", *train_line(files), "--learning_rat", "1"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: No such option: --learning_rat"), err
    assert "Traceback" not in err


def test_steps_or_ratio_parser():
    assert parse_steps_or_ratio("100", "--x") == 100 and parse_steps_or_ratio("100.0", "--x") == 100
    assert parse_steps_or_ratio("0.1", "--x") == pytest.approx(0.1)
    assert parse_steps_or_ratio("10%", "--x") == pytest.approx(0.1) and parse_steps_or_ratio("0", "--x") == 0
    for bad in ("-1", "abc", "100%", "nan", "2.5"):
        with pytest.raises(ValueError, match="^--x: "):
            parse_steps_or_ratio(bad, "--x")
    assert parse_kwargs(["a=1", "b='s'"], "--y", literal=True) == {"a": 1, "b": "s"}
    assert parse_kwargs(["a=[1, 2]"], "--y", literal=False) == {"a": "[1, 2]"}


# ---------------------------------------------------------------------------------------------------------------
# lora and download


def test_lora_commands(files, tmp_path, captured, capsys):
    o = parse(["lora", "inspect", files["lora"], "--json", "--verbose"], captured, capsys)
    assert o.json_output and o.verbose and o.file == files["lora"]
    out = tmp_path / "converted.safetensors"
    o = parse(["lora", "convert", files["lora"], "--to", "diffusers", "--output", out], captured, capsys)
    assert o.to == "diffusers" and not o.overwrite
    o = parse(["lora", "merge", "--dit", files["dit"], "--lora-weight", files["lora"], files["lora"],
               "--lora_multiplier", "0.5", "--output", out, "--dtype", "bfloat16"], captured, capsys)
    assert o.multipliers == [0.5, 0.5] and o.dtype == "bfloat16"


def test_lora_rules(files, tmp_path, capsys):
    missing = str(tmp_path / "nope.safetensors")
    assert_errors(["lora", "inspect", missing], capsys, f"FILE: file not found: {missing}")
    existing = files["prompts"]
    assert_errors(["lora", "convert", files["lora"], "--to", "comfy", "--output", existing], capsys,
                  f"--output: must end in .safetensors, got {existing}",
                  f"--output: file exists: {existing} (pass --overwrite to replace it)")
    assert_errors(["lora", "convert", files["lora"], "--to", "musubi", "--output", files["lora"], "--overwrite"],
                  capsys, f"--output: is the same file as FILE ({files['lora']}); write to a new file")
    assert_not_built("lora convert", [files["lora"], "--to", "musubi", "--output", files["vae"], "--overwrite"],
                     capsys)
    out = str(tmp_path / "merged.safetensors")
    merge = ["lora", "merge", "--dit", files["dit"], "--lora_weight", files["lora"], files["lora"], "--output", out]
    assert_errors([*merge, "--lora_multiplier", "1", "2", "3", "--include_patterns", "a", "b", "c"], capsys,
                  "--lora_multiplier: 3 values for 2 --lora_weight files; give one value for all or at most one per "
                  "file",
                  "--include_patterns: 3 patterns for 2 --lora_weight files; give one for all or one each")
    assert_errors([*merge, "--exclude_patterns", "("], capsys,
                  "--exclude_patterns: invalid regular expression '(' (missing ), unterminated subpattern at "
                  "position 0)")
    assert_errors(["lora", "merge", "--dit", files["dit"], "--output", out], capsys,
                  "--lora_weight: required option is missing")


def test_download(tmp_path, captured, capsys):
    o = parse(["download", "vae", "dit"], captured, capsys)
    assert o.selected_components == ["dit", "vae"] and o.variants == ["framepack"]
    assert o.target_dir == tmp_path / "fp_home" / "models"  # conftest points FRAMEPACK_HOME at tmp_path/fp_home
    o = parse(["download", "all", "--dir", tmp_path / "m"], captured, capsys)
    assert o.selected_components == ["dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizers"]
    assert o.variants == ["framepack", "f1"]
    assert str(o.target_dir) == str(tmp_path / "m")
    o = parse(["download", "--variant", "both", "--components", "tokenizers", "dit,vae", "--models-dir",
               tmp_path / "m", "--dry_run"], captured, capsys)
    assert o.selected_components == ["dit", "vae", "tokenizers"] and o.variants == ["framepack", "f1"]
    assert o.dry_run and o.dit_format == "sharded"
    o = parse(["download", "--dit-format", "single"], captured, capsys)
    assert o.dit_format == "single" and o.variants == ["framepack"] and len(o.selected_components) == 6
    code, _, err = run_cli(["download", "dit2"], capsys)
    assert code == 2 and err.strip() == ("Error: NAME: 'dit2' is not one of all, dit, dit-f1, vae, text-encoder1, "
                                         "text-encoder2, image-encoder, tokenizers")


def test_download_rules(tmp_path, capsys):
    assert_errors(["download", "--components", "dit,unet"], capsys,
                  "--components: 'unet' not among dit, vae, text_encoder1, text_encoder2, image_encoder, tokenizers "
                  "(comma list, e.g. --components dit,vae)")
    assert_errors(["download", "--variant", "f1", "--dit_format", "single"], capsys,
                  "--dit_format single: the FramePack-F1 DiT is published only as sharded "
                  "(lllyasviel/FramePack_F1_I2V_HY_20250503); use --dit_format sharded with --variant f1 or both")
    assert_errors(["download", "vae", "--variant", "f1"], capsys,
                  "NAME... cannot be combined with --components / --variant; use one form "
                  "(e.g. framepack download --variant f1 --components dit,vae)")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_errors(["download", "--models_dir", afile], capsys, f"--models_dir: {afile} is a file, expected a folder")


# ---------------------------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("command,expected", [
    ("train", ["--dataset_config", "--sdpa", "--flash3", "--optimizer_args", "--network_module", "--fp8_scaled",
               "--blocks_to_swap", "--sample_prompts", "--huggingface_repo_id", "--config_file", "Timesteps"]),
    ("cache latents", ["--dataset_config", "--vae", "--image_encoder", "--one_frame_no_4x", "--debug_mode",
                       "--vae_chunk_size", "--vae_dtype", "--image_encoder_dtype"]),
    ("cache text", ["--text_encoder1", "--text_encoder2", "--fp8_llm", "--tokenizer1", "--text_encoder_dtype"]),
    ("lora merge", ["--lora_weight", "--overwrite"]),
    ("download", ["--dir", "--models_dir", "--variant", "--components", "--dit_format", "--dry_run"]),
])
def test_help_lists_options(command, expected, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli([*command.split(), "--help"], capsys)
    assert code == 0, err
    for flag in expected:
        assert flag in out, (flag, out)


def test_train_help_does_not_import_torch():
    script = (
        "import sys\n"
        "from framepack_cli.cli.app import main\n"
        "try:\n"
        "    main(['train', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "framepack_cli", "train", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "--dataset_config" in r.stdout
    assert "typer" in imported and "pydantic" in imported  # the import log was read
    assert "torch" not in imported
