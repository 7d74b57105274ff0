"""Samples during training on the tiny golden models: files and names, the training DiT and its LoRA, RNG and
train-mode hygiene, the checks before training, and parity with `framepack generate` / `one-frame`.

Runs are tiny (32x48 px, 2 steps, window 3).
"""

from __future__ import annotations

import random
import re

import av
import numpy as np
import pytest
import torch
from PIL import Image

from framepack_cli.cli.app import main
from framepack_cli.engine.progress import NullProgress
from framepack_cli.engine.train_samples import TrainingSampler
from framepack_cli.errors import FramepackError
from framepack_cli.models.lora.network import LoraNetwork
from framepack_cli.options.train import TrainOptions
from framepack_cli.options.validation import validate
from tests.conftest import INPUTS, MODEL_ARGS, MODELS

pytestmark = pytest.mark.slow

START = INPUTS / "start.png"
SIZE = "--w 48 --h 32 --s 2"
WINDOW = 3
STAMP = r"\d{14}"


def train_options(tmp_path, prompts: str, name: str = "p.txt", **extra) -> TrainOptions:
    (tmp_path / "dataset.toml").write_text("")
    (tmp_path / name).write_text(prompts)
    values = dict(
        dit=str(MODELS / "dit_single.safetensors"), vae=str(MODELS / "vae.safetensors"),
        text_encoder1=str(MODELS / "llava_llama3_tiny.safetensors"),
        text_encoder2=str(MODELS / "clip_l_tiny.safetensors"), image_encoder=str(MODELS / "sigclip_tiny.safetensors"),
        dataset_config=str(tmp_path / "dataset.toml"), sdpa=True, output_dir=str(tmp_path / "out"),
        output_name="lora", sample_prompts=str(tmp_path / name), latent_window_size=WINDOW,
    )
    return validate(TrainOptions, {**values, **extra})


def sampler(tmp_path, prompts: str, **extra) -> tuple[TrainingSampler, NullProgress]:
    sink = NullProgress()
    s = TrainingSampler(train_options(tmp_path, prompts, **extra), torch.device("cpu"), sink)
    s.check()
    s.prepare()
    return s, sink


@pytest.fixture(scope="module")
def dit():
    from framepack_cli.models.transformer import load_dit

    model = load_dit(str(MODELS / "dit_single.safetensors"), device=torch.device("cpu"), dtype=torch.float32,
                     attn_mode="torch")
    model.train()
    return model


def frames_of(path) -> np.ndarray:
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate == 24
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def cli(args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


# ---------------------------------------------------------------------------------------------------------------
# files


def test_video_samples_named_and_readable(tmp_path, dit):
    s, sink = sampler(tmp_path, f"a cat --i {START} {SIZE} --f 13 --d 5\na dog --i {START} {SIZE} --f 16\n")
    assert set(s.models._loaded) == {"vae"}  # the text and image encoders were freed after encoding
    files = s.render(dit, step=10)
    assert [f.parent for f in files] == [tmp_path / "out" / "sample"] * 2
    assert re.fullmatch(rf"lora_000010_00_{STAMP}_5\.mp4", files[0].name), files[0].name
    assert re.fullmatch(rf"lora_000010_01_{STAMP}\.mp4", files[1].name), files[1].name  # no seed given: no suffix
    assert frames_of(files[0]).shape == (4 * 1 * WINDOW + 1, 32, 48, 3)  # 13 frames: one section
    assert frames_of(files[1]).shape == (4 * 1 * WINDOW + 1, 32, 48, 3)  # 16 frames: cut to one section
    assert sink.results == [f"Wrote {f}" for f in files]
    (epoch_file,) = s.render(dit, step=11, epoch=2)[:1]
    assert re.fullmatch(rf"lora_e000002_00_{STAMP}_5\.mp4", epoch_file.name)
    assert not list((tmp_path / "out" / "sample").glob("*.tmp*"))


def test_f1_samples(tmp_path, dit):
    s, _ = sampler(tmp_path, f"a cat --i {START} {SIZE} --f 13 --d 5\n", f1=True)
    (f,) = s.render(dit, step=1)
    assert frames_of(f).shape == (4 * WINDOW + 1, 32, 48, 3)


def test_one_frame_sample_png(tmp_path, dit):
    s, _ = sampler(tmp_path, f"edit --i {START} --ci {START} --of no_2x,no_4x,target_index=1,control_index=0 "
                             f"{SIZE} --d 7\n", one_frame=True)
    (f,) = s.render(dit, step=3)
    assert re.fullmatch(rf"lora_000003_00_{STAMP}_7_000\.png", f.name), f.name
    assert pixels(f).shape == (32, 48, 3)


# ---------------------------------------------------------------------------------------------------------------
# the training DiT, its LoRA, RNG and train mode


def test_uses_the_given_dit_and_its_lora(tmp_path, dit, monkeypatch):
    import framepack_cli.models.transformer as transformer

    s, _ = sampler(tmp_path, f"edit --i {START} --of default {SIZE} --d 7\n", one_frame=True)
    monkeypatch.setattr(transformer, "load_dit", lambda *a, **k: pytest.fail("a second DiT was loaded"))
    plain = pixels(s.render(dit, step=1)[0])
    net = LoraNetwork(dit, dim=4, alpha=4.0)
    try:
        with torch.no_grad():
            for lora in net.loras:
                lora.lora_up.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        with_lora = pixels(s.render(dit, step=2, network=net)[0])
        net.set_multiplier(0.0)
        off = pixels(s.render(dit, step=3, network=net)[0])
    finally:
        net.remove_from_model()
    assert not np.array_equal(with_lora, plain)
    assert np.array_equal(off, plain)


def test_restores_rng_and_train_mode(tmp_path, dit):
    s, _ = sampler(tmp_path, f"edit --i {START} --of default {SIZE}\n", one_frame=True)  # random seed
    net = LoraNetwork(dit, dim=2, dropout=0.5)
    try:
        dit.train()
        net.train()
        torch.manual_seed(123)
        random.seed(5)
        np.random.seed(6)
        expected = (torch.rand(3), random.random(), np.random.rand())
        torch.manual_seed(123)
        random.seed(5)
        np.random.seed(6)
        dit.x_embedder.eval()  # a submodule in eval mode stays so (modes are restored module by module)
        s.render(dit, step=1, network=net)
        assert dit.training and net.training and not dit.x_embedder.training
        assert all(m.training for m in net.modules())
        assert all(m.training for name, m in dit.named_modules() if not name.startswith("x_embedder"))
        dit.train()
        got = (torch.rand(3), random.random(), np.random.rand())
    finally:
        net.remove_from_model()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    assert dit.rope_scaling_timestep_threshold is None


def test_dit_eval_and_no_grad_while_sampling(tmp_path, dit, monkeypatch):
    from framepack_cli.engine import one_frame

    seen = []
    real = one_frame.make_model_fn

    def spy(d, **kw):
        fn = real(d, **kw)

        def wrapped(x, sigma):
            seen.append((d.training, torch.is_grad_enabled()))
            return fn(x, sigma)

        return wrapped

    s, _ = sampler(tmp_path, f"edit --i {START} --of default {SIZE} --d 1\n", one_frame=True)
    monkeypatch.setattr(one_frame, "make_model_fn", spy)
    dit.train()
    s.render(dit, step=1)
    assert seen and set(seen) == {(False, False)}
    assert dit.training


# ---------------------------------------------------------------------------------------------------------------
# same code path as framepack generate / one-frame


def test_video_sample_matches_generate(tmp_path, dit):
    """Same latent as `framepack generate` (compared as latents: libx264 at 48x32 px is not byte-stable across
    processes, so decoded MP4 frames are not a reliable comparison)."""
    from safetensors.torch import load_file

    s, _ = sampler(tmp_path, f"a cat --i {START} {SIZE} --f 25 --d 42 --l 3 --n ugly\n")
    net = LoraNetwork(dit, dim=4)  # freshly initialised: lora_up is zero, so the LoRA changes nothing
    try:
        (sample,) = s.render(dit, step=1, network=net)
    finally:
        net.remove_from_model()
    assert frames_of(sample).shape == (4 * 2 * WINDOW + 1, 32, 48, 3)
    code = cli(["generate", *MODEL_ARGS, "--image_path", START, "--prompt", "a cat", "--video_size", 32, 48,
                "--infer_steps", 2, "--seed", 42, "--latent_window_size", WINDOW, "--video_sections", 2,
                "--guidance_scale", 3, "--negative_prompt", "ugly", "--save_path", tmp_path / "gen",
                "--output_name", "clip", "--output_type", "latent"])
    assert code == 0
    expected = load_file(str(tmp_path / "gen" / "clip_latent.safetensors"))["latent"]
    assert torch.equal(s.results[0].latent, expected)


def test_one_frame_sample_matches_one_frame_command(tmp_path, dit):
    s, _ = sampler(tmp_path, f"edit --i {START} --ci {START} --ci {INPUTS / 'ref_rgba.png'} "
                             f"--of no_post,no_2x,no_4x,target_index=1,control_index=0;10 {SIZE} --d 3 --g 8\n",
                   one_frame=True)
    (sample,) = s.render(dit, step=1)
    code = cli(["one-frame", *MODEL_ARGS, "--image_path", START, "--control_image_path", START,
                INPUTS / "ref_rgba.png", "--one_frame_inference",
                "no_post,no_2x,no_4x,target_index=1,control_index=0;10",
                "--prompt", "edit", "--video_size", 32, 48, "--infer_steps", 2, "--seed", 3,
                "--embedded_cfg_scale", 8, "--latent_window_size", WINDOW, "--save_path", tmp_path / "gen",
                "--output_name", "one"])
    assert code == 0
    assert np.array_equal(pixels(sample), pixels(tmp_path / "gen" / "one_000.png"))


# ---------------------------------------------------------------------------------------------------------------
# check(): refused before training (exit 2), notes said up front


def check_errors(tmp_path, prompts: str, **extra) -> list[str]:
    s = TrainingSampler(train_options(tmp_path, prompts, **extra), torch.device("cpu"), NullProgress())
    with pytest.raises(FramepackError) as e:
        s.check()
    assert e.value.exit_code == 2
    return e.value.message.splitlines()


def test_check_refuses_short_videos_and_missing_images(tmp_path):
    p = tmp_path / "p.txt"
    assert check_errors(tmp_path, f"a --i {START} --w 48 --h 32\nb --w 48 --h 32\nc --i nope.png --f 13\n"
                                  f"d --i {START} --w 40 --h 200 --f 13\n") == [
        f"--sample_prompts {p}:1: --f 1: a video sample needs at least 13 frames with --latent_window_size 3 (one "
        "section; the reference writes nothing for fewer); use --f 13 or more, or train with --one_frame for "
        "single-image samples",
        f"--sample_prompts {p}:2: every sample prompt needs a start image (FramePack generates from an image; the "
        "reference refuses too); add --i path/to/start.png",
        f"--sample_prompts {p}:2: --f 1: a video sample needs at least 13 frames with --latent_window_size 3 (one "
        "section; the reference writes nothing for fewer); use --f 13 or more, or train with --one_frame for "
        "single-image samples",
        f"--sample_prompts {p}:3: --i nope.png: file not found (looked in the current folder and in {tmp_path})",
        f"--sample_prompts {p}:4: --w 40: width and height must be multiples of 16 (the DiT works on 2x2 patches "
        "of the 8x smaller latent); use --w 32",
        f"--sample_prompts {p}:4: --h 200: width and height must be multiples of 16 (the DiT works on 2x2 patches "
        "of the 8x smaller latent); use --h 192",
    ]


def test_check_one_frame_needs_of(tmp_path):
    p = tmp_path / "p.txt"
    assert check_errors(tmp_path, f"a --i {START}\nb --i {START} --of no_3x\n", one_frame=True) == [
        f"--sample_prompts {p}:1: --one_frame samples need the one-frame options of each prompt (the reference "
        "fails without them); add --of default, or e.g. --of no_2x,no_4x,target_index=1,control_index=0",
        f"--sample_prompts {p}:2: --of: unknown option 'no_3x' (accepted: default, no_2x, no_4x, no_post, "
        "target_index=N, control_index=a;b)",
    ]


def test_check_dict_entries_name_keys(tmp_path):
    p = tmp_path / "p.json"
    assert check_errors(tmp_path, f'[{{"prompt": "a", "image_path": "{START}", "frame_count": 5}}]',
                        name="p.json") == [
        f"--sample_prompts {p} entry 1: frame_count 5: a video sample needs at least 13 frames with "
        "--latent_window_size 3 (one section; the reference writes nothing for fewer); use frame_count 13 or "
        "more, or train with --one_frame for single-image samples",
    ]


def test_check_notes_and_relative_images(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "s.png").write_bytes(START.read_bytes())
    monkeypatch.chdir(tmp_path / "imgs")  # not where the prompt file is: found beside the prompt file instead
    opts = train_options(tmp_path, f"a --i imgs/s.png {SIZE} --f 16 --fs 7 --n ugly --ci x.png\n")
    sink = NullProgress()
    s = TrainingSampler(opts, torch.device("cpu"), sink)
    s.check()
    p = tmp_path / "p.txt"
    assert s.options[0].image_path == str(tmp_path / "imgs" / "s.png")
    assert s.options[0].video_sections == 1 and s.options[0].control_image_path is None
    assert sink.messages == [
        f"--sample_prompts {p}:1: --f 16 makes 13 frames (1 section(s) of 3 latent frames), as the reference",
        f"Warning: --sample_prompts {p}:1: --ci has no effect without --one_frame",
        f"Warning: --sample_prompts {p}:1: --fs has no effect (FramePack picks its shift from the resolution, as "
        "in the reference)",
        f"Warning: --sample_prompts {p}:1: --n has no effect with CFG scale 1 (real CFG is off); add e.g. --l 5",
    ]
    assert (tmp_path / "out" / "sample").is_dir() and s.created_dir == tmp_path / "out"


def test_render_before_prepare_is_a_bug(tmp_path, dit):
    s = TrainingSampler(train_options(tmp_path, f"a --i {START} {SIZE} --f 13\n"), torch.device("cpu"),
                        NullProgress())
    with pytest.raises(RuntimeError, match="prepare"):
        s.render(dit, step=1)
