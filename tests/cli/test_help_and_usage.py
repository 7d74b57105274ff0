"""Help, usage and bad-value messages of every command (issue #9).

- `--help` keeps every flag name whole at 80 columns and in a pipe; required and not-built options say so.
- A command given nothing, or missing an argument, exits 2 with its usage line on stderr; a group without its
  command prints its help on stderr, exit 2; `--help` prints on stdout, exit 0.
- Bad values name the flag, quote the value and say the expected form, in one line, exit 2.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from framepack_cli.cli.app import main
from framepack_cli.cli.commands import COMMANDS, load_options
from framepack_cli.options.fields import field_cli
from tests.conftest import MODELS

M = MODELS
BASE = [
    "--dit", M / "dit_single.safetensors", "--vae", M / "vae.safetensors",
    "--text_encoder1", M / "text_encoder/model-00001-of-00002.safetensors",
    "--text_encoder2", M / "clip_l_tiny.safetensors", "--image_encoder", M / "sigclip_tiny.safetensors",
]
COMMAND_NAMES = [" ".join(spec.path) for spec in COMMANDS]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def spec_of(command: str):
    return next(s for s in COMMANDS if " ".join(s.path) == command)


def shown_names(options_cls) -> list[str]:
    """Every flag (and argument name) help must show: all non-hidden fields and their aliases."""
    names = []
    for name, field in options_cls.model_fields.items():
        meta = field_cli(field)
        if meta.get("hidden"):
            continue
        if meta.get("argument"):
            names.append(meta.get("metavar") or name.upper())
        else:
            names += ["--" + name, *meta.get("aliases", ())]
    return names


def help_entries(text: str) -> dict[str, str]:
    """`--flag` -> its help text (continuation lines joined, whitespace normalised)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (--?\w[\w-]*)", line)
        if m and m.group(1) not in entries:  # the first one: examples in the epilog come later
            current = m.group(1)
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def whole(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


# ---------------------------------------------------------------------------------------------------------------
# 1. help keeps names whole


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_help_at_80_columns_keeps_every_flag_whole(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli([*command.split(), "--help"], capsys)
    assert code == 0 and err == ""
    assert "…" not in out
    cut = [n for n in shown_names(load_options(spec_of(command))) if not whole(n, out)]
    assert not cut, cut


def test_help_in_a_pipe_at_80_columns_keeps_every_flag_whole():
    """Not a tty (a pipe), narrow: the long train and generate flags are whole, nothing is cut."""
    for command in ("generate", "train"):
        r = subprocess.run([sys.executable, "-m", "framepack_cli", command, "--help"], capture_output=True, text=True,
                           env={"COLUMNS": "80", "PATH": "", "PYTHONPATH": sys.path[0]}, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "…" not in r.stdout
        names = shown_names(load_options(spec_of(command)))
        assert [n for n in names if not whole(n, r.stdout)] == []
    for name in ("--use_pinned_memory_for_block_swap", "--rope_scaling_timestep_threshold"):
        assert name in help_entries(subprocess.run(
            [sys.executable, "-m", "framepack_cli", "generate", "--help"], capture_output=True, text=True,
            env={"COLUMNS": "80", "PATH": "", "PYTHONPATH": sys.path[0]}, timeout=120).stdout)


def test_lora_inspect_verbose_keeps_key_names_whole(capsys, monkeypatch):
    from framepack_cli.models.lora import describe_lora

    monkeypatch.setenv("COLUMNS", "80")
    lora = M / "lora_tiny.safetensors"
    code, out, err = run_cli(["lora", "inspect", lora, "--verbose"], capsys)
    assert code == 0, err
    assert "…" not in out
    info = describe_lora(str(lora), verbose=True)
    lines = out.splitlines()
    for m in info["modules"]:
        # one line per module: its FramePack name and the key it came from, both whole
        assert any(line.split()[:1] == [m["module"]] and line.endswith(f"<- {m['source']}") for line in lines), m
    for key, value in info["metadata"].items():
        assert any(line.split(None, 1) == [key, value] for line in lines), key


# ---------------------------------------------------------------------------------------------------------------
# 2. required and not-built marks


def test_generate_help_marks_required_models(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run_cli(["generate", "--help"], capsys)
    entries = help_entries(out)
    for flag in ("--dit", "--vae", "--text_encoder1", "--text_encoder2", "--image_encoder"):
        # found by model resolution when not given (a missing one is one line with the download command)
        assert "required" not in entries[flag] and entries[flag].endswith(
            "Default: the downloaded one (see --models_dir)."), flag
    assert entries["--prompt"].endswith(
        "[required unless --from_file, --interactive, --latent_path or --save_merged_model]")
    assert entries["--save_path"].endswith("[required]")
    assert "required" not in entries["--tokenizer1"] and "required" not in entries["--end_image_path"]
    _, out, _ = run_cli(["cache", "latents", "--help"], capsys)
    entries = help_entries(out)
    assert entries["--vae"].endswith("Default: the downloaded one (see --models_dir).")
    assert entries["--dataset_config"].endswith("[required]")
    assert entries["--debug_mode"].endswith("[not built yet: refused]")
    _, out, _ = run_cli(["train", "--help"], capsys)
    entries = help_entries(out)
    for flag in ("--dataset_config", "--output_dir", "--output_name"):
        assert entries[flag].endswith("[required unless in --config_file or with --show_timesteps]"), flag
    assert "required" not in entries["--dit"]


def _truthy(field):
    from framepack_cli.options.fields import choices_of as _choices
    from framepack_cli.options.fields import unwrap_optional as _unwrap_optional

    tp = _unwrap_optional(field.annotation)
    if tp is bool:
        return True
    if tp is int or int in getattr(tp, "__args__", ()):  # int | Literal["auto"]: a number
        return 1
    if tp is float:
        return 0.5
    choices = _choices(tp)
    if choices:
        return choices[-1]
    return ["x"] if getattr(tp, "__origin__", None) is list else "x"


@pytest.mark.parametrize("command", ["generate", "one-frame", "kisekae"])
def test_not_built_marks_match_what_the_engine_refuses(command, capsys, monkeypatch):
    """The engine refuses no generate option as not built any more, and help marks none."""
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run_cli([command, "--help"], capsys)
    entries = help_entries(out)
    marked = [f for f, text in entries.items() if text.endswith("[not built yet: refused]")]
    assert marked == []  # every generate option is built
    assert not {"--fp8", "--fp8_scaled", "--fp8_fast", "--blocks_to_swap", "--use_pinned_memory_for_block_swap",
                "--magcache_mag_ratios", "--magcache_calibration", "--teacache_thresh", "--compile",
                "--split_attn"} & set(marked)


def test_cache_debug_mode_is_refused_as_marked(tmp_path, capsys):
    toml = tmp_path / "d.toml"
    toml.write_text("")
    code, _, err = run_cli(["cache", "latents", "--dataset_config", toml, "--debug_mode", "console"], capsys)
    assert code == 2 and "--debug_mode: dataset previews are not built yet" in err


def test_train_asks_for_its_required_options(capsys):
    code, out, err = run_cli(["train"], capsys)
    assert code == 2 and out == ""
    # --dit is not asked for: model resolution finds a downloaded DiT (or names the download command)
    assert err.splitlines()[-1] == ("Error: missing --dataset_config, --output_dir, --output_name (see "
                                    "`framepack train --help`)")


def test_train_not_built_marks_match_what_the_engine_refuses(capsys, monkeypatch):
    from framepack_cli.engine.train import refuse_unbuilt
    from framepack_cli.errors import NotBuiltError

    monkeypatch.setenv("COLUMNS", "80")
    options = load_options(spec_of("train"))
    _, out, _ = run_cli(["train", "--help"], capsys)
    entries = help_entries(out)
    refused = []
    for name, field in options.model_fields.items():
        opts = options.model_construct(**{name: _truthy(field)})
        try:
            refuse_unbuilt(opts)
        except NotBuiltError:
            refused.append("--" + name)
    marked = [f for f, text in entries.items() if text.endswith("[not built yet: refused]")]
    assert sorted(refused) == sorted(marked)
    assert not {"--compile", "--dynamo_backend", "--flash3", "--fp8_base", "--fp8_scaled", "--blocks_to_swap",
                "--use_pinned_memory_for_block_swap", "--block_swap_h2d_only", "--block_swap_ring_size"} & set(marked)


def test_download_is_built_and_documented(capsys):
    """`framepack download` runs (no refusal before parsing); its help names the catalog's choices."""
    code, out, err = run_cli(["download", "dit2"], capsys)
    assert code == 2 and out == ""
    assert err.strip() == ("Error: NAME: 'dit2' is not one of all, dit, dit-f1, vae, text-encoder1, text-encoder2, "
                           "image-encoder, tokenizers")
    code, out, err = run_cli(["download", "--help"], capsys)
    assert code == 0 and err == ""
    for flag in ("--variant", "--models_dir", "--components", "--dit_format", "--dry_run"):
        assert flag in out
    _, out, _ = run_cli(["--help"], capsys)
    assert "Not built" not in help_entries_commands(out)["download"]


def help_entries_commands(text: str) -> dict[str, str]:
    section = text.split("Commands:\n", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        m = re.match(r"^  ([\w-]+)\s", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current:
            entries[current] += " " + line
    return {k: " ".join(v.split()) for k, v in entries.items()}


# ---------------------------------------------------------------------------------------------------------------
# 3. missing input: exit 2 with usage


@pytest.mark.parametrize("args, expected", [
    (["inspect"], ["Usage: framepack inspect [OPTIONS] PATH", "Error: missing PATH (see `framepack inspect --help`)"]),
    (["lora", "inspect"], ["Usage: framepack lora inspect [OPTIONS] FILE",
                           "Error: missing FILE (see `framepack lora inspect --help`)"]),
    (["generate"], ["Usage: framepack generate [OPTIONS]",
                    "Error: missing --prompt, --save_path (see `framepack generate --help`)"]),
    (["cache", "text"], ["Usage: framepack cache text [OPTIONS]",
                         "Error: missing --dataset_config (see `framepack cache text --help`)"]),
    (["inspect", "--json"], ["Usage: framepack inspect [OPTIONS] PATH",
                             "Error: Missing argument 'PATH'. (see `framepack inspect --help`)"]),
])
def test_missing_input_exits_2_with_usage(args, expected, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == expected


@pytest.mark.parametrize("args", [[], ["lora"], ["cache"]])
def test_group_without_command_prints_help_on_stderr_exit_2(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"Usage: framepack {' '.join([*args, ''])}[OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in err


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["generate", "--help"], ["lora", "--help"],
                                  ["inspect", "-h"]])
def test_help_exits_0_on_stdout(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 0 and err == ""
    assert out.startswith("Usage: framepack")


# ---------------------------------------------------------------------------------------------------------------
# 4. bad values: flag, value, expected form


@pytest.mark.parametrize("extra, expected", [
    (["--seed", "abc"], "--seed: 'abc' is not an integer"),
    (["--infer_steps", "1.5"], "--infer_steps: '1.5' is not an integer"),
    (["--infer_steps", "0"], "--infer_steps: '0' is too small; expected a value >= 1"),
    (["--crf", "52"], "--crf: '52' is too large; expected a value <= 51"),
    (["--video_seconds", "0"], "--video_seconds: '0' is too small; expected a value > 0"),
    (["--guidance_scale", "x"], "--guidance_scale: 'x' is not a number"),
    (["--output_type", "vid"], "--output_type: 'vid' is not one of video, images, latent, both, latent_images"),
    (["--attn_mode", "foo"], "--attn_mode: 'foo' is not one of auto, torch, sdpa, flash, flash3, sageattn, sage, "
     "xformers"),
    (["--lora_weight", M / "lora_tiny.safetensors", "--lora_multiplier", "0.5", "x"],
     "--lora_multiplier: 'x' is not a number"),
    (["--video_size", "48", "abc"], "--video_size: two numbers: H W (got '48 abc')"),
    (["--video_size", "48,64"], "--video_size: two numbers: H W (got '48,64')"),
    (["--video_size", "48"], "--video_size: two numbers: H W (got '48')"),
    (["--video_size", "48", "--infer_steps", "5"], "--video_size: two numbers: H W (got '48')"),
    (["--video-size", "48", "64", "80"], "--video_size: two numbers: H W (got '48 64 80')"),
    (["--video_size", "--seed", "1"], "--video_size: two numbers: H W (got '')"),
])
def test_bad_value_is_one_line_with_the_value(extra, expected, capsys, tmp_path):
    code, out, err = run_cli(["generate", *BASE, "--prompt", "p", "--save_path", tmp_path, *extra], capsys)
    assert code == 2
    assert err.splitlines() == [f"Error: {expected}"]


def test_bad_values_from_a_train_config_file(tmp_path, capsys, monkeypatch):
    """Values typed in a TOML (not strings) get the same lines; booleans too."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('gradient_checkpointing = "maybe"\nnetwork_dim = 1.5\nlearning_rate = "fast"\n')
    code, _, err = run_cli(["train", "--config_file", cfg], capsys)
    assert code == 2
    assert sorted(err.splitlines()) == [
        "Error: --gradient_checkpointing: 'maybe' is not true or false",
        "Error: --learning_rate: 'fast' is not a number",
        "Error: --network_dim: 1.5 is not an integer",
    ]


def test_render_validation_error_covers_pydantic_types():
    """The generic mapping, on a model of its own: every field benefits, whatever its type."""
    from enum import Enum
    from typing import Literal

    from pydantic import Field, ValidationError

    from framepack_cli.options.base import OptionsBase, cli
    from framepack_cli.options.validation import render_validation_error

    class Color(str, Enum):
        RED = "red"
        BLUE = "blue"

    class Opts(OptionsBase):
        path: str = Field(..., json_schema_extra=cli(argument=True, metavar="FILE"))
        n: int = Field(1, lt=10)
        flag: bool = False
        kind: Literal["a", "b"] = "a"
        color: Color = Color.RED
        pair: tuple[float, float] = (0.0, 0.0)
        names: list[str] = Field(default_factory=list, min_length=2)

    values = {"n": 10, "flag": "maybe", "kind": "c", "color": "green", "pair": ("1", "x", "3"), "names": ["one"],
              "bogus": 1}
    with pytest.raises(ValidationError) as e:
        Opts(**values)
    assert sorted(render_validation_error(e.value, Opts, values)) == sorted([
        "FILE: required argument is missing",
        "--n: 10 is too large; expected a value < 10",
        "--flag: 'maybe' is not true or false",
        "--kind: 'c' is not one of a, b",
        "--color: 'green' is not one of red, blue",
        "--pair: two numbers: FLOAT FLOAT (got '1 x 3')",
        "--names: expected at least 2 value(s), got 1",
        "--bogus: unknown option",
    ])
