"""`--sample_prompts` files (txt / toml / json) and the sample trigger, without models."""

from __future__ import annotations

import json

import pytest

from framepack_cli.errors import FramepackError
from framepack_cli.options.sample_prompts import SamplePrompt, load_sample_prompts, parse_line, should_sample

# The two prompt lines of the reference's docs (training.md §4.15, docs/framepack_1f.md).
DOCS_1 = ("The girl wears a school uniform. --i path/to/start.png --ci path/to/start.png --of "
          "no_2x,no_4x,target_index=1,control_index=0 --d 1111 --f 1 --s 10 --fs 7 --d 1234 --w 384 --h 576")
DOCS_2 = ("The girl wears a school uniform. --i start_with_alpha.png --ci ref_with_alpha.png --ci "
          "start_with_alpha.png --of no_post,no_2x,no_4x,target_index=5,control_index=0;10 --f 1 --s 10 --w 384 "
          "--h 576")


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def errors_of(path) -> list[str]:
    with pytest.raises(FramepackError) as e:
        load_sample_prompts(path)
    return e.value.message.splitlines()


def test_docs_examples(tmp_path):
    p = write(tmp_path, "prompts.txt", f"# kisekaeichi and 1f-mc\n\n{DOCS_1}\n{DOCS_2}\n")
    a, b = load_sample_prompts(p)
    assert (a.index, a.prompt, a.image_path, a.control_image_paths) == (
        0, "The girl wears a school uniform.", "path/to/start.png", ["path/to/start.png"])
    assert a.one_frame == "no_2x,no_4x,target_index=1,control_index=0"
    # a repeated option keeps its last value, as the reference
    assert (a.seed, a.frame_count, a.sample_steps, a.discrete_flow_shift, a.width, a.height) == (
        1234, 1, 10, 7.0, 384, 576)
    assert (a.guidance_scale, a.cfg_scale, a.negative_prompt) == (10.0, None, None)
    assert a.where == f"{p}:3" and a.inline
    assert (b.index, b.where, b.seed) == (1, f"{p}:4", None)
    assert b.control_image_paths == ["ref_with_alpha.png", "start_with_alpha.png"]
    assert b.one_frame == "no_post,no_2x,no_4x,target_index=5,control_index=0;10"


def test_txt_all_options_and_defaults(tmp_path):
    p = write(tmp_path, "p.txt", "A cat. --W 640 --h 480 --f 25 --d 1 --s 2000 --g 6.5 --l 3 --n blurry, dark  "
                                 "--i a.png --ei e.png --cn c.mp4 --ci x.png --of default\nplain prompt\n")
    a, b = load_sample_prompts(p)
    assert (a.prompt, a.width, a.height, a.frame_count, a.seed, a.sample_steps) == ("A cat.", 640, 480, 25, 1, 1000)
    assert (a.guidance_scale, a.cfg_scale, a.negative_prompt) == (6.5, 3.0, "blurry, dark")
    assert (a.image_path, a.end_image_path, a.control_video_path, a.control_image_paths, a.one_frame) == (
        "a.png", "e.png", "c.mp4", ["x.png"], "default")
    assert a.flag("width") == "--w"
    assert b == SamplePrompt(index=1, prompt="plain prompt", where=f"{p}:2", given=frozenset({"prompt"}))
    assert (b.width, b.height, b.frame_count, b.sample_steps, b.guidance_scale, b.seed) == (256, 256, 1, 20, 10.0, None)
    assert parse_line("x --s 0")[0]["sample_steps"] == 1  # clamped to 1..1000 as the reference


def test_txt_bad_lines_exact(tmp_path):
    p = write(tmp_path, "p.txt", "ok --w 64\n# comment\nA --w abc --x 1\nB --d\nC --l nan --d -3\n")
    known = "--w --h --f --d --s --g --fs --l --n --i --ei --cn --ci --of"
    assert errors_of(p) == [
        f"--sample_prompts {p}:3: --w: 'abc' is not a whole number",
        f"--sample_prompts {p}:3: unknown inline option --x (known: {known})",
        f"--sample_prompts {p}:4: --d needs a value",
        f"--sample_prompts {p}:5: --l: 'nan' is not a finite number",
        f"--sample_prompts {p}:5: --d: seed -3 is outside 0..2^64-1",
    ]


def test_empty_and_wrong_files(tmp_path):
    p = write(tmp_path, "p.txt", "# only a comment\n\n")
    assert errors_of(p) == [f"--sample_prompts: {p} holds no prompts (only empty lines and # comments)"]
    assert errors_of(tmp_path / "missing.txt") == [f"--sample_prompts: file not found: {tmp_path / 'missing.txt'}"]
    y = write(tmp_path, "p.yaml", "x")
    assert errors_of(y) == [f"--sample_prompts: expected a .txt, .toml or .json file, got {y}"]


def test_toml_subsets_merge_shared_keys(tmp_path):
    p = write(tmp_path, "p.toml", """
[prompt]
width = 384
height = 576
sample_steps = 10
image_path = "start.png"

  [[prompt.subset]]
  prompt = "first"
  seed = 1
  control_image_path = ["a.png", "b.png"]

  [[prompt.subset]]
  prompt = "second"
  one_frame = "no_2x,no_4x"
  cfg_scale = 4
  negative_prompt = "ugly"
""")
    a, b = load_sample_prompts(p)
    assert (a.index, a.prompt, a.width, a.height, a.sample_steps, a.seed, a.image_path) == (
        0, "first", 384, 576, 10, 1, "start.png")
    assert a.control_image_paths == ["a.png", "b.png"] and not a.inline and a.flag("width") == "width"
    assert (b.index, b.prompt, b.one_frame, b.cfg_scale, b.negative_prompt, b.seed) == (
        1, "second", "no_2x,no_4x", 4.0, "ugly", None)
    assert a.where == f"{p} [[prompt.subset]] 1"


def test_toml_errors_exact(tmp_path):
    p = write(tmp_path, "p.toml", '[prompt]\nwidth = 64\n[[prompt.subset]]\nprompt = "a"\nwidth = 32\n')
    assert errors_of(p) == [f"--sample_prompts {p} [[prompt.subset]] 1: 'width' given both in [prompt] and in "
                            "this subset; give each key in one place"]
    p = write(tmp_path, "p.toml", '[prompt]\nwidth = 64\n')
    assert errors_of(p) == [f"--sample_prompts {p}: expected a [prompt] table with [[prompt.subset]] entries "
                            "(one per prompt)"]
    p = write(tmp_path, "p.toml", '[prompt]\n[[prompt.subset]]\nprompt = "a"\nwidht = 32\nheight = "big"\n')
    known = ("prompt, width, height, frame_count, seed, sample_steps, guidance_scale, discrete_flow_shift, cfg_scale, "
             "negative_prompt, image_path, end_image_path, control_video_path, one_frame, control_image_path")
    assert errors_of(p) == [
        f"--sample_prompts {p} [[prompt.subset]] 1: unknown key(s) 'widht' (known: {known})",
        f"--sample_prompts {p} [[prompt.subset]] 1: height: 'big' is not a whole number",
    ]
    p = write(tmp_path, "p.toml", '[prompt\n')
    (line,) = errors_of(p)
    assert line.startswith(f"--sample_prompts {p}: not valid TOML (") and "line 1" in line


def test_json_dicts_and_strings(tmp_path):
    p = write(tmp_path, "p.json", json.dumps([
        {"prompt": "a dict", "width": 128, "frame_count": 37, "control_image_path": "one.png", "enum": 7},
        "a line --w 64 --d 3",
    ]))
    a, b = load_sample_prompts(p)
    assert (a.index, a.prompt, a.width, a.frame_count, a.control_image_paths, a.where) == (
        0, "a dict", 128, 37, ["one.png"], f"{p} entry 1")
    assert (b.index, b.prompt, b.width, b.seed, b.inline) == (1, "a line", 64, 3, True)


def test_json_errors_exact(tmp_path):
    p = write(tmp_path, "p.json", '[\n {"prompt": "a"},\n {"prompt": "b",}\n]')
    (line,) = errors_of(p)
    assert line.startswith(f"--sample_prompts {p}:3: not valid JSON (")
    p = write(tmp_path, "p.json", json.dumps({"prompt": "a"}))
    assert errors_of(p) == [f"--sample_prompts {p}: expected a JSON list of prompts (strings or objects)"]
    p = write(tmp_path, "p.json", json.dumps([{"prompt": "a", "seed": True}, 5, "x --zz 1"]))
    assert errors_of(p)[:2] == [f"--sample_prompts {p} entry 1: seed: True is not a whole number",
                                f"--sample_prompts {p} entry 2: expected a prompt string or an object, got 5"]
    assert errors_of(p)[2].startswith(f"--sample_prompts {p} entry 3: unknown inline option --zz")


@pytest.mark.parametrize("step, epoch, first, n_steps, n_epochs, want", [
    (0, None, False, 10, None, False), (0, None, True, None, None, True),
    (10, None, False, 10, None, True), (11, None, False, 10, None, False),
    (11, 2, False, None, 2, True), (11, 3, False, None, 2, False), (20, 3, False, 10, 2, True),
])
def test_should_sample(step, epoch, first, n_steps, n_epochs, want):
    assert should_sample(step, epoch, sample_at_first=first, every_n_steps=n_steps, every_n_epochs=n_epochs) is want
