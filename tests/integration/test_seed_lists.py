"""`--seed 1 2 3`, `--seed 10-13`, `--count N`: one job per seed, models loaded once, the seed in each name."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from framepack_cli.options.generate import GenerateOptions
from framepack_cli.options.seeds import job_seeds
from framepack_cli.options.validation import OptionsError, validate
from tests.conftest import INPUTS, MODEL_ARGS, MODELS
from tests.integration.test_generate_cli import SMALL, cli

M = MODELS
BASE = {"dit": str(M / "vae_official.pt"), "vae": str(M / "vae_official.pt"), "text_encoder1": str(INPUTS),
        "text_encoder2": str(INPUTS), "image_encoder": str(INPUTS), "prompt": "a cat", "save_path": "out"}


def opts(**kw):
    return validate(GenerateOptions, {**BASE, **kw})


@pytest.mark.parametrize("given, seed", [(["42"], 42), (["1", "2", "3"], [1, 2, 3]), (["10-13"], [10, 11, 12, 13]),
                                         (["7", "9-10"], [7, 9, 10]), (["5-5"], [5]), (42, 42)])
def test_seed_values(given, seed):
    assert opts(seed=given).seed == seed


@pytest.mark.parametrize("given, line", [
    (["abc"], "--seed: 'abc' is not an integer"),
    (["13-10"], "--seed: a range goes up: FIRST-LAST with FIRST <= LAST, like 10-13 (got '13-10')"),
    (["-1"], "--seed: '-1' is too small; expected a value >= 0"),
])
def test_bad_seed_is_one_line(given, line):
    with pytest.raises(OptionsError) as e:
        opts(seed=given)
    assert e.value.lines == [line]


def test_count_rules():
    assert job_seeds(5, 3) == [5, 6, 7]
    assert job_seeds([4, 2], None) == [4, 2] and job_seeds(9, None) == [9] and job_seeds(None, None) == [None]
    random_seeds = job_seeds(None, 4)
    assert len(set(random_seeds)) == 4 and all(isinstance(s, int) for s in random_seeds)
    with pytest.raises(OptionsError) as e:
        opts(seed=["1", "2"], count="2")
    assert e.value.lines[0].startswith("--count 2 with 2 seeds in --seed: give --count with one seed")
    with pytest.raises(OptionsError) as e:
        opts(seed=["1", "2"], from_file=str(INPUTS / "start.png"))
    assert e.value.lines == ["--seed with several values cannot be combined with --from_file; put one seed per "
                             "line (--d SEED)"]


def _latent(path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("latent"), f.metadata()


def test_seed_list_runs_one_job_each_models_once(tmp_path, capsys):
    args = ["generate", *MODEL_ARGS, *SMALL, "--image_path", INPUTS / "start.png", "--prompt", "a cat",
            "--video_sections", "1", "--latent_window_size", "2", "--output_type", "latent", "--output_name", "clip"]
    code, out = cli([*args, "--save_path", tmp_path / "many", "--seed", "5-6"], capsys)
    assert code == 0, out.err
    assert out.err.count("Loading DiT") == 1 and out.err.count("Loading VAE") == 1
    assert "2 job(s), seeds 5, 6" in out.err
    names = sorted(p.name for p in (tmp_path / "many").iterdir())
    assert names == ["clip_5_latent.safetensors", "clip_6_latent.safetensors"]
    lat6, meta6 = _latent(tmp_path / "many" / "clip_6_latent.safetensors")
    assert meta6["seeds"] == "6"
    # the seed-6 job of the list is the plain `--seed 6` run, bit for bit
    code, out = cli([*args, "--save_path", tmp_path / "one", "--seed", "6"], capsys)
    assert code == 0, out.err
    single, _ = _latent(tmp_path / "one" / "clip_latent.safetensors")
    assert (single == lat6).all()
    assert not (_latent(tmp_path / "many" / "clip_5_latent.safetensors")[0] == lat6).all()
