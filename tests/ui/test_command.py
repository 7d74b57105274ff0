"""`framepack ui` at the command line: its options, the security rules (bind address, --listen needs --auth),
the missing extra, and that `framepack --help` loads neither gradio nor torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from framepack_cli.cli.app import main
from framepack_cli.options.ui import UiOptions
from framepack_cli.options.validation import validate
from tests.conftest import MODEL_ARGS, REPO

pytestmark = pytest.mark.ui


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_defaults_bind_loopback_port_7860_no_auth(tmp_path):
    opts = validate(UiOptions, {"save_path": str(tmp_path)})
    assert (opts.bind_host, opts.port, opts.auth, opts.credentials, opts.listen) == ("127.0.0.1", 7860, None, None,
                                                                                    False)


def test_listen_without_auth_is_refused_in_one_line(capsys, tmp_path):
    rc, out, err = run_cli(["ui", *MODEL_ARGS, "--listen", "--save_path", tmp_path / "o"], capsys)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "Error: --listen: the app would be reachable from other machines without a password; add --auth USER:PASS "
        "(or drop it to stay on 127.0.0.1)"]
    assert not (tmp_path / "o").exists()


def test_a_non_loopback_host_needs_auth_too(capsys, tmp_path):
    rc, _, err = run_cli(["ui", *MODEL_ARGS, "--host", "0.0.0.0", "--save_path", tmp_path], capsys)
    assert rc == 2 and "Error: --host 0.0.0.0: the app would be reachable from other machines" in err
    for host in ("localhost", "127.0.0.2", "::1"):
        assert validate(UiOptions, {"host": host, "save_path": str(tmp_path)}).bind_host == host


def test_listen_with_auth_binds_all_interfaces(tmp_path):
    opts = validate(UiOptions, {"listen": True, "auth": "me:pa:ss", "save_path": str(tmp_path)})
    assert opts.bind_host == "0.0.0.0" and opts.credentials == ("me", "pa:ss")


@pytest.mark.parametrize(("auth", "shown"), [("nopassword", "a value without ':'"), ("me:", "'me':..."),
                                             (":secret", "'':...")])
def test_malformed_auth_is_one_line_without_the_password(auth, shown, capsys, tmp_path):
    rc, _, err = run_cli(["ui", *MODEL_ARGS, "--auth", auth, "--save_path", tmp_path], capsys)
    assert rc == 2
    assert err.strip().splitlines() == [
        f"Error: --auth: expected USER:PASS with both parts non-empty (got {shown}); e.g. --auth me:a-long-password"]
    assert "secret" not in err


def test_listen_and_another_host_conflict(capsys, tmp_path):
    rc, _, err = run_cli(["ui", *MODEL_ARGS, "--listen", "--auth", "a:b", "--host", "127.0.0.1", "--save_path",
                          tmp_path], capsys)
    assert rc == 2 and "Error: --listen binds 0.0.0.0, but --host 127.0.0.1 was given too; keep one of them" in err


def test_bad_port_names_the_flag(capsys, tmp_path):
    rc, _, err = run_cli(["ui", *MODEL_ARGS, "--port", "70000", "--save_path", tmp_path], capsys)
    assert rc == 2 and err.startswith("Error: --port: ") and "70000" in err


def test_missing_gradio_is_one_line_with_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    rc, out, err = run_cli(["ui", *MODEL_ARGS, "--save_path", tmp_path / "o"], capsys)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        'Error: framepack ui needs Gradio, which is not installed; pip install "framepack-cli[ui]" '
        '(in a clone: pip install -e ".[ui]")']
    assert not (tmp_path / "o").exists()


def test_help_lists_the_options_and_loads_neither_gradio_nor_torch():
    code = ("import sys; from framepack_cli.cli.app import main\n"
            "try:\n    main(['ui', '--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'gradio', 'gradio_client'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "100"})
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout
    for flag in ("--host", "--port", "--listen", "--auth", "--save_path", "--memory", "--models_dir", "--dit"):
        assert flag in res.stdout
    flat = " ".join(res.stdout.split())
    assert "[default: 127.0.0.1]" in flat and "[default: 7860]" in flat


def test_a_wrong_model_file_is_one_line_before_serving_and_leaves_no_folder(capsys, tmp_path):
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    args = list(MODEL_ARGS)
    args[args.index("--vae") + 1] = args[args.index("--dit") + 1]  # the DiT given as the VAE
    rc, out, err = run_cli(["ui", *args, "--save_path", tmp_path / "o", "--port", "1"], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --vae: ") and "DiT" in lines[0]
    assert not (tmp_path / "o").exists()


def test_queue_files_and_worker_load_neither_gradio_nor_torch():
    code = ("import sys, framepack_cli.ui.queue, framepack_cli.ui.files, framepack_cli.ui.worker\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'gradio', 'numpy'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_lora_folder_defaults_to_models_dir_then_framepack_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEPACK_HOME", str(tmp_path / "home"))
    assert validate(UiOptions, {"save_path": str(tmp_path)}).lora_folder == tmp_path / "home" / "loras"
    opts = validate(UiOptions, {"save_path": str(tmp_path), "models_dir": str(tmp_path / "m")})
    assert opts.lora_folder == tmp_path / "m" / "loras"
    opts = validate(UiOptions, {"save_path": str(tmp_path), "models_dir": str(tmp_path / "m"),
                                "lora_dir": str(tmp_path / "mine")})
    assert opts.lora_folder == tmp_path / "mine"


def test_lora_dir_must_be_a_folder_and_f1_dit_a_file(capsys, tmp_path):
    afile = tmp_path / "a.safetensors"
    afile.write_bytes(b"x")
    rc, out, err = run_cli(["ui", *MODEL_ARGS, "--lora-dir", afile, "--f1-dit", tmp_path / "nope.safetensors",
                            "--save_path", tmp_path / "o"], capsys)
    assert rc == 2 and out == ""
    assert f"--f1_dit: file not found: {tmp_path / 'nope.safetensors'}" in err
    assert f"--lora_dir {afile}: not a folder; give the folder that holds the LoRA files" in err


def test_the_f1_note_says_which_dit_f1_jobs_use(tmp_path):
    from framepack_cli.ui.app import f1_note

    dit = tmp_path / "vanilla.safetensors"
    f1 = tmp_path / "f1.safetensors"
    for p in (dit, f1):
        p.write_bytes(b"x")
    base = {"save_path": str(tmp_path)}
    assert f1_note(validate(UiOptions, {**base, "dit": str(dit), "f1_dit": str(f1)})) == \
        "F1 jobs use the F1 DiT f1.safetensors (--f1_dit)."
    assert f1_note(validate(UiOptions, {**base, "dit": str(dit)})) == (
        "F1 jobs use --dit vanilla.safetensors too; start the app with --f1_dit FILE to give them the FramePack-F1 "
        "DiT.")
    assert f1_note(validate(UiOptions, base)).startswith("F1 jobs use the FramePack-F1 DiT found in the models folders")
