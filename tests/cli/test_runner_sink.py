"""The CLI gives an engine entry point its progress sink (engines never build one from the CLI layer)."""

from __future__ import annotations

import pytest

from framepack_cli.cli.app import call_runner
from framepack_cli.cli.render import RichProgress


def test_entry_point_with_a_sink_parameter_gets_the_terminal_sink_closed_after_the_run(monkeypatch):
    closed = []
    monkeypatch.setattr(RichProgress, "close", lambda self: closed.append(self))
    got = []

    def run(opts, sink):
        got.append((opts, sink))
        return "done"

    assert call_runner(run, "opts") == "done"
    ((opts, sink),) = got
    assert opts == "opts" and isinstance(sink, RichProgress) and closed == [sink]

    def fails(opts, sink=None):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        call_runner(fails, "opts")
    assert len(closed) == 2  # closed however the run ends


def test_entry_point_without_a_sink_parameter_gets_the_options_only():
    assert call_runner(lambda opts: ("only", opts), 7) == ("only", 7)


def test_cache_commands_run_with_the_sink_the_cli_passes(monkeypatch, tmp_path, capsys):
    import framepack_cli.engine.cache_latents as cache_latents
    from framepack_cli.cli.app import main

    seen = []
    monkeypatch.setattr(cache_latents, "run_latents", lambda opts, sink: seen.append(sink))
    for name in ("d.toml", "vae.safetensors", "sigclip.safetensors"):
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit) as e:
        main(["cache", "latents", "--dataset_config", str(tmp_path / "d.toml"),
              "--vae", str(tmp_path / "vae.safetensors"), "--image_encoder", str(tmp_path / "sigclip.safetensors")])
    assert e.value.code == 0, capsys.readouterr().err
    assert len(seen) == 1 and isinstance(seen[0], RichProgress)
