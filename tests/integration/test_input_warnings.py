"""Empty prompts and odd-input warnings through the CLI, on the tiny golden models (48x64 px, 1-2 steps).

- An empty positive prompt (`--prompt ""`, an empty section, a `--from_file` line of options only,
  one-frame and kisekae) is encoded as " ", as musubi-tuner does; an empty negative prompt stays "".
- Odd inputs give one `Warning:` line each on stderr, before the first model loads; normal inputs none.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from framepack_cli.cli.app import main
from tests.conftest import INPUTS, MODELS

pytestmark = pytest.mark.slow

M = MODELS
TE1, TE2 = M / "llava_llama3_tiny.safetensors", M / "clip_l_tiny.safetensors"
MODEL_ARGS = [
    "--dit", M / "dit_single.safetensors", "--vae", M / "vae.safetensors", "--text_encoder1", TE1,
    "--text_encoder2", TE2, "--image_encoder", M / "sigclip_tiny.safetensors",
]
SMALL = ["--video_size", "48", "64", "--infer_steps", "2", "--latent_window_size", "2", "--output_type", "latent"]
START = INPUTS / "start.png"


def cli(command, *args, capsys=None):
    with pytest.raises(SystemExit) as e:
        main([command, *map(str, MODEL_ARGS), *SMALL, *map(str, args)])
    out = capsys.readouterr() if capsys is not None else None
    return e.value.code, out


def latent(path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("latent")


@pytest.fixture(scope="module")
def encode():
    """`encode_prompt` on the same tiny encoders the CLI loads."""
    from framepack_cli.models.text_encoders import (
        encode_prompt,
        load_text_encoder1,
        load_text_encoder2,
        load_tokenizers,
    )

    tok1, tok2 = load_tokenizers(TE1, TE2)
    te1 = load_text_encoder1(TE1, device="cpu", dtype=torch.float32)
    te2 = load_text_encoder2(TE2, device="cpu", dtype=torch.float32)
    return lambda p: encode_prompt(p, te1, tok1, te2, tok2)


@pytest.fixture
def conditioning(monkeypatch):
    """Record the text conditioning every sampler call gets (positive and negative), in call order."""
    import framepack_cli.engine.generate as g
    import framepack_cli.engine.one_frame as o

    seen = []
    for mod in (g, o):
        real = mod.make_model_fn

        def spy(*a, _real=real, **kw):
            seen.append((kw["positive"], kw["negative"]))
            return _real(*a, **kw)

        monkeypatch.setattr(mod, "make_model_fn", spy)
    return seen


def same(cond, ref) -> bool:
    vec, mask, pooler = ref
    return (torch.equal(cond.llama_vec.cpu(), vec.float()) and torch.equal(cond.llama_mask.cpu(), mask)
            and torch.equal(cond.clip_pooler.cpu(), pooler.float()))


# --------------------------------------------------------------------------------------------------------
# empty prompts
# --------------------------------------------------------------------------------------------------------


def test_tiny_encoders_tell_empty_from_space(encode):
    """The tests below could fail: on these encoders "" and " " give different conditioning."""
    assert not same_ref(encode(""), encode(" "))


def same_ref(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("command, extra", [
    ("generate", ["--image_path", START, "--video_sections", "1"]),
    ("one-frame", ["--image_path", START, "--control_image_path", START]),
    ("kisekae", ["--start", START, "--reference", INPUTS / "ref_rgba.png"]),
])
def test_empty_prompt_is_encoded_as_a_space(command, extra, tmp_path, conditioning, encode):
    code, _ = cli(command, "--prompt", "", "--seed", "3", "--save_path", tmp_path, *extra)
    assert code == 0
    assert len(conditioning) == 1
    positive, negative = conditioning[0]
    assert same(positive, encode(" "))
    assert not same(positive, encode(""))
    assert negative is None  # guidance_scale 1: no negative branch


def test_empty_section_prompt_is_encoded_as_a_space(tmp_path, conditioning, encode):
    code, _ = cli("generate", "--prompt", "0:;;;-1:a dog", "--image_path", START, "--video_sections", "2",
                  "--seed", "3", "--save_path", tmp_path)
    assert code == 0
    (last, _), (first, _) = conditioning  # vanilla samples the last section first
    assert same(last, encode("a dog"))
    assert same(first, encode(" "))


def test_empty_negative_prompt_stays_empty(tmp_path, conditioning, encode):
    """The reference encodes an empty --negative_prompt as "" (only the positive prompt becomes " ")."""
    code, _ = cli("generate", "--prompt", "", "--negative_prompt", "", "--guidance_scale", "2", "--image_path",
                  START, "--video_sections", "1", "--seed", "3", "--save_path", tmp_path)
    assert code == 0
    positive, negative = conditioning[0]
    assert same(positive, encode(" ")) and same(negative, encode(""))


def test_empty_prompt_video_equals_space_prompt_video(tmp_path):
    common = ["--image_path", START, "--video_sections", "1", "--seed", "5", "--save_path", tmp_path]
    assert cli("generate", "--prompt", "", "--output_name", "empty", *common)[0] == 0
    assert cli("generate", "--prompt", " ", "--output_name", "space", *common)[0] == 0
    empty, space = latent(tmp_path / "empty_latent.safetensors"), latent(tmp_path / "space_latent.safetensors")
    assert torch.equal(empty, space)


def test_from_file_line_of_options_only_equals_space_prompt(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(" --d 5\n")
    out = tmp_path / "batch"
    code, _ = cli("generate", "--from_file", prompts, "--image_path", START, "--video_sections", "1",
                  "--save_path", out, capsys=capsys)
    assert code == 0
    (batch,) = out.glob("*_5_latent.safetensors")
    assert cli("generate", "--prompt", " ", "--output_name", "space", "--image_path", START, "--video_sections",
               "1", "--seed", "5", "--save_path", tmp_path)[0] == 0
    assert torch.equal(latent(batch), latent(tmp_path / "space_latent.safetensors"))


# --------------------------------------------------------------------------------------------------------
# odd-input warnings
# --------------------------------------------------------------------------------------------------------


def err_lines(out) -> list[str]:
    return [ln.strip() for ln in out.err.splitlines() if ln.strip()]


def test_odd_inputs_warn_once_each_before_any_model_loads(tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.new("RGBA", (12, 10), (200, 10, 10, 128)).save(tiny)
    prompt = " ".join(["red"] * 300)
    code, out = cli("generate", "--prompt", prompt, "--end_image_path", tiny, "--video_seconds", "0.5",
                    "--seed", "1", "--save_path", tmp_path, capsys=capsys)
    assert code == 0
    lines = err_lines(out)
    warnings = [ln for ln in lines if ln.startswith("Warning:")]
    assert warnings == [
        "Warning: no --image_path: starting from a black image (as musubi-tuner does)",
        f"Warning: --end_image_path {tiny} has an alpha channel; it is dropped and transparent pixels keep their "
        "colour (as musubi-tuner does)",
        f"Warning: --end_image_path {tiny} is 12x10; it is upscaled 5.3x to cover 64x48 (width x height), expect "
        "a soft, blurry picture",
        "Warning: --video_seconds 0.5 rounds to 2 sections of 2 latent frames: the video will be 0.57 s (17 frames at "
        "30 fps); --video_sections N sets the count directly",
        "Warning: --prompt is too long: LLaMA keeps 256 of its 302 tokens (the last 46 are dropped); CLIP-L keeps "
        "77 of its 302 tokens incl. BOS/EOS (the last 225 are dropped)",
    ]
    first_load = next(i for i, ln in enumerate(lines) if ln.startswith("Loading"))
    assert all(lines.index(w) < first_load for w in warnings)
    assert "Warning" not in out.out  # stdout carries results only


def test_batch_warnings_name_their_line(tmp_path, capsys):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (64, 48), (1, 2, 3, 0)).save(rgba)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a cat --d 1 --i {rgba}\na dog --d 2 --i {START}\n")
    code, out = cli("generate", "--from_file", prompts, "--video_sections", "1", "--save_path", tmp_path,
                    capsys=capsys)
    assert code == 0
    assert [ln for ln in err_lines(out) if "Warning" in ln] == [
        f"prompts.txt line 1: Warning: --image_path {rgba} has an alpha channel; it is dropped and transparent "
        "pixels keep their colour (as musubi-tuner does)"
    ]


@pytest.mark.parametrize("command, extra", [
    ("generate", ["--image_path", START, "--end_image_path", INPUTS / "end.png", "--video_seconds", "0.6"]),
    # the reference image's alpha channel is its mask: used, not dropped
    ("kisekae", ["--start", START, "--reference", INPUTS / "ref_rgba.png", "--start-mask",
                 INPUTS / "start_mask.png"]),
    ("one-frame", ["--image_path", START, "--control_image_path", START, INPUTS / "ctrl2.png"]),
])
def test_normal_inputs_give_no_warning(command, extra, tmp_path, capsys):
    code, out = cli(command, "--prompt", "a girl in a red dress", "--seed", "2", "--save_path", tmp_path, *extra,
                    capsys=capsys)
    assert code == 0
    assert "Warning" not in out.err + out.out
