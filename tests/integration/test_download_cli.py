"""`framepack download` against a local stand-in for the Hugging Face Hub (tests/hub_server.py on 127.0.0.1,
`HF_ENDPOINT` pointed at it; no test reaches the internet), then the models found without flags, offline.

The hub serves the tiny golden models in the catalog's repository layouts (see `golden_repos`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from framepack_cli.cli.app import main
from tests.conftest import INPUTS, MODELS
from tests.hub_server import COMMIT, FakeHub, golden_repos

HV = "hunyuanvideo-community/HunyuanVideo"
VAE_FILE = "vae/diffusion_pytorch_model.safetensors"


def cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def hub(monkeypatch):
    """The fake hub, with huggingface_hub allowed online (conftest sets HF_HUB_OFFLINE=1 for every other test)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    # huggingface_hub writes a resumed transfer from its last whole chunk (10 MB by default, more than a tiny file)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    with FakeHub(golden_repos(MODELS)) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


def snapshot(models_dir: Path, repo: str) -> Path:
    return models_dir / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT


def resolve_gets(hub: FakeHub) -> list[tuple[str, str, str | None]]:
    return [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_full_download_then_nothing_twice(hub, tmp_path, capsys):
    models = tmp_path / "models"
    code, out, err = cli(["download", "--models_dir", models], capsys)
    assert code == 0, err
    # the plan first: one line per component and the total, before any transfer
    lines = err.splitlines()
    assert lines[0].startswith("dit: lllyasviel/FramePackI2V_HY (sharded, 4 files, ") and ": 4 of 4 files to fetch, " \
        in lines[0]
    assert lines[6].startswith(f"Models directory {models}: ") and lines[6].endswith(" to fetch")
    hv, dit = snapshot(models, HV), snapshot(models, "lllyasviel/FramePackI2V_HY")
    redux = snapshot(models, "lllyasviel/flux_redux_bfl")
    assert out.splitlines() == [
        f"dit: {dit / 'diffusion_pytorch_model-00001-of-00002.safetensors'} (--dit)",
        f"vae: {hv / VAE_FILE} (--vae)",
        f"text_encoder1: {hv / 'text_encoder/model-00001-of-00002.safetensors'} (--text_encoder1)",
        f"text_encoder2: {hv / 'text_encoder_2/model.safetensors'} (--text_encoder2)",
        f"image_encoder: {redux / 'image_encoder/model.safetensors'} (--image_encoder)",
        f"tokenizers: {hv / 'tokenizer/tokenizer_config.json'}",
    ]
    for repo, files in golden_repos(MODELS).items():
        if repo in (HV, "lllyasviel/FramePackI2V_HY"):
            for path, local in files.items():
                assert (snapshot(models, repo) / path).read_bytes() == local.read_bytes(), path
    assert (models / ("models--" + HV.replace("/", "--")) / "refs" / "main").read_text() == COMMIT
    # a second run finds everything complete and fetches nothing
    n = len(resolve_gets(hub))
    code, out, err = cli(["download", "--models_dir", models], capsys)
    assert code == 0, err
    assert len(resolve_gets(hub)) == n
    assert err.splitlines()[-1] == f"Everything is already in {models}; commands find it without model flags"
    assert "complete" in err.splitlines()[0]


def test_transfer_cut_in_the_middle_resumes(hub, tmp_path, capsys):
    hub.cut_once.add(VAE_FILE)
    models = tmp_path / "models"
    code, out, err = cli(["download", "vae", "--models_dir", models], capsys)
    assert code == 0, err
    gets = [r for r in resolve_gets(hub) if r[1].endswith(VAE_FILE)]
    assert len(gets) == 2 and gets[0][2] is None
    # the second request continues from the bytes received (HTTP Range), it does not start over
    assert gets[1][2] is not None and gets[1][2].startswith("bytes=") and int(gets[1][2][6:].rstrip("-")) > 0
    assert (snapshot(models, HV) / VAE_FILE).read_bytes() == (MODELS / VAE_FILE).read_bytes()


def test_stopped_run_keeps_complete_files_and_continues(hub, tmp_path, capsys, monkeypatch):
    """A run stopped part-way (here: a 404 on the third file) keeps what it fetched; the next run fetches the rest."""
    models = tmp_path / "models"
    hub.missing.add("text_encoder_2/model.safetensors")
    code, _, err = cli(["download", "--components", "vae,text_encoder2", "--models_dir", models], capsys)
    assert code == 2
    assert (snapshot(models, HV) / VAE_FILE).is_file()
    hub.missing.clear()
    before = len(resolve_gets(hub))
    code, out, err = cli(["download", "--components", "vae,text_encoder2", "--models_dir", models], capsys)
    assert code == 0, err
    fetched = [r[1] for r in resolve_gets(hub)[before:]]
    assert fetched == [f"/{HV}/resolve/main/text_encoder_2/model.safetensors"]  # config.json was kept too


def test_disk_space_refusal_and_dry_run(hub, tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"
    code, out, err = cli(["download", "--dry_run", "--models_dir", models], capsys)
    assert code == 0 and out == "", err
    assert err.splitlines()[-1] == "Dry run: nothing fetched"
    assert not models.exists() and resolve_gets(hub) == []
    real = shutil.disk_usage

    def tiny_disk(path):
        return real(path)._replace(free=5 * 10**6)

    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)
    code, out, err = cli(["download", "--models_dir", models], capsys)
    assert code == 3 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith(f"Error: --models_dir {models}: ") and last.endswith(
        " to fetch but only 5.0 MB free on that disk; free some space or pass --models_dir on a larger disk")
    assert sum(1 for line in err.splitlines() if line.startswith("Error")) == 1
    assert not models.exists() and resolve_gets(hub) == []


def test_404_for_one_file_names_the_repo_and_file(hub, tmp_path, capsys):
    hub.missing.add("image_encoder/model.safetensors")
    code, out, err = cli(["download", "--components", "image_encoder", "--models_dir", tmp_path / "m"], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: lllyasviel/flux_redux_bfl: image_encoder/model.safetensors not found on {hub.url} "
                      "(404); the repository changed; report it (the catalog may be out of date)"]


def test_damaged_transfer_is_not_kept(hub, tmp_path, capsys):
    hub.corrupt.add(VAE_FILE)
    models = tmp_path / "m"
    code, out, err = cli(["download", "--components", "vae", "--models_dir", models], capsys)
    assert code == 3
    assert err.splitlines()[-1].startswith(f"Error: {HV}: {VAE_FILE} arrived damaged (sha256 ")
    assert not (snapshot(models, HV) / VAE_FILE).exists()
    blobs = models / ("models--" + HV.replace("/", "--")) / "blobs"
    assert not any(p.stat().st_size == (MODELS / VAE_FILE).stat().st_size for p in blobs.iterdir())


def test_f1_single_is_refused_before_any_request(hub, capsys):
    code, _, err = cli(["download", "--variant", "both", "--dit_format", "single"], capsys)
    assert code == 2 and hub.requests == []
    assert "the FramePack-F1 DiT is published only as sharded" in err


@pytest.mark.slow
def test_generate_finds_the_downloaded_models_offline(hub, tmp_path, capsys, monkeypatch):
    # into the default models dir ($FRAMEPACK_HOME/models), both DiTs
    code, _, err = cli(["download", "--variant", "both"], capsys)
    assert code == 0, err
    home = tmp_path / "fp_home" / "models"
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.server.shutdown()  # nothing may reach the network from here on
    n = len(hub.requests)
    out_dir = tmp_path / "out"
    code, out, err = cli(["generate", "--f1", "--image_path", INPUTS / "start.png", "--prompt", "a cat",
                          "--video_size", "32", "48", "--video_sections", "1", "--latent_window_size", "3",
                          "--infer_steps", "2", "--seed", "3", "--output_name", "clip", "--save_path", out_dir],
                         capsys)
    assert code == 0, err
    assert out.splitlines() == [f"Wrote {out_dir / 'clip.mp4'}"]
    f1 = snapshot(home, "lllyasviel/FramePack_F1_I2V_HY_20250503")
    models_line = [line for line in err.splitlines() if line.startswith("Models: ")]
    assert len(models_line) == 1
    assert models_line[0].startswith(
        f"Models: --dit {f1 / 'diffusion_pytorch_model-00001-of-00002.safetensors'} ($FRAMEPACK_HOME), --vae "
        f"{snapshot(home, HV) / VAE_FILE} ($FRAMEPACK_HOME), ")
    assert len(hub.requests) == n


def test_missing_model_prints_the_download_command(tmp_path, capsys):
    """Nothing downloaded (conftest's empty FRAMEPACK_HOME and HF_HOME): one line with the command."""
    models = tmp_path / "mine"
    models.mkdir()
    code, out, err = cli(["generate", "--f1", "--models_dir", models, "--image_path", INPUTS / "start.png",
                          "--prompt", "p", "--save_path", tmp_path / "o"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "Error: --dit, --vae, --text_encoder1, --text_encoder2, --image_encoder: not given and not found (looked in "
        f"--models_dir {models}, $FRAMEPACK_HOME {tmp_path / 'fp_home' / 'models'}, HF cache "
        f"{tmp_path / 'hf_home' / 'hub'}); fetch with `framepack download --variant f1 --models_dir {models}` or "
        "pass --dit / --vae / --text_encoder1 / --text_encoder2 / --image_encoder"]
    code, _, err = cli(["lora", "merge", "--lora_weight", MODELS / "lora_tiny.safetensors", "--output",
                        tmp_path / "x.safetensors"], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"Error: --dit: not given and not found (looked in $FRAMEPACK_HOME {tmp_path / 'fp_home' / 'models'}, "
        f"HF cache {tmp_path / 'hf_home' / 'hub'}); fetch with `framepack download --components dit` or pass --dit"]
    code, _, err = cli(["generate", "--models_dir", tmp_path / "nope", "--prompt", "p", "--save_path", tmp_path],
                       capsys)
    assert code == 2 and err.splitlines() == [
        f"Error: --models_dir: folder not found: {tmp_path / 'nope'}; fetch the models there with "
        f"`framepack download --models_dir {tmp_path / 'nope'}`"]


def test_tokenizers_found_in_the_models_dir_by_the_hub_reader(hub, tmp_path, capsys):
    from framepack_cli.errors import FramepackError
    from framepack_cli.models.tokenizers import find_tokenizer_dir

    elsewhere = tmp_path / "w" / "llava.safetensors"  # a text encoder with no tokenizer beside it
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")
    with pytest.raises(FramepackError) as e:
        find_tokenizer_dir(1, elsewhere)
    assert "fetch it with `framepack download --components tokenizers`" in str(e.value)
    code, _, err = cli(["download", "tokenizers"], capsys)  # into $FRAMEPACK_HOME/models
    assert code == 0, err
    snap = snapshot(tmp_path / "fp_home" / "models", HV)
    assert find_tokenizer_dir(1, elsewhere) == snap / "tokenizer"
    assert find_tokenizer_dir(2, elsewhere) == snap / "tokenizer_2"


def test_inspect_a_models_dir(hub, tmp_path, capsys):
    import json

    models = tmp_path / "m"
    code, _, err = cli(["download", "--components", "vae,tokenizers", "--models_dir", models], capsys)
    assert code == 0, err
    (models / "models--someone--else").mkdir()
    code, out, err = cli(["inspect", models, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "models_dir" and info["other_repos"] == ["someone/else"]
    vae = info["components"]["vae"]
    assert vae["kind"] == "vae" and vae["ok"] and vae["path"] == str(snapshot(models, HV) / VAE_FILE)
    assert info["components"]["dit"] is None and info["components"]["tokenizers"]["ok"]
    assert info["commands"]["cache latents"] == {
        "missing": ["image_encoder"], "fetch": f"framepack download --components image_encoder --models_dir {models}"}
    assert info["commands"]["generate --f1"]["fetch"] == (
        f"framepack download --variant f1 --components dit,text_encoder1,text_encoder2,image_encoder --models_dir "
        f"{models}")
    code, out, err = cli(["inspect", models], capsys)
    assert code == 0, err
    rows = {line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in out.splitlines()}
    assert rows["dit"] == "missing"
    assert rows["cache latents"] == (f"missing image_encoder: framepack download --components image_encoder "
                                     f"--models_dir {models}")
    assert rows["vae"].endswith("[vae, diffusers, 1 file(s)]")


def test_ctrl_c_says_how_far_it_got_and_the_same_command_continues(hub, tmp_path, capsys, monkeypatch):
    import framepack_cli.engine.download as download

    real = download._fetch
    calls = []

    def stop_on_third(f, cache_dir):
        calls.append(f.path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(f, cache_dir)

    monkeypatch.setattr(download, "_fetch", stop_on_third)
    models = tmp_path / "m"
    code, out, err = cli(["download", "--components", "vae,text_encoder2", "--models_dir", models], capsys)
    assert code == 130 and out == ""
    assert err.splitlines()[-1] == (f"Interrupted: fetched 2 of 4 files into {models}; run the same command again "
                                    "to continue (complete files are kept)")
    monkeypatch.setattr(download, "_fetch", real)
    before = len(resolve_gets(hub))
    code, out, err = cli(["download", "--components", "vae,text_encoder2", "--models_dir", models], capsys)
    assert code == 0, err
    assert len(resolve_gets(hub)) - before == 2


def test_a_run_stopped_mid_file_is_continued_by_the_next(hub, tmp_path, capsys, monkeypatch):
    """Ctrl-C while a file is half-received: the bytes stay (blobs/<sha256>.framepack-partial), the next run asks
    only for the rest (HTTP Range) and the file is whole."""
    import huggingface_hub.file_download as fd

    hub.cut_once.add(VAE_FILE)
    real_sleep = fd.time.sleep

    def ctrl_c(_seconds):  # huggingface_hub waits a second before retrying the cut transfer: stop there instead
        raise KeyboardInterrupt

    monkeypatch.setattr(fd.time, "sleep", ctrl_c)
    models = tmp_path / "m"
    code, out, err = cli(["download", "--components", "vae", "--models_dir", models], capsys)
    assert code == 130, err
    partial = list((models / ("models--" + HV.replace("/", "--")) / "blobs").glob("*.framepack-partial"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < (MODELS / VAE_FILE).stat().st_size
    monkeypatch.setattr(fd.time, "sleep", real_sleep)
    received = partial[0].stat().st_size
    code, out, err = cli(["download", "--components", "vae", "--models_dir", models], capsys)
    assert code == 0, err
    assert "already received" in err.splitlines()[0]
    gets = [r for r in resolve_gets(hub) if r[1].endswith(VAE_FILE)]
    assert gets[-1][2] == f"bytes={received}-"
    assert (snapshot(models, HV) / VAE_FILE).read_bytes() == (MODELS / VAE_FILE).read_bytes()
    assert not partial[0].exists()


def test_single_file_dit_is_fetched_and_found(hub, tmp_path, capsys):
    from framepack_cli.models.store import resolve_models

    models = tmp_path / "m"
    code, out, err = cli(["download", "--components", "dit", "--dit_format", "single", "--models_dir", models],
                         capsys)
    assert code == 0, err
    entry = snapshot(models, "Kijai/HunyuanVideo_comfy") / "FramePackI2V_HY_bf16.safetensors"
    assert out.splitlines() == [f"dit: {entry} (--dit)"]
    assert entry.read_bytes() == (MODELS / "dit_single.safetensors").read_bytes()
    res = resolve_models(["--dit"], models_dir=models)
    assert res.found["--dit"].path == entry and res.found["--dit"].source == "single"
    assert resolve_models(["--dit"], f1=True, models_dir=models).missing == ["dit"]


def test_offline_or_unreachable_hub_is_one_line(tmp_path, capsys, monkeypatch):
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = cli(["download", "--dry_run"], capsys)
    assert code == 2 and err.splitlines() == [
        "Error: lllyasviel/FramePackI2V_HY: HF_HUB_OFFLINE is set, so the file list cannot be fetched; unset "
        "HF_HUB_OFFLINE for `framepack download` (other commands never use the network)"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, _, err = cli(["download", "--components", "vae"], capsys)
    assert code == 3 and err.splitlines() == [
        f"Error: {HV}: cannot reach http://127.0.0.1:{port} for the file list (ConnectError); check the network "
        "(or HF_ENDPOINT) and run the same command again; complete files are kept"]
