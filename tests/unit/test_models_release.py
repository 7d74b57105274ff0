"""`Models.release` off CUDA: a full gc.collect() only when a released model may still be alive.

The collection costs 0.3-0.4 s with torch, transformers and diffusers imported (three to four per run); a
model that nothing else references is freed by reference counting the moment `release` drops it.
"""

from __future__ import annotations

import torch

from framepack_cli.engine import models as models_mod
from framepack_cli.engine.models import Models


def _models(monkeypatch, keep=frozenset()):
    calls: list[str] = []
    monkeypatch.setattr(models_mod, "free_memory", lambda device: calls.append(device.type))
    return Models(None, torch.device("cpu"), None, None, keep=keep), calls


def test_released_unreferenced_model_is_not_collected_again(monkeypatch):
    m, calls = _models(monkeypatch)
    m._loaded["dit"] = torch.nn.Linear(2, 2)
    tokenizer = object()  # the caller still holds the tokenizers: small, not what the collection is for
    m._loaded["text"] = (torch.nn.Linear(2, 2), tokenizer, torch.nn.Linear(2, 2), "tok")
    m.release("dit")
    m.release("text")
    assert "dit" not in m._loaded and "text" not in m._loaded
    assert calls == []


def test_model_without_weights_parts_is_collected(monkeypatch):
    m, calls = _models(monkeypatch)
    m._loaded["image_encoder"] = object()  # nothing to watch: collect, as before
    m.release("image_encoder")
    assert calls == ["cpu"]


def test_model_still_alive_after_release_is_collected(monkeypatch):
    m, calls = _models(monkeypatch)
    held = torch.nn.Linear(2, 2)
    m._loaded["dit"] = held
    m.release("dit")
    assert calls == ["cpu"]  # something may hold it in a cycle: collect, as before


def test_model_in_a_cycle_is_freed_by_the_collection(monkeypatch):
    import gc
    import weakref

    monkeypatch.setattr(models_mod, "free_memory", lambda device: gc.collect())
    m = Models(None, torch.device("cpu"), None, None)
    dit = torch.nn.Linear(2, 2)
    dit.me = [dit]  # a reference cycle: reference counting alone cannot free it
    ref = weakref.ref(dit)
    m._loaded["dit"] = dit
    del dit
    m.release("dit")
    assert ref() is None


def test_kept_model_on_cpu_is_left_alone(monkeypatch):
    m, calls = _models(monkeypatch, keep=frozenset({"vae"}))
    vae = torch.nn.Linear(2, 2)
    m._loaded["vae"] = vae
    m.release("vae")
    assert m._loaded["vae"] is vae and calls == []
