"""Building transformers models straight from checkpoint files, holding the weights in memory once.

A model is constructed with its parameters on the meta device (`build_empty_model`: no memory, no random
init), its config comes from a config.json beside the weights (`config_from_json`) or is inferred from
tensor shapes (`tensor_shape`, `count_layers`), and the state dict read by `framepack_cli.models.loading` is
moved into it key by key, strictly (`assign_state_dict`). `load_hf_encoder` is the whole path for the CLIP
and SigLIP encoders; the LLaMA loader uses the pieces. Weight files are found in every layout users have
(Comfy-Org single files, HF shards, HF directories and snapshots) by `resolve_weight_files`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_cli.errors import ModelFormatError
from framepack_cli.models.detect import expect_kind
from framepack_cli.models.loading import (
    find_weight_files,
    key_mismatch,
    load_state_dict,
    read_config_json,
    read_header_infos,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def resolve_weight_files(path: str | Path, subfolder: str) -> list[Path]:
    """Weight files for a user path: a file (any shard of a set), a model directory, or a snapshot.

    A snapshot directory (one holding `subfolder/`) is resolved to that subfolder first, because snapshots
    may also hold loose single-file checkpoints of other models that would otherwise be picked up.

    Raises:
        ModelFormatError: nothing usable at `path`.
    """
    kind = _SUBFOLDER_KINDS.get(subfolder)
    p = Path(path).expanduser()
    if p.is_dir() and (p / subfolder).is_dir():
        return find_weight_files(p / subfolder, kind=kind)
    return find_weight_files(p, subfolders=(subfolder,), kind=kind)


_SUBFOLDER_KINDS = {
    "text_encoder": "text_encoder1", "text_encoder_2": "text_encoder2", "image_encoder": "image_encoder",
}


@contextmanager
def quiet_transformers():
    """Silence transformers' info/warning chatter (config validation, tokenizer class notes) for one call."""
    loggers = [logging.getLogger("transformers")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old, strict=True):
            lg.setLevel(lv)


def build_empty_model(model_cls: Callable[[Any], nn.Module], config: Any) -> nn.Module:
    """Construct a transformers model with its parameters on the meta device (no memory, no random init).

    Buffers (rotary frequencies, position ids) are created normally, since they are not in checkpoints.
    """
    from accelerate import init_empty_weights

    with quiet_transformers(), init_empty_weights(include_buffers=False):
        return model_cls(config)


def assign_state_dict(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    *,
    path: object,
    device: str | torch.device,
    dtype: torch.dtype,
    fp8_keys: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Move `sd` into an empty model key by key (cast to `dtype`, moved to `device`), strictly.

    Tensors are popped from `sd` as they are converted, so peak memory stays about one checkpoint.

    Args:
        model: a model from `build_empty_model`.
        sd: state dict with exactly the model's keys (consumed).
        path: the user's path, for error messages.
        device: target device.
        dtype: floating dtype for every parameter.
        fp8_keys: keys for which the weight is stored as float8_e4m3fn instead (the LLaMA loader's `--fp8_llm`).

    Raises:
        ModelFormatError: missing or unexpected keys, or shapes that do not fit the architecture.
    """
    import torch

    expected = model.state_dict(keep_vars=True)
    expected = {k: v for k, v in expected.items() if isinstance(v, torch.nn.Parameter)}
    mismatch = key_mismatch(expected, sd)
    if mismatch:
        raise ModelFormatError(f"{path}: weights do not match the model: {mismatch} keys")
    new_sd: dict[str, torch.Tensor] = {}
    for k in list(sd):
        t = sd.pop(k)
        want = tuple(expected[k].shape)
        if tuple(t.shape) != want:
            raise ModelFormatError(f"{path}: tensor {k} has shape {tuple(t.shape)}, the architecture needs {want}")
        target = torch.float8_e4m3fn if fp8_keys is not None and fp8_keys(k) else dtype
        # Cast on the target device when it is an accelerator (fast); the cast itself is exact for
        # fp16/bf16 -> fp32, so every format of a model gives bit-identical float32 weights.
        new_sd[k] = t.to(device=device).to(target) if t.is_floating_point() else t.to(device=device)
    model.load_state_dict(new_sd, strict=False, assign=True)
    model.to(device)  # the buffers built on CPU
    model.eval()
    model.requires_grad_(False)
    return model


def count_layers(keys: Iterable[str], pattern: re.Pattern[str], path: object) -> int:
    """Number of layers in `keys`, whose layer index is `pattern`'s group 1; the indices must be 0..N-1."""
    idx = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if not idx:
        raise ModelFormatError(f"{path}: no transformer layers found in the weights")
    if idx != set(range(max(idx) + 1)):
        raise ModelFormatError(f"{path}: layer indices are not contiguous ({len(idx)} layers, max {max(idx)})")
    return max(idx) + 1


def config_from_json(raw: dict | None, model_types: tuple[str, ...], sub: str | None) -> dict | None:
    """The config dict of `model_types` from a config.json (possibly nested under `sub`), else None.

    A config.json of some other model sitting beside a single file (ComfyUI model folders) is ignored.
    """
    if not raw:
        return None
    if raw.get("model_type") in model_types:
        return dict(raw)
    if sub and isinstance(raw.get(sub), dict) and raw[sub].get("model_type", model_types[0]) in model_types:
        return dict(raw[sub])
    return None


def tensor_shape(infos: dict, key: str, path: object) -> tuple[int, ...]:
    """The shape of tensor `key` from header infos; a missing tensor is a `ModelFormatError` naming it."""
    if key not in infos:
        raise ModelFormatError(f"{path}: tensor {key} is missing")
    return tuple(infos[key].shape)


def match_prefix(sd: dict, expected_keys: Iterable[str], prefix: str) -> dict:
    """Add or strip `prefix` so the keys follow whatever layout the installed transformers uses.

    transformers 4 names CLIP/SigLIP parameters `text_model.*` / `vision_model.*`; transformers 5 dropped
    the prefix in its module tree. Checkpoints come with either.
    """
    wants_prefix = any(k.startswith(prefix) for k in expected_keys)
    n = len(prefix)
    out = {}
    for k, v in sd.items():
        has = k.startswith(prefix)
        if wants_prefix and not has:
            k = prefix + k
        elif not wants_prefix and has:
            k = k[n:]
        out[k] = v
    return out


def refuse_prequantized(path: object, infos: dict) -> None:
    """Refuse a pre-quantised (scaled fp8) checkpoint with a hint to the fp16/bf16 file."""
    if any(k.endswith(".scale_weight") or k in ("scaled_fp8", "model.scaled_fp8") for k in infos):
        raise ModelFormatError(
            f"{path}: this is a pre-quantised (scaled fp8) checkpoint, which is not supported",
            hint="use the fp16/bf16 file; --fp8_llm quantises the LLaMA at load time",
        )


def load_hf_encoder(
    path: str | Path, *, subfolder: str, kind: str, flag: str, model_cls: Callable[[Any], nn.Module],
    config_fn: Callable[[dict, dict | None, object], Any], extras: Iterable[str], prefix: str,
    device: str | torch.device, dtype: torch.dtype, skip: Callable[[str], bool] | None = None,
) -> nn.Module:
    """The shared load path of the CLIP and SigLIP encoders: resolve files, check the kind, build the config
    (config.json or shapes), build on the meta device, load strictly with or without the `prefix`.

    Args:
        extras: keys that some exports carry and the model does not have (position ids, projections).
        skip: keys of parts this tool never runs (not loaded).
    """
    files = resolve_weight_files(path, subfolder)
    infos = read_header_infos(files)
    expect_kind(path, infos, kind, flag)
    extras = set(extras)
    infos = {k: v for k, v in infos.items() if k not in extras}
    model = build_empty_model(model_cls, config_fn(infos, read_config_json(files), path))
    sd = {k: v for k, v in load_state_dict(files, device="cpu").items()
          if k not in extras and not (skip and skip(k))}
    sd = match_prefix(sd, model.state_dict().keys(), prefix)
    return assign_state_dict(model, sd, path=path, device=device, dtype=dtype)
