"""The inline prompt-line syntax of --from_file / --interactive."""

from __future__ import annotations

import pytest

from framepack_cli.options.prompt_line import job_values, parse_prompt_line


def test_parse_all_options():
    got = parse_prompt_line("A cat: walks --w 640 --h 480 --f 2.5 --d 7 --s 10 --g 1.5 --fs 3 --i a b.png --n ugly "
                            "--vs 3 --ei end.png --ci c1.png --ci c2.png --cim m1.png --of target_index=1,no_2x")
    assert got == {
        "prompt": "A cat: walks", "width": 640, "height": 480, "video_seconds": 2.5, "seed": 7, "infer_steps": 10,
        "guidance_scale": 1.5, "flow_shift": 3.0, "image_path": "a b.png", "negative_prompt": "ugly",
        "video_sections": 3, "end_image_path": "end.png", "control_image_path": ["c1.png", "c2.png"],
        "control_image_mask_path": ["m1.png"], "one_frame_inference": "target_index=1,no_2x",
    }
    assert parse_prompt_line("x --l 2")["guidance_scale"] == 2.0
    assert parse_prompt_line("0:a;;;-1:b --d 1")["prompt"] == "0:a;;;-1:b"
    assert parse_prompt_line("a dash-separated--word prompt") == {"prompt": "a dash-separated--word prompt"}


@pytest.mark.parametrize("line, msg", [
    ("x --zz 1", "unknown inline option --zz"),
    ("x --d", "--d needs a value"),
    ("x --d seven", "--d: expected int, got 'seven'"),
])
def test_errors(line, msg):
    with pytest.raises(ValueError, match=msg):
        parse_prompt_line(line)


@pytest.mark.parametrize("line", ["--d 1", " --d 1", "   --d 1  "])
def test_options_only_line_has_an_empty_prompt(line):
    assert parse_prompt_line(line) == {"prompt": "", "seed": 1}


def test_job_values_merges_size():
    base = {"prompt": "p", "video_size": (256, 256), "from_file": "x.txt", "seed": 3}
    v = job_values(base, {"prompt": "q", "width": 640}, (256, 256))
    assert v == {"prompt": "q", "video_size": (256, 640), "seed": 3}
