"""The Generate form's seeds, section timeline and LoRA picker (framepack_cli.ui.form): pure functions, no Gradio."""

from __future__ import annotations

import pytest

from framepack_cli.errors import FramepackError
from framepack_cli.plan.sections import num_sections
from framepack_cli.ui.form import (
    MAX_SEED,
    list_loras,
    lora_options,
    parse_seeds,
    section_count,
    timeline_options,
    timeline_rows,
)

pytestmark = pytest.mark.ui


def message(exc_info) -> str:
    e = exc_info.value
    return f"{e.message}; {e.hint}" if e.hint else e.message


# --- seeds
def test_seed_modes_random_fixed_and_lists():
    (r,) = parse_seeds("random", 42, "")
    assert 0 <= r <= MAX_SEED
    assert parse_seeds("fixed", 42, "1 2") == [42]
    (r,) = parse_seeds("fixed", -1, "")  # -1 stays "random" in the fixed field
    assert 0 <= r <= MAX_SEED
    assert parse_seeds("list", None, "1 2 3") == [1, 2, 3]
    assert parse_seeds("list", None, "10-13") == [10, 11, 12, 13]
    assert parse_seeds("list", None, " 5, 1-2;5  7 ") == [5, 1, 2, 7]  # each seed once, in the order given


@pytest.mark.parametrize("text, want", [
    ("", "Seeds: the list is empty; e.g. 1 2 3 or 10-13"),
    ("1 x 3", "Seeds: 'x' is not a seed or a range; e.g. 1 2 3 or 10-13"),
    ("-3", "Seeds: '-3' is not a seed or a range; e.g. 1 2 3 or 10-13"),
    ("13-10", "Seeds: '13-10' ends before it starts; write 10-13"),
    ("0-1000", "Seeds: '0-1000' is 1001 seeds; at most 100 jobs per click"),
    (f"{MAX_SEED}-{MAX_SEED + 1}", f"Seeds: '{MAX_SEED}-{MAX_SEED + 1}' goes past {MAX_SEED}, the largest seed"),
])
def test_a_bad_seed_list_is_one_line(text, want):
    with pytest.raises(FramepackError) as e:
        parse_seeds("list", None, text)
    assert message(e) == want


def test_an_unknown_seed_mode_is_refused():
    with pytest.raises(FramepackError) as e:
        parse_seeds("lucky", 1, "")
    assert message(e) == "Seed mode: 'lucky' is not one of random, fixed, list"


# --- the timeline
@pytest.mark.parametrize("unit, seconds, sections, window", [
    ("seconds", 5, 2, 9), ("seconds", 1, 2, 9), ("seconds", 10, 2, 5), ("sections", 5, 3, 9), ("sections", 1, 7, 4),
])
def test_one_row_per_section_as_the_engine_counts_them(unit, seconds, sections, window):
    want = num_sections(seconds, window, sections if unit == "sections" else None)
    rows = timeline_rows(unit, seconds, sections, window)
    assert [r[0] for r in rows] == list(range(want)) and section_count(unit, seconds, sections, window) == want
    step = window * 4 / 30
    assert rows[0][1:] == (0.0, round(step, 2)) and rows[-1][2] == round(want * step, 2)


def test_a_half_typed_field_still_gives_a_row():
    assert timeline_rows("seconds", "", 2, 9) == [(0, 0.0, 1.2)]
    assert len(timeline_rows("sections", 5, None, "x")) == 1


def test_filled_rows_become_per_section_prompts_and_images(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    mid = uploads / "mid.png"
    mid.write_bytes(b"\x89PNG\r\n\x1a\n")
    tl = {"prompts": {"1": "a dog", "2": "  ", "7": "past the end"}, "images": {"1": str(mid)}}
    prompt, image = timeline_options(tl, 3, "a cat", "/up/start.png", uploads)
    assert prompt == {0: "a cat", 1: "a dog"}  # the empty row and the one past the video are left out
    assert image == {0: "/up/start.png", 1: str(mid.resolve())}
    assert timeline_options({}, 3, "a cat", "/up/start.png", uploads) == ("a cat", "/up/start.png")
    assert timeline_options({"prompts": {"0": "first"}}, 2, "a cat", None, uploads) == ({0: "first"}, None)


def test_a_timeline_image_outside_the_uploads_is_refused(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    for path in (str(outside), str(uploads / ".." / "secret.png")):
        with pytest.raises(FramepackError) as e:
            timeline_options({"images": {"1": path}}, 2, "p", "/s.png", uploads)
        assert message(e) == "Timeline: the image of section 1 is not an upload of this app; upload it in the " \
                             "section's row"
    with pytest.raises(FramepackError) as e:
        timeline_options({"images": {"1": str(uploads / "gone.png")}}, 2, "p", "/s.png", uploads)
    assert message(e) == "Timeline: the image of section 1 is gone; upload it again"
    (uploads / "x.png").write_bytes(b"x")
    with pytest.raises(FramepackError) as e:
        timeline_options({"images": {"1": str(uploads / "x.png")}}, 2, "p", None, uploads)
    assert message(e) == ("Timeline: section images need a start image (rows without one use it); upload a start "
                          "image, or an image in the first row")


# --- LoRAs
def test_loras_are_listed_from_the_folder_and_picked_with_multipliers(tmp_path):
    folder = tmp_path / "loras"
    (folder / "style").mkdir(parents=True)
    for name in ("b.safetensors", "A.safetensors", "style/c.safetensors", "notes.txt", ".hidden.safetensors"):
        (folder / name).write_bytes(b"x")
    assert list_loras(folder) == ["A.safetensors", "b.safetensors", "style/c.safetensors"]
    assert list_loras(tmp_path / "none") == [] and list_loras(None) == []
    got = lora_options(folder, ["b.safetensors", "style/c.safetensors"], {"style/c.safetensors": 0.5})
    assert got == {"lora_weight": [str((folder / "b.safetensors").resolve()),
                                   str((folder / "style" / "c.safetensors").resolve())],
                   "lora_multiplier": [1.0, 0.5]}
    assert lora_options(folder, [], {}) == {} and lora_options(None, None, None) == {}


def test_only_lora_files_inside_the_folder_are_accepted(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    for name in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "link.safetensors"):
        with pytest.raises(FramepackError) as e:
            lora_options(folder, [name], {})
        assert message(e) == (f"LoRAs: {name!r} is not a file of the LoRA folder {folder}; pick one from the list "
                              "(Refresh reads the folder again)")
    with pytest.raises(FramepackError) as e:
        lora_options(folder, ["notes.txt"], {})
    assert message(e) == (f"LoRAs: 'notes.txt' is not a .safetensors file in {folder}; pick one from the list "
                          "(Refresh reads the folder again)")
    (folder / "a.safetensors").write_bytes(b"x")
    with pytest.raises(FramepackError) as e:
        lora_options(folder, ["a.safetensors"], {"a.safetensors": "strong"})
    assert message(e) == "LoRA multiplier of a.safetensors: 'strong' is not a number"
    with pytest.raises(FramepackError) as e:
        lora_options(None, ["a.safetensors"], {})
    assert message(e) == "LoRAs: no LoRA folder; start the app with --lora_dir DIR"
