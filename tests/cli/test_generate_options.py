"""`framepack generate / one-frame / kisekae`: parsing, both spellings, validation messages, exit codes.

The engines behind these commands may or may not be built; every test here stops before a model loads:
either validation fails (exit 2 with exact lines) or the options model is captured by a patched runner.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from framepack_cli.cli.app import main
from tests.conftest import INPUTS, MODELS

M = MODELS
BASE = [
    "--dit", str(M / "dit_single.safetensors"), "--vae", str(M / "vae.safetensors"),
    "--text_encoder1", str(M / "text_encoder/model-00001-of-00002.safetensors"),
    "--text_encoder2", str(M / "clip_l_tiny.safetensors"), "--image_encoder", str(M / "sigclip_tiny.safetensors"),
]


@pytest.fixture
def captured(monkeypatch):
    """Replace the engines' runners: record the validated options instead of running."""
    seen = []
    import framepack_cli.engine.generate as g

    monkeypatch.setattr(g, "run", lambda opts: seen.append(opts))  # generate, one-frame and kisekae
    return seen


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_golden_reference_command_lines_parse(captured, capsys, tmp_path, monkeypatch):
    """Every GENERATOR command line of the golden e2e cases runs as `framepack generate ...`."""
    import json

    from tests.conftest import GOLDEN

    monkeypatch.chdir(GOLDEN)  # the recorded command lines use paths relative to the golden folder
    cases = sorted((GOLDEN / "e2e").glob("*.json"))
    assert cases
    for case in cases:
        cli = json.loads(case.read_text())["cli"]
        assert cli.startswith("GENERATOR ")
        argv = shlex.split(cli.replace("OUTDIR", str(tmp_path)))[1:]
        code, _, err = run_cli(["generate", *argv], capsys)
        assert code == 0, (case.name, err)
    assert len(captured) == len(cases)
    f1 = next(o for o in captured if o.f1)
    assert f1.video_size == (48, 64) and f1.infer_steps == 5 and f1.seed == 42 and f1.video_sections == 3


def test_both_spellings_and_defaults(captured, capsys, tmp_path):
    code, _, err = run_cli(["generate", *BASE, "--prompt", "a cat", "--save-path", tmp_path,
                            "--video-size", "512", "768", "--infer_steps", "7", "--lora-weight",
                            M / "lora_tiny.safetensors", M / "lora_tiny.safetensors", "--lora_multiplier", "0.5",
                            "-0.25"], capsys)
    assert code == 0, err
    (o,) = captured
    assert o.video_size == (512, 768)
    assert o.infer_steps == 7
    assert o.lora_multiplier == [0.5, -0.25]
    assert len(o.lora_weight) == 2
    # reference defaults
    assert (o.video_seconds, o.fps, o.latent_window_size, o.embedded_cfg_scale, o.guidance_scale) == (5.0, 30, 9, 10.0,
                                                                                                      1.0)
    assert (o.output_type, o.sample_solver, o.rope_scaling_factor) == ("video", "unipc", 0.5)
    assert o.attn_mode == "auto"  # ours: the fastest installed kernel (SDPA on CPU, the reference's `torch`)
    assert o.seed is None and o.dtype == "auto"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--video_size", "500", "768"],
         "Error: --video_size: height and width must be positive multiples of 16, got 500 768 (try 496 768)"),
        (["--end_image_path", INPUTS / "end.png", "--f1"],
         "Error: --end_image_path cannot be used with --f1 (F1 generates forward from the start image); drop one of "
         "them"),
        (["--one_frame_inference", "no_2x,bogus"],
         "Error: --one_frame_inference: unknown option 'bogus' (accepted: default, no_2x, no_4x, no_post, "
         "target_index=N, control_index=a;b)"),
        (["--one_frame_inference", "target_index=-1"],
         "Error: --one_frame_inference: target_index must be >= 0, got -1"),
        (["--one_frame_inference", "control_index=0;10;11", "--control_image_path", INPUTS / "start.png"],
         "Error: --one_frame_inference: control_index has 3 entries (0;10;11) for 1 control image(s); expected 1 or 2 "
         "(the extra one sets the index of the zero post latent)"),
        (["--one_frame_inference", "default", "--control_image_path", INPUTS / "start.png",
          "--control_image_mask_path", INPUTS / "start_mask.png", INPUTS / "start_mask.png"],
         "Error: --control_image_mask_path: 2 masks for 1 --control_image_path images (at most one mask per control "
         "image)"),
        (["--infer_steps", "0"], "Error: --infer_steps: '0' is too small; expected a value >= 1"),
        (["--latent_paddings", "3,x"], "Error: --latent_paddings: expected comma-separated integers like '3,2,1,0', "
                                       "got '3,x'"),
        (["--lora_multiplier", "0.5"], "Error: --lora_multiplier given without --lora_weight"),
        (["--include_patterns", "(unclosed"],
         "Error: --include_patterns: invalid regular expression '(unclosed' (missing ), unterminated subpattern at "
         "position 0)"),
        (["--output_type", "gif"], "Error: --output_type: 'gif' is not one of video, images, latent, both, "
                                   "latent_images"),
        (["--infer_steps", "abc"], "Error: --infer_steps: 'abc' is not an integer"),
        (["--qqq_such_flag"], "Error: No such option: --qqq_such_flag (see `framepack generate --help`)"),
        (["--image_path", "0:missing.png;;;-1:" + str(INPUTS / "section.png")],
         "Error: --image_path: file not found: missing.png"),
    ],
)
def test_bad_input_one_line_exit_2(extra, expected, capsys, tmp_path):
    code, out, err = run_cli(["generate", *BASE, "--prompt", "p", "--save_path", tmp_path, *extra], capsys)
    assert code == 2
    assert err.strip().splitlines() == [expected]
    assert "Traceback" not in err + out


def test_all_errors_at_once_and_missing_files_named(capsys, tmp_path):
    code, _, err = run_cli(["generate", "--dit", tmp_path / "nope.safetensors", "--save_path", tmp_path,
                            "--from_file", tmp_path / "p.txt", "--interactive"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert "Error: --from_file and --interactive cannot be combined; pick one" in lines
    assert f"Error: --dit: file not found: {tmp_path / 'nope.safetensors'}" in lines
    # the models neither given nor downloaded: one line with the download command, among the other problems
    # (conftest points FRAMEPACK_HOME and HF_HOME at empty folders)
    assert ("Error: --vae, --text_encoder1, --text_encoder2, --image_encoder: not given and not found (looked in "
            f"$FRAMEPACK_HOME {tmp_path / 'fp_home' / 'models'}, HF cache {tmp_path / 'hf_home' / 'hub'}); fetch with "
            "`framepack download --components vae,text_encoder1,text_encoder2,image_encoder,tokenizers` or pass "
            "--vae / --text_encoder1 / --text_encoder2 / --image_encoder") in lines
    assert not any("required to generate" in line for line in lines)
    assert f"Error: --from_file: file not found: {tmp_path / 'p.txt'}" in lines


def test_save_path_required(capsys):
    code, _, err = run_cli(["generate", *BASE, "--prompt", "p"], capsys)
    assert code == 2
    assert err.strip() == "Error: --save_path: required option is missing"


def test_latent_path_needs_only_vae(captured, capsys, tmp_path):
    lat = tmp_path / "x_latent.safetensors"
    lat.write_bytes(b"0")
    code, _, err = run_cli(["generate", "--latent_path", lat, lat, "--vae", M / "vae.safetensors", "--save_path",
                            tmp_path], capsys)
    assert code == 0, err
    assert captured[0].latent_path == [str(lat), str(lat)]


def test_one_frame_defaults_and_generate_one_frame(captured, capsys, tmp_path):
    code, _, err = run_cli(["one-frame", *BASE, "--prompt", "p", "--save_path", tmp_path, "--image_path",
                            INPUTS / "start.png", "--control_image_path", INPUTS / "start.png"], capsys)
    assert code == 0, err
    spec = captured[0].one_frame
    assert (spec.no_2x, spec.no_4x, spec.no_post, spec.target_index, spec.control_index) == (False, False, False,
                                                                                            None, None)
    code, _, err = run_cli(["generate", *BASE, "--prompt", "p", "--save_path", tmp_path, "--one_frame_inference",
                            "target_index=9,control_index=0;1,no_2x,no_4x", "--control_image_path",
                            INPUTS / "start.png", INPUTS / "ctrl2.png"], capsys)
    assert code == 0, err
    spec = captured[1].one_frame
    assert (spec.no_2x, spec.no_4x, spec.no_post, spec.target_index, spec.control_index) == (True, True, False, 9,
                                                                                            (0, 1))


def test_kisekae_recipe_and_overrides(captured, capsys, tmp_path):
    common = ["kisekae", *BASE, "--prompt", "p", "--save_path", tmp_path, "--start", INPUTS / "start.png",
              "--reference", INPUTS / "ref_rgba.png"]
    code, _, err = run_cli([*common, "--start-mask", INPUTS / "start_mask.png"], capsys)
    assert code == 0, err
    o = captured[0]
    spec = o.one_frame
    assert (spec.target_index, spec.control_index, spec.no_post, spec.no_2x, spec.no_4x) == (1, (0, 10), True, True,
                                                                                            True)
    assert o.control_image_path == [str(INPUTS / "start.png"), str(INPUTS / "ref_rgba.png")]
    assert o.image_path == str(INPUTS / "start.png")
    assert o.start_mask == str(INPUTS / "start_mask.png")
    code, _, err = run_cli([*common, "--one_frame_inference", "target_index=9,control_index=0;13,no_post"], capsys)
    assert code == 0, err
    assert captured[1].one_frame.target_index == 9 and captured[1].one_frame.control_index == (0, 13)

    code, _, err = run_cli(["kisekae", *BASE, "--prompt", "p", "--save_path", tmp_path, "--start",
                            INPUTS / "start.png"], capsys)
    assert code == 2
    assert err.strip() == "Error: --reference is required together with --start"


def test_not_built_engine_says_so(capsys, tmp_path, monkeypatch):
    """A command whose engine is missing refuses in one line with exit 2 after validating."""
    import framepack_cli.engine.generate as g
    from framepack_cli.errors import NotBuiltError

    def refuse(opts):
        raise NotBuiltError("framepack generate: the generation engine is not built yet")

    monkeypatch.setattr(g, "run", refuse)
    code, _, err = run_cli(["generate", *BASE, "--prompt", "p", "--save_path", tmp_path], capsys)
    assert code == 2
    assert err.strip() == "Error: framepack generate: the generation engine is not built yet"


def test_internal_error_is_one_line_without_debug(capsys, tmp_path, monkeypatch):
    import framepack_cli.engine.generate as g

    def boom(opts):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(g, "run", boom)
    code, _, err = run_cli(["generate", *BASE, "--prompt", "p", "--save_path", tmp_path], capsys)
    assert code == 1
    assert err.strip() == "Internal error: RuntimeError: kaboom (run again with --debug for the traceback)"
    with pytest.raises(RuntimeError):
        main(["generate", *map(str, BASE), "--prompt", "p", "--save_path", str(tmp_path), "--debug"])


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys\n"
        "from framepack_cli.cli.app import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['kisekae', '--help'], ['inspect', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "assert 'torch' not in sys.modules, 'torch imported on the help path'\n"
        "print('OK')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("OK")
    assert "--video_size" in subprocess.run(
        [sys.executable, "-m", "framepack_cli", "generate", "--help"], capture_output=True, text=True,
        env={"COLUMNS": "200", "PATH": ""}, timeout=60).stdout


def test_section_syntax_parser():
    from framepack_cli.options.sections import parse_section_values, value_for_section

    assert parse_section_values("0:a;;;1:b;;;-1:c") == {0: "a", 1: "b", -1: "c"}
    assert parse_section_values("1-2:x;;;-1:y: z") == {1: "x", 2: "x", -1: "y: z", 0: "x"}
    assert parse_section_values("-2:x;;;-1:y") == {-2: "x", -1: "y", 0: "x"}
    assert parse_section_values("C:\\img.png") == {0: "C:\\img.png"}
    assert parse_section_values("a cat: walking") == {0: "a cat: walking"}
    assert parse_section_values("a\\|b|c") == {0: "a|b", 1: "c"}
    assert parse_section_values("no index;;;2:two") == {0: "no index", 2: "two"}
    with pytest.raises(ValueError, match="empty entry 2"):
        parse_section_values("a||c")
    with pytest.raises(ValueError, match="start is after end"):
        parse_section_values("3-1:x;;;0:y")
    vals = parse_section_values("0:first;;;1:second;;;-1:last")
    # 3 sections: index 2 is the last one (-1) -> "last"; 1 -> "second"; 0 -> "first"
    assert [value_for_section(vals, i, 3) for i in range(3)] == ["first", "second", "last"]
    assert [value_for_section(parse_section_values("p"), i, 4) for i in range(4)] == ["p"] * 4


def test_shlex_musubi_line(captured, capsys, tmp_path):
    """A musubi command line pasted as is (with `python fpack_generate_video.py` replaced) runs."""
    line = (
        f"--dit {M}/dit_sharded/diffusion_pytorch_model-00001-of-00002.safetensors --vae {M}/vae_official.pt "
        f"--text_encoder1 {M}/llava_llama3_tiny.safetensors --text_encoder2 {M}/text_encoder_2 "
        f"--image_encoder {M}/image_encoder --video_size 832 480 --video_sections 1 --infer_steps 25 "
        "--output_type latent_images --attn_mode sdpa --vae_spatial_tile_sample_min_size 128 --vae_chunk_size 32 "
        f"--seed 1234 --image_path {INPUTS}/start.png --control_image_path {INPUTS}/start.png {INPUTS}/ref_rgba.png "
        "--one_frame_inference target_index=1,control_index=0;10,no_2x,no_4x,no_post "
        f"--control_image_mask_path {INPUTS}/start_mask.png --save_path {tmp_path} --prompt 'The girl'"
    )
    code, _, err = run_cli(["generate", *shlex.split(line)], capsys)
    assert code == 0, err
    assert captured[0].vae_spatial_tile_sample_min_size == 128
