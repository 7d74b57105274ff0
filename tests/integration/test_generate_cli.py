"""`framepack generate` end to end on the tiny models: files, formats, metadata, batch and interactive modes.

Runs are small (32x48 px, 2 steps) and exercise window sizes and fps other than the defaults.
"""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from framepack_cli.cli.app import main
from framepack_cli.io.outputs import read_png_metadata, read_video_metadata
from tests.conftest import INPUTS, MODEL_ARGS, MODELS

pytestmark = pytest.mark.slow

M = MODELS
SMALL = ["--video_size", "32", "48", "--infer_steps", "2"]


def cli(args, capsys=None):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr() if capsys else None
    return e.value.code, out


def gen(tmp_path, *extra, capsys=None):
    return cli(["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
                "--save_path", tmp_path, *extra], capsys)


def video_info(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return s.codec_context.name, s.codec_context.pix_fmt, s.average_rate, frames


@pytest.mark.parametrize("window, sections, fps, f1", [(4, 2, 24, False), (3, 3, 30, True)])
def test_mp4_frame_count_size_fps(tmp_path, window, sections, fps, f1):
    args = ["--latent_window_size", window, "--video_sections", sections, "--fps", fps, "--seed", 7,
            "--output_name", "clip"] + (["--f1"] if f1 else [])
    code, _ = gen(tmp_path, *args)
    assert code == 0
    codec, pix_fmt, rate, frames = video_info(tmp_path / "clip.mp4")
    assert (codec, pix_fmt, rate) == ("h264", "yuv420p", fps)
    assert len(frames) == 4 * window * sections + 1
    assert frames[0].shape == (32, 48, 3)


def test_metadata_round_trip_and_latent_redecode(tmp_path):
    code, _ = gen(tmp_path, "--output_type", "latent_images", "--video_sections", "2", "--latent_window_size", "3",
                  "--seed", "123", "--output_name", "run")
    assert code == 0
    lat = tmp_path / "run_latent.safetensors"
    with safe_open(str(lat), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("latent").shape == (16, 1 + 2 * 3, 4, 6)
    assert meta["seeds"] == "123" and meta["latent_window_size"] == "3" and meta["prompt"] == "a cat"
    settings = json.loads(meta["framepack"])
    assert settings["seed"] == 123 and settings["video_sections"] == 2
    assert "start.png" in settings["images"] and len(settings["images"]["start.png"]) == 64
    pngs = sorted((tmp_path / "run").glob("run_*.png"))
    assert len(pngs) == 4 * 3 * 2 + 1
    assert read_png_metadata(pngs[0]) == meta
    first = np.stack([np.asarray(Image.open(p)) for p in pngs])

    # decode the saved latent again: same frames, bit for bit; settings read from the metadata
    out2 = tmp_path / "again"
    code, _ = cli(["generate", "--latent_path", lat, "--vae", M / "vae_official.pt", "--save_path", out2,
                   "--output_type", "images"])
    assert code == 0
    (d,) = [p for p in out2.iterdir() if p.is_dir()]
    again = np.stack([np.asarray(Image.open(p)) for p in sorted(d.glob("*.png"))])
    np.testing.assert_array_equal(first, again)

    # and to video: the MP4 carries the same metadata
    code, _ = cli(["generate", "--latent_path", lat, "--vae", M / "vae.safetensors", "--save_path", out2])
    assert code == 0
    (mp4,) = out2.glob("*.mp4")
    assert read_video_metadata(mp4) == meta
    assert len(video_info(mp4)[3]) == len(pngs)


def test_never_overwrites_and_no_metadata(tmp_path):
    for _ in range(2):
        code, _ = gen(tmp_path, "--output_name", "same", "--seed", "1", "--output_type", "both", "--no_metadata",
                      "--video_sections", "1", "--latent_window_size", "2")
        assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["same.mp4", "same_1.mp4", "same_1_latent.safetensors", "same_latent.safetensors"]
    with safe_open(str(tmp_path / "same_latent.safetensors"), "pt") as f:
        assert not f.metadata()
    assert read_video_metadata(tmp_path / "same.mp4") == {}


def test_random_seed_printed_and_saved(tmp_path, capsys):
    code, out = gen(tmp_path, "--output_type", "latent", "--video_sections", "1", "--latent_window_size", "2",
                    capsys=capsys)
    assert code == 0
    (lat,) = tmp_path.glob("*_latent.safetensors")
    with safe_open(str(lat), "pt") as f:
        seed = f.metadata()["seeds"]
    assert f"Seed {seed}," in out.err + out.out
    assert lat.name.endswith(f"_{seed}_latent.safetensors")


def test_same_seed_same_video(tmp_path):
    for name in ("a", "b"):
        assert gen(tmp_path, "--output_name", name, "--seed", "5", "--output_type", "latent", "--video_sections",
                   "2", "--latent_window_size", "2")[0] == 0
    ta = safe_open(str(tmp_path / "a_latent.safetensors"), "pt").get_tensor("latent")
    tb = safe_open(str(tmp_path / "b_latent.safetensors"), "pt").get_tensor("latent")
    assert (ta == tb).all()


def test_pipe_sections_and_count_mismatch(tmp_path, capsys):
    img = INPUTS / "start.png"
    code, _ = cli(["generate", *MODEL_ARGS, *SMALL, "--video_sections", "2", "--latent_window_size", "2",
                   "--image_path", f"{img}|{INPUTS / 'section.png'}", "--prompt", "a cat|a dog",
                   "--save_path", tmp_path, "--output_type", "latent"], capsys)
    assert code == 0
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--video_sections", "3", "--image_path", img,
                     "--prompt", "a cat|a dog", "--save_path", tmp_path, "--output_type", "latent"], capsys)
    assert code == 2
    assert out.err.strip().splitlines()[-1] == (
        "Error: --prompt: 2 entries separated by '|' for 3 sections; give one per section (in time order) or use "
        "the indexed form '0:...;;;-1:...'")


def test_batch_file_with_bad_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# a comment\n"
        f"a cat --d 1 --vs 1 --w 48 --h 32 --i {INPUTS / 'start.png'}\n"
        "\n"
        "a dog --d 2 --bogus 3\n"
        f"a bird --d 3 --vs 2 --s 1 --i {INPUTS / 'section.png'}\n"
        f"an edit --d 4 --ci {INPUTS / 'start.png'} --of target_index=1,no_2x\n"
    )
    out_dir = tmp_path / "out"
    code, out = cli(["generate", *MODEL_ARGS, "--video_size", "32", "48", "--infer_steps", "2",
                     "--latent_window_size", "2", "--from_file", prompts, "--save_path", out_dir,
                     "--output_type", "latent"], capsys)
    assert code == 2
    err = out.err + out.out
    assert "Error: prompts.txt line 4: unknown inline option --bogus" in err
    assert "Error: --from_file: 1 of 4 job(s) failed: prompts.txt line 4" in err
    seeds = sorted(p.name.split("_")[-2] for p in out_dir.glob("*_latent.safetensors"))
    assert seeds == ["1", "3", "4"]
    one_frame = next(out_dir.glob("*_4_latent.safetensors"))
    assert safe_open(str(one_frame), "pt").get_tensor("latent").shape == (16, 1, 4, 6)
    bird = next(out_dir.glob("*_3_latent.safetensors"))
    assert safe_open(str(bird), "pt").get_tensor("latent").shape == (16, 1 + 2 * 2, 4, 6)


def test_interactive_reads_until_eof(tmp_path, monkeypatch, capsys):
    lines = f"a cat --d 11 --vs 1 --i {INPUTS / 'start.png'}\n--nonsense\nsecond --d 12 --vs 1 --unknown x\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, out = cli(["generate", *MODEL_ARGS, *SMALL, "--latent_window_size", "2", "--interactive",
                     "--save_path", tmp_path, "--output_type", "latent"], capsys)
    assert code == 0
    assert [p.name.split("_")[-2] for p in tmp_path.glob("*_latent.safetensors")] == ["11"]
    assert "Error: prompt 2: unknown inline option --nonsense" in out.err + out.out
    assert "Error: prompt 3: unknown inline option --unknown" in out.err + out.out


def test_real_cfg_with_negative_prompt_changes_result(tmp_path):
    common = ["--seed", "9", "--output_type", "latent", "--video_sections", "1", "--latent_window_size", "2"]
    assert gen(tmp_path, *common, "--output_name", "plain")[0] == 0
    assert gen(tmp_path, *common, "--output_name", "cfg", "--guidance_scale", "3", "--negative_prompt", "blurry",
               "--guidance_rescale", "0.5")[0] == 0
    plain = safe_open(str(tmp_path / "plain_latent.safetensors"), "pt").get_tensor("latent")
    cfg = safe_open(str(tmp_path / "cfg_latent.safetensors"), "pt").get_tensor("latent")
    assert cfg.isfinite().all()
    # the start latent (frame 0) is the same; the sampled frames differ
    assert (cfg[:, 0] == plain[:, 0]).all() and not (cfg[:, 1:] == plain[:, 1:]).all()
    with safe_open(str(tmp_path / "cfg_latent.safetensors"), "pt") as f:
        assert f.metadata()["negative_prompt"] == "blurry" and f.metadata()["guidance_scale"] == "3.0"


def test_lora_at_inference_equals_saved_merged_model(tmp_path, capsys):
    """--lora_weight merges at load time; --save_merged_model saves the same merge; both generate alike."""
    lora = M / "lora_tiny.safetensors"
    common = ["--seed", "4", "--output_type", "latent", "--video_sections", "1", "--latent_window_size", "2"]
    code, out = gen(tmp_path, *common, "--output_name", "lora", "--lora_weight", lora, "--lora_multiplier", "0.7",
                    capsys=capsys)
    assert code == 0
    assert ("LoRA lora_tiny.safetensors: musubi-framepack LoRA (rank 4, alpha 2), multiplier 0.7: 34 modules merged, "
            "0 keys unused") in out.err + out.out
    merged = tmp_path / "merged.safetensors"
    code, _ = cli(["generate", "--dit", M / "dit_single.safetensors", "--lora_weight", lora, "--lora_multiplier",
                   "0.7", "--save_merged_model", merged, "--save_path", tmp_path])
    assert code == 0 and merged.is_file()
    args = [a if a != str(M / "dit_single.safetensors") else str(merged) for a in MODEL_ARGS]
    code, _ = cli(["generate", *args, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
                   "--save_path", tmp_path, *common, "--output_name", "premerged"])
    assert code == 0
    assert gen(tmp_path, *common, "--output_name", "plain")[0] == 0
    t = {n: safe_open(str(tmp_path / f"{n}_latent.safetensors"), "pt").get_tensor("latent")
         for n in ("lora", "premerged", "plain")}
    assert (t["lora"] - t["premerged"]).abs().max() < 1e-5
    assert (t["lora"][:, 1:] - t["plain"][:, 1:]).abs().max() > 1e-3
    with safe_open(str(tmp_path / "lora_latent.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["framepack"])["loras"] == [[str(lora), 0.7]]
