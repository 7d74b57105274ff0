"""Models that are done leave before the DiT runs and are freed when the job list no longer needs them
(issue 12): the text encoders and SigLIP are deleted (really freed: no reference left) before the DiT loads in
a --from_file batch; --interactive keeps only what every prompt needs; after the run nothing is held."""

from __future__ import annotations

import gc
import io
import weakref

import pytest

from framepack_cli.cli.app import main
from framepack_cli.engine.models import Models
from tests.conftest import INPUTS, MODEL_ARGS

pytestmark = pytest.mark.slow


@pytest.fixture
def watch(monkeypatch):
    """Weak references to every model loaded, and what the run held when the DiT was asked for."""
    refs: dict[str, list[weakref.ref]] = {"text": [], "image_encoder": [], "dit": [], "vae": []}
    at_dit: list[dict] = []
    text, image_encoder, dit, vae = Models.text, Models.image_encoder, Models.dit, Models.vae

    def wrap(name, fn):
        def inner(self):
            if name == "dit" and "dit" not in self._loaded:
                gc.collect()
                at_dit.append({"loaded": set(self._loaded),
                               "alive": {k: sum(r() is not None for r in v) for k, v in refs.items()}})
            out = fn(self)
            for m in out if isinstance(out, tuple) else (out,):
                if hasattr(m, "parameters"):
                    refs[name].append(weakref.ref(m))
            return out
        return inner

    for name, fn in (("text", text), ("image_encoder", image_encoder), ("dit", dit), ("vae", vae)):
        monkeypatch.setattr(Models, name, wrap(name, fn))
    return refs, at_dit


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out.err


def base(tmp_path):
    return ["generate", *MODEL_ARGS, "--video_size", "32", "48", "--infer_steps", "1", "--latent_window_size", "2",
            "--output_type", "latent", "--image_path", INPUTS / "start.png", "--save_path", tmp_path]


def alive(refs):
    gc.collect()
    return {k: sum(r() is not None for r in v) for k, v in refs.items()}


def test_batch_frees_the_encoders_before_the_dit_and_everything_after(tmp_path, capsys, watch):
    refs, at_dit = watch
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a cat --d 1 --vs 1\na dog --d 2 --vs 1\n")
    run([*base(tmp_path), "--from_file", jobs], capsys)
    assert len(at_dit) == 1  # one DiT load for both jobs
    assert at_dit[0]["loaded"] == {"vae"}  # only the VAE (parked: it decodes later)
    assert at_dit[0]["alive"]["text"] == 0 and at_dit[0]["alive"]["image_encoder"] == 0  # freed, not just dropped
    assert len(refs["text"]) == 2 and len(refs["image_encoder"]) == 1
    assert alive(refs) == {"text": 0, "image_encoder": 0, "dit": 0, "vae": 0}  # the run holds nothing after
    assert len(list(tmp_path.glob("*_latent.safetensors"))) == 2


def test_interactive_keeps_only_what_every_prompt_needs(tmp_path, capsys, watch, monkeypatch):
    refs, at_dit = watch
    monkeypatch.setattr("sys.stdin", io.StringIO("a cat --d 1 --vs 1\na dog --d 2 --vs 1\n"))
    run([*base(tmp_path), "--interactive"], capsys)
    assert len(at_dit) == 1
    assert at_dit[0]["loaded"] == {"vae", "image_encoder"}  # kept for the next prompt; the text encoders freed
    assert at_dit[0]["alive"]["text"] == 0
    assert alive(refs) == {"text": 0, "image_encoder": 0, "dit": 0, "vae": 0}
