"""Odd-input warnings (one exact line each, none for normal inputs) and the empty-prompt encoding rule.

Everything here stops before a model loads: jobs are built from validated options and asked for their
notes and prompts; images are synthetic PNGs written to tmp_path.
"""

from __future__ import annotations

import pytest
from PIL import Image

from framepack_cli.engine.generate import VideoJob
from framepack_cli.engine.input_notes import BLACK_SIGLIP, BLACK_START, seconds_note
from framepack_cli.engine.one_frame import OneFrameJob
from framepack_cli.models.text_encoders import positive_prompt
from framepack_cli.options.generate import GenerateOptions, KisekaeOptions, OneFrameOptions
from tests.conftest import INPUTS, MODELS

MODEL_VALUES = {
    "dit": str(MODELS / "dit_single.safetensors"), "vae": str(MODELS / "vae.safetensors"),
    "text_encoder1": str(MODELS / "text_encoder"), "text_encoder2": str(MODELS / "text_encoder_2"),
    "image_encoder": str(MODELS / "sigclip_tiny.safetensors"),
}
START = str(INPUTS / "start.png")  # RGB, larger than the targets used here


def opts(cls=GenerateOptions, **kw):
    values = {**MODEL_VALUES, "prompt": "a cat", "video_size": (48, 64), "save_path": "out", **kw}
    return cls(**values)


def png(tmp_path, name, size, mode="RGB"):
    path = tmp_path / name
    Image.new(mode, size, (120, 40, 200, 128)[: len(mode)] if mode != "L" else 90).save(path)
    return str(path)


# --------------------------------------------------------------------------------------------------------
# empty prompts are encoded as " " (musubi: `args.prompt if args.prompt else " "`)
# --------------------------------------------------------------------------------------------------------


def test_positive_prompt_rule():
    assert positive_prompt("") == " "
    assert positive_prompt(None) == " "
    assert positive_prompt("a cat") == "a cat"
    assert positive_prompt("   ") == "   "  # a non-empty prompt is encoded as given, as the reference does


def test_video_job_encodes_an_empty_prompt_as_a_space():
    job = VideoJob(opts(prompt="", image_path=START, video_sections=2))
    assert job.prompts() == [" ", " "]
    assert set(job.section_prompt.values()) == {" "}


def test_video_job_encodes_an_empty_section_prompt_as_a_space():
    job = VideoJob(opts(prompt="0:;;;1:a dog", image_path=START, video_sections=2))
    assert job.section_prompt == {0: " ", 1: "a dog"}


@pytest.mark.parametrize("cls, extra", [
    (OneFrameOptions, {"control_image_path": [START]}),
    (KisekaeOptions, {"start": START, "reference": START}),
])
def test_one_frame_and_kisekae_encode_an_empty_prompt_as_a_space(cls, extra):
    job = OneFrameJob(opts(cls, prompt="", image_path=START, **extra))
    assert job.prompts() == [" "]


# --------------------------------------------------------------------------------------------------------
# images: black start, dropped alpha, tiny upscales
# --------------------------------------------------------------------------------------------------------


def test_normal_video_inputs_give_no_warning():
    assert VideoJob(opts(image_path=START)).notes() == []
    assert VideoJob(opts(image_path=START, end_image_path=START, video_sections=3)).notes() == []


def test_no_image_path_starts_from_black():
    assert VideoJob(opts()).notes() == [BLACK_START]
    assert BLACK_START == "Warning: no --image_path: starting from a black image (as musubi-tuner does)"


def test_rgba_start_and_end_images_say_the_alpha_is_dropped(tmp_path):
    rgba = png(tmp_path, "rgba.png", (64, 48), "RGBA")
    la = png(tmp_path, "la.png", (64, 48), "LA")
    tail = "has an alpha channel; it is dropped and transparent pixels keep their colour (as musubi-tuner does)"
    assert VideoJob(opts(image_path=rgba, end_image_path=la)).notes() == [
        f"Warning: --image_path {rgba} {tail}",
        f"Warning: --end_image_path {la} {tail}",
    ]


def test_each_section_image_is_checked_once_in_time_order(tmp_path):
    a, b = png(tmp_path, "a.png", (64, 48), "RGBA"), png(tmp_path, "b.png", (64, 48), "RGBA")
    job = VideoJob(opts(image_path=f"{START}|{a}|{b}|{b}", video_sections=4))
    tail = "has an alpha channel; it is dropped and transparent pixels keep their colour (as musubi-tuner does)"
    assert job.notes() == [f"Warning: --image_path {a} {tail}", f"Warning: --image_path {b} {tail}"]


def test_tiny_image_upscaled_more_than_4x(tmp_path):
    tiny = png(tmp_path, "tiny.png", (12, 10))
    assert VideoJob(opts(image_path=tiny)).notes() == [
        f"Warning: --image_path {tiny} is 12x10; it is upscaled 5.3x to cover 64x48 (width x height), "
        "expect a soft, blurry picture"
    ]


def test_upscale_of_exactly_4x_is_not_warned(tmp_path):
    assert VideoJob(opts(image_path=png(tmp_path, "q.png", (16, 12)))).notes() == []  # 64/16 = 48/12 = 4


def test_one_frame_control_alpha_used_as_mask_is_not_warned(tmp_path):
    rgba = png(tmp_path, "ref.png", (64, 48), "RGBA")
    job = OneFrameJob(opts(OneFrameOptions, image_path=START, control_image_path=[START, rgba]))
    assert job.notes() == []
    kisekae = OneFrameJob(opts(KisekaeOptions, start=START, reference=rgba,
                               start_mask=str(INPUTS / "start_mask.png")))
    assert kisekae.notes() == []


def test_one_frame_control_alpha_replaced_by_a_mask_file_is_warned(tmp_path):
    rgba = png(tmp_path, "ref.png", (64, 48), "RGBA")
    mask = png(tmp_path, "mask.png", (64, 48), "L")
    job = OneFrameJob(opts(OneFrameOptions, image_path=START, control_image_path=[rgba],
                           control_image_mask_path=[mask]))
    assert job.notes() == [f"Warning: --control_image_path {rgba} has an alpha channel; it is not used, "
                           f"--control_image_mask_path {mask} is this image's mask"]
    kisekae = OneFrameJob(opts(KisekaeOptions, start=START, reference=rgba, reference_mask=mask))
    assert kisekae.notes() == [f"Warning: --reference {rgba} has an alpha channel; it is not used, "
                               f"--reference-mask {mask} is this image's mask"]


def test_one_frame_image_path_alpha_is_dropped_for_the_image_encoder(tmp_path):
    rgba = png(tmp_path, "start.png", (64, 48), "RGBA")
    job = OneFrameJob(opts(OneFrameOptions, image_path=rgba, control_image_path=[START]))
    assert job.notes() == [f"Warning: --image_path {rgba} has an alpha channel; it is dropped and transparent "
                           "pixels keep their colour (as musubi-tuner does)"]


def test_one_frame_without_image_path_gives_the_image_encoder_black():
    job = OneFrameJob(opts(OneFrameOptions, control_image_path=[START]))
    assert job.notes() == [BLACK_SIGLIP]
    assert BLACK_SIGLIP == ("Warning: no --image_path: the image encoder sees a black image (as musubi-tuner does); "
                            "pass --image_path with the start image to condition on it")


def test_one_frame_tiny_control_image(tmp_path):
    tiny = png(tmp_path, "tiny.png", (8, 8))
    job = OneFrameJob(opts(OneFrameOptions, image_path=START, control_image_path=[tiny]))
    assert job.notes() == [f"Warning: --control_image_path {tiny} is 8x8; it is upscaled 8.0x to cover 64x48 "
                           "(width x height), expect a soft, blurry picture"]


# --------------------------------------------------------------------------------------------------------
# --video_seconds rounding
# --------------------------------------------------------------------------------------------------------


def test_video_seconds_rounding_to_a_different_length():
    job = VideoJob(opts(image_path=START, video_seconds=1.5))
    assert job.notes() == [
        "Warning: --video_seconds 1.5 rounds to 1 section of 9 latent frames: the video will be 1.23 s "
        "(37 frames at 30 fps); --video_sections N sets the count directly"
    ]
    job = VideoJob(opts(image_path=START, video_seconds=0.2, latent_window_size=4))
    assert job.notes() == [
        "Warning: --video_seconds 0.2 rounds to 1 section of 4 latent frames: the video will be 0.57 s "
        "(17 frames at 30 fps); --video_sections N sets the count directly"
    ]


def test_video_seconds_at_another_fps_says_sections_are_counted_at_30():
    job = VideoJob(opts(image_path=START, video_seconds=5, fps=24))
    assert job.notes() == [
        "Warning: --video_seconds 5 rounds to 4 sections of 9 latent frames (sections are counted at 30 fps): "
        "the video will be 6.04 s (145 frames at 24 fps); --video_sections N sets the count directly"
    ]


@pytest.mark.parametrize("kw", [
    {},  # the default 5 s: 4.83 s
    {"video_seconds": 5.0},
    {"video_seconds": 10.0},  # 9.63 s
    {"video_seconds": 1.5, "video_sections": 2},  # the count is given: nothing is rounded
    {"video_sections": 1, "fps": 12},
])
def test_video_seconds_close_enough_or_not_used_is_not_warned(kw):
    assert seconds_note(opts(image_path=START, **kw), VideoJob(opts(image_path=START, **kw)).n) is None


# --------------------------------------------------------------------------------------------------------
# prompts longer than the encoders keep
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers():
    from framepack_cli.models.text_encoders import load_tokenizers

    return load_tokenizers(MODELS / "text_encoder", MODELS / "text_encoder_2")


def words(n):
    # CLIP: one token per word; LLaMA: one per word, and the first "red" after the template is 2 ("re" "d")
    return " ".join(["red"] * n)


def test_long_prompt_says_how_many_tokens_each_encoder_drops(tokenizers):
    from framepack_cli.engine.input_notes import prompt_length_notes

    tok1, tok2 = tokenizers
    notes = prompt_length_notes([("--prompt", words(300)), ("--negative_prompt", words(100))], tok1, tok2,
                                custom_system_prompt=None)
    assert notes == [
        "Warning: --prompt is too long: LLaMA keeps 256 of its 302 tokens (the last 46 are dropped); "
        "CLIP-L keeps 77 of its 302 tokens incl. BOS/EOS (the last 225 are dropped)",
        "Warning: --negative_prompt is too long: CLIP-L keeps 77 of its 102 tokens incl. BOS/EOS "
        "(the last 25 are dropped)",
    ]
    assert prompt_length_notes([("--prompt", words(75))], tok1, tok2, custom_system_prompt=None) == []


def test_token_counts_match_what_encoding_keeps(tokenizers):
    """The LLaMA count is the length encode_llama gives when nothing is cut, and 256 when it is."""
    import torch

    from framepack_cli.models.text_encoders import encode_llama, load_text_encoder1, prompt_overflow

    tok1, tok2 = tokenizers
    te1 = load_text_encoder1(MODELS / "text_encoder", device="cpu", dtype=torch.float32)
    assert prompt_overflow(words(254), tok1, tok2).keys() == {"CLIP-L"}  # 255 tokens + <|eot_id|>: all kept
    assert encode_llama(words(254), te1, tok1).shape[1] == 256
    assert encode_llama(words(200), te1, tok1).shape[1] == 202
    assert prompt_overflow(words(255), tok1, tok2)["LLaMA"] == (257, 256)
    assert encode_llama(words(255), te1, tok1).shape[1] == 256
    system = "Describe it."
    n, kept = prompt_overflow(words(300), tok1, tok2, custom_system_prompt=system, max_length=100)["LLaMA"]
    assert (n, kept) == (302, 100)
    assert encode_llama(words(30), te1, tok1, custom_system_prompt=system, max_length=100).shape[1] == 32
    assert encode_llama(words(300), te1, tok1, custom_system_prompt=system, max_length=100).shape[1] == 100
    assert tok2(words(75), truncation=True, max_length=77)["input_ids"] == tok2(words(75))["input_ids"]
    assert prompt_overflow(words(75), tok1, tok2) == {} and "CLIP-L" in prompt_overflow(words(76), tok1, tok2)
