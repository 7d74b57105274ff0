"""Text encoders: LLaMA-3 (text_encoder1), CLIP-L (text_encoder2), their tokenizers and prompt encoding.

Weights are read with `framepack_cli.models.loading` in every layout users have (Comfy-Org single files,
HF shards, HF directories and snapshots) and loaded into transformers' `LlamaModel` / `CLIPTextModel`
built without allocating memory (parameters on the meta device, then assigned from the state dict), so a
checkpoint is held in memory once.

Prompt encoding follows inference.md §3.1-3.2 exactly (HunyuanVideo template, crop of the system prefix,
LLaMA `hidden_states[-3]`, zero-pad to 512 with a bool mask, CLIP pooler of the raw prompt).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_cli.errors import FramepackError, ModelFormatError
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

# HunyuanVideo's `dit-llm-encode-video` template (diffusers' DEFAULT_PROMPT_TEMPLATE). The numbered items
# are joined without a space after the period on purpose: the real tokenizer gives exactly 95 prefix tokens.
SYSTEM_PROMPT = (
    "Describe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:"
)
PROMPT_PREFIX = "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
PROMPT_SUFFIX = "<|eot_id|>"
DEFAULT_CROP_START = 95  # tokens of the default prefix incl. BOS; hard-coded by the reference
TEXT_LENGTH = 512  # the DiT's text context length (llama_vec is padded / cropped to this)
CLIP_LENGTH = 77

# Constants of the real llava-llama-3-8b language model, used when a checkpoint has no config.json.
LLAMA_HEAD_DIM = 128
LLAMA_ROPE_THETA = 500000.0
LLAMA_RMS_EPS = 1e-5
LLAMA_MAX_POSITIONS = 8192
# Constants of the real CLIP-L text model.
CLIP_HEAD_DIM = 64
CLIP_LN_EPS = 1e-5

HF_REPO = "hunyuanvideo-community/HunyuanVideo"

_LAYER_RE = re.compile(r"^layers\.(\d+)\.")


# --------------------------------------------------------------------------------------------------------------
# Shared loading machinery (also used by image_encoder.py)
# --------------------------------------------------------------------------------------------------------------


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
def _quiet_transformers():
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

    with _quiet_transformers(), init_empty_weights(include_buffers=False):
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
        fp8_keys: keys for which the weight is stored as float8_e4m3fn instead (see `_enable_fp8_linears`).

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


def _count_layers(keys: Iterable[str], pattern: re.Pattern[str], path: object) -> int:
    idx = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if not idx:
        raise ModelFormatError(f"{path}: no transformer layers found in the weights")
    if idx != set(range(max(idx) + 1)):
        raise ModelFormatError(f"{path}: layer indices are not contiguous ({len(idx)} layers, max {max(idx)})")
    return max(idx) + 1


def _config_from_json(raw: dict | None, model_types: tuple[str, ...], sub: str | None) -> dict | None:
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


def _shape(infos: dict, key: str, path: object) -> tuple[int, ...]:
    if key not in infos:
        raise ModelFormatError(f"{path}: tensor {key} is missing")
    return tuple(infos[key].shape)


def _match_prefix(sd: dict, expected_keys: Iterable[str], prefix: str) -> dict:
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


def _refuse_prequantized(path: object, infos: dict) -> None:
    if any(k.endswith(".scale_weight") or k in ("scaled_fp8", "model.scaled_fp8") for k in infos):
        raise ModelFormatError(
            f"{path}: this is a pre-quantised (scaled fp8) checkpoint, which is not supported",
            hint="use the fp16/bf16 file; --fp8_llm quantises the LLaMA at load time",
        )


# --------------------------------------------------------------------------------------------------------------
# Text encoder 1: LLaMA
# --------------------------------------------------------------------------------------------------------------


def _llama_config(infos: dict, raw: dict | None, path: object) -> Any:
    from transformers import LlamaConfig

    keys = list(infos)
    n_layers = _count_layers(keys, _LAYER_RE, path)
    cfg = _config_from_json(raw, ("llama",), "text_config")
    if cfg is not None:
        cfg.pop("architectures", None)
        with _quiet_transformers():
            config = LlamaConfig.from_dict(cfg)
        if config.num_hidden_layers != n_layers:
            raise ModelFormatError(
                f"{path}: config.json says {config.num_hidden_layers} layers but the weights have {n_layers}"
            )
        return config
    vocab, hidden = _shape(infos, "embed_tokens.weight", path)
    q_out = _shape(infos, "layers.0.self_attn.q_proj.weight", path)[0]
    k_out = _shape(infos, "layers.0.self_attn.k_proj.weight", path)[0]
    inter = _shape(infos, "layers.0.mlp.gate_proj.weight", path)[0]
    if q_out % LLAMA_HEAD_DIM or k_out % LLAMA_HEAD_DIM:
        raise ModelFormatError(
            f"{path}: q/k projections ({q_out}, {k_out}) are not multiples of head_dim {LLAMA_HEAD_DIM}; "
            "cannot infer the architecture",
            hint="put the model's config.json beside the weights",
        )
    big_vocab = vocab > 128001
    with _quiet_transformers():
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=n_layers,
            num_attention_heads=q_out // LLAMA_HEAD_DIM,
            num_key_value_heads=k_out // LLAMA_HEAD_DIM,
            head_dim=LLAMA_HEAD_DIM,
            hidden_act="silu",
            max_position_embeddings=LLAMA_MAX_POSITIONS,
            rms_norm_eps=LLAMA_RMS_EPS,
            rope_theta=LLAMA_ROPE_THETA,
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            # The real ids; unset for small vocabularies so transformers does not warn about them.
            bos_token_id=128000 if big_vocab else None,
            eos_token_id=128001 if big_vocab else None,
            pad_token_id=None,
        )


def _fp8_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    # Weights live in float8_e4m3fn (half the memory of fp16); upcast per call, compute in x's dtype.
    bias = self.bias.to(x.dtype) if self.bias is not None else None
    return F.linear(x, self.weight.to(x.dtype), bias)


def _enable_fp8_linears(model: nn.Module) -> int:
    """Give every Linear holding an fp8 weight an upcasting forward. Returns how many were patched."""
    import types

    import torch

    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float8_e4m3fn:
            m.forward = types.MethodType(_fp8_linear_forward, m)
            n += 1
    return n


def load_text_encoder1(
    path: str | Path,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    fp8: bool = False,
    flag: str = "--text_encoder1",
) -> nn.Module:
    """Load the LLaMA text encoder, truncated to the layers prompt encoding needs.

    Accepted layouts: the Comfy-Org single file (`LlamaForCausalLM` dict with `model.` prefix and
    `lm_head.weight`; prefix stripped, `lm_head`/`tokenizer` entries dropped), any shard of an HF
    `model-0000i-of-0000n.safetensors` set, an HF `text_encoder` directory, or a snapshot holding
    `text_encoder/`. A `config.json` beside the weights defines the architecture; otherwise it is inferred
    from tensor shapes with the real model's constants (head_dim 128, rope_theta 500000, RMS eps 1e-5).

    Only `hidden_states[-3]` is used, i.e. the raw output of decoder layer N-3. The returned `LlamaModel`
    therefore keeps layers 0..N-3 only (the last 2 layers are never loaded) and its final norm is replaced
    by an identity, so its `last_hidden_state` *is* the full model's `hidden_states[-3]`.
    `model.config.framepack_source_layers` records N.

    Args:
        path: file, first (or any) shard, directory or snapshot.
        device: where the weights go.
        dtype: compute dtype (float16 on GPU as in the reference, float32 for parity on CPU).
        fp8: `--fp8_llm`: store every Linear weight as float8_e4m3fn and upcast it per matmul; embedding and
            RMSNorm weights stay in `dtype` (transformers' RMSNorm already normalises in float32).
        flag: CLI flag named in errors.

    Returns:
        The truncated `transformers.LlamaModel`, in eval mode, without gradients.

    Raises:
        ModelFormatError: wrong kind of file, unknown layout, or weights not matching the architecture.
    """
    import torch
    from transformers import LlamaModel

    files = resolve_weight_files(path, "text_encoder")
    infos = read_header_infos(files)
    det = expect_kind(path, infos, "text_encoder1", flag)
    _refuse_prequantized(path, infos)
    pre = det.prefix
    # Keys in canonical LlamaModel naming; the Comfy-Org extras (LM head, embedded tokenizer) are not ours.
    canon = {k[len(pre) :]: v for k, v in infos.items() if k.startswith(pre)}
    config = _llama_config(canon, read_config_json(files), path)
    n_src = config.num_hidden_layers
    if n_src < 3:
        raise ModelFormatError(f"{path}: LLaMA has {n_src} layers; hidden_states[-3] needs at least 3")
    n_keep = n_src - 2
    config.num_hidden_layers = n_keep
    config.framepack_source_layers = n_src
    model = build_empty_model(LlamaModel, config)
    model.norm = torch.nn.Identity()

    def wanted(k: str) -> bool:
        m = _LAYER_RE.match(k)
        return (m is None or int(m.group(1)) < n_keep) and k != "norm.weight"

    raw = load_state_dict(files, device="cpu")
    sd = {}
    for k in list(raw):
        v = raw.pop(k)
        if not k.startswith(pre):
            continue  # lm_head.weight, tokenizer, ... of the Comfy-Org file
        k = k[len(pre) :]
        if wanted(k):
            sd[k] = v
    del raw

    def is_fp8(k: str) -> bool:
        return fp8 and k.startswith("layers.") and k.endswith("_proj.weight")

    assign_state_dict(model, sd, path=path, device=device, dtype=dtype, fp8_keys=is_fp8)
    if fp8:
        _enable_fp8_linears(model)
    return model


# --------------------------------------------------------------------------------------------------------------
# Text encoder 2: CLIP-L
# --------------------------------------------------------------------------------------------------------------

_CLIP_LAYER_RE = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.")
# Entries of full-CLIP or old-transformers files that CLIPTextModel does not own (unused here).
_CLIP_EXTRAS = (
    "text_projection.weight",
    "logit_scale",
    "text_model.embeddings.position_ids",
    "embeddings.position_ids",
)


def _clip_config(infos: dict, raw: dict | None, path: object) -> Any:
    from transformers import CLIPTextConfig

    n_layers = _count_layers(infos, _CLIP_LAYER_RE, path)
    cfg = _config_from_json(raw, ("clip_text_model",), "text_config")
    if cfg is not None:
        cfg.pop("architectures", None)
        with _quiet_transformers():
            config = CLIPTextConfig.from_dict(cfg)
    else:
        p = "text_model." if any(k.startswith("text_model.") for k in infos) else ""
        vocab, hidden = _shape(infos, p + "embeddings.token_embedding.weight", path)
        positions = _shape(infos, p + "embeddings.position_embedding.weight", path)[0]
        inter = _shape(infos, p + "encoder.layers.0.mlp.fc1.weight", path)[0]
        if hidden % CLIP_HEAD_DIM:
            raise ModelFormatError(
                f"{path}: hidden size {hidden} is not a multiple of head_dim {CLIP_HEAD_DIM}",
                hint="put the model's config.json beside the weights",
            )
        with _quiet_transformers():
            config = CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=inter,
                projection_dim=hidden,
                num_hidden_layers=n_layers,
                num_attention_heads=hidden // CLIP_HEAD_DIM,
                max_position_embeddings=positions,
                hidden_act="quick_gelu",
                layer_norm_eps=CLIP_LN_EPS,
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
            )
    # The reference's configs carry the legacy eos id 2, for which transformers pools the hidden state at
    # argmax(input_ids) (the first <|endoftext|>, the highest id). Forcing it keeps that rule whatever
    # config.json says; with the CLIP tokenizer both rules pick the same token anyway.
    config.eos_token_id = 2
    if config.num_hidden_layers != n_layers:
        raise ModelFormatError(
            f"{path}: config.json says {config.num_hidden_layers} layers but the weights have {n_layers}"
        )
    return config


def load_text_encoder2(
    path: str | Path,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    flag: str = "--text_encoder2",
) -> nn.Module:
    """Load the CLIP-L text encoder (`transformers.CLIPTextModel`).

    Accepted layouts: the Comfy-Org `clip_l.safetensors`, an HF `text_encoder_2` directory, or a snapshot
    holding `text_encoder_2/`. Keys are accepted with or without the `text_model.` prefix (whatever the
    installed transformers expects is produced); `text_projection`/`logit_scale`/`position_ids` entries are
    ignored. Without a config.json the architecture is inferred from shapes (head_dim 64, quick_gelu).

    Args:
        path: file, directory or snapshot.
        device: where the weights go.
        dtype: compute dtype.
        flag: CLI flag named in errors.

    Returns:
        `CLIPTextModel` in eval mode, without gradients.

    Raises:
        ModelFormatError: wrong kind of file or weights not matching the architecture.
    """
    from transformers import CLIPTextModel

    return load_hf_encoder(path, subfolder="text_encoder_2", kind="text_encoder2", flag=flag,
                           model_cls=CLIPTextModel, config_fn=_clip_config, extras=_CLIP_EXTRAS, prefix="text_model.",
                           device=device, dtype=dtype)


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
    sd = _match_prefix(sd, model.state_dict().keys(), prefix)
    return assign_state_dict(model, sd, path=path, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------


def _is_tokenizer_dir(d: Path, kind: int) -> bool:
    if not d.is_dir():
        return False
    if (d / "tokenizer.json").is_file():
        return True
    if kind == 1:
        return (d / "tokenizer_config.json").is_file() and (d / "tokenizer.model").is_file()
    return (d / "vocab.json").is_file() and (d / "merges.txt").is_file()


def _hf_hub_cache() -> Path:
    """The HF hub cache folder, resolved from the environment at call time (like huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _cached_snapshot_dirs(repo: str) -> list[Path]:
    """Snapshot folders of `repo` in the HF cache, the one `refs/main` names first. Never uses the network."""
    root = _hf_hub_cache() / ("models--" + repo.replace("/", "--"))
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return []
    dirs = sorted(p for p in snaps.iterdir() if p.is_dir())
    ref = root / "refs" / "main"
    if ref.is_file():
        main = snaps / ref.read_text().strip()
        if main in dirs:
            dirs.remove(main)
            dirs.insert(0, main)
    return dirs


def _weights_dir(path: str | Path | None, subfolder: str) -> list[Path]:
    """Directories in which a tokenizer folder may sit, for a model path given by the user."""
    if path is None:
        return []
    p = Path(path).expanduser()
    out: list[Path] = []
    if p.is_dir():
        out.append(p)
        if (p / subfolder).is_dir():
            out.append(p / subfolder)
    elif p.exists():
        out.append(p.parent)
    out += [d.parent for d in list(out)]
    seen: list[Path] = []
    for d in out:
        if d not in seen:
            seen.append(d)
    return seen


def find_tokenizer_dir(
    kind: int, model_path: str | Path | None, explicit: str | Path | None = None
) -> Path:
    """Locate tokenizer 1 (`tokenizer/`) or 2 (`tokenizer_2/`).

    Order: the explicit directory (or its `tokenizer*/` subfolder); `tokenizer*/` beside the weights'
    directory or one level above; the offline HF cache of hunyuanvideo-community/HunyuanVideo.

    Raises:
        FramepackError: not found, with the flag that fixes it.
    """
    name = "tokenizer" if kind == 1 else "tokenizer_2"
    flag = f"--tokenizer{kind}"
    if explicit is not None:
        d = Path(explicit).expanduser()
        for cand in (d, d / name):
            if _is_tokenizer_dir(cand, kind):
                return cand
        raise FramepackError(
            f"{flag}: {d} holds no tokenizer (expected tokenizer.json"
            + (")" if kind == 1 else " or vocab.json + merges.txt)"),
            hint=f"pass the {name} folder of {HF_REPO}",
        )
    sub = "text_encoder" if kind == 1 else "text_encoder_2"
    searched: list[Path] = []
    for base in _weights_dir(model_path, sub):
        cand = base / name
        searched.append(cand)
        if _is_tokenizer_dir(cand, kind):
            return cand
    for snap in _cached_snapshot_dirs(HF_REPO):
        if _is_tokenizer_dir(snap / name, kind):
            return snap / name
    looked = ", ".join(str(s) for s in searched) or "(no model path)"
    raise FramepackError(
        f"tokenizer {kind} not found (looked in {looked} and the Hugging Face cache for {HF_REPO}/{name})",
        hint=f"pass {flag} DIR with the {name} folder of {HF_REPO}, or place it beside the weights",
    )


def load_tokenizers(
    text_encoder1_path: str | Path | None,
    text_encoder2_path: str | Path | None,
    tokenizer1: str | Path | None = None,
    tokenizer2: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load the LLaMA-3 tokenizer (right padding) and the CLIP tokenizer, fully offline.

    See `find_tokenizer_dir` for where they are looked for.

    Args:
        text_encoder1_path: the `--text_encoder1` path (tokenizer 1 is searched around it).
        text_encoder2_path: the `--text_encoder2` path.
        tokenizer1: explicit tokenizer 1 directory (`--tokenizer1`), wins over the search.
        tokenizer2: explicit tokenizer 2 directory (`--tokenizer2`).

    Returns:
        `(tokenizer1, tokenizer2)`.

    Raises:
        FramepackError: a tokenizer is missing or unreadable.
    """
    from transformers import AutoTokenizer, CLIPTokenizer

    d1 = find_tokenizer_dir(1, text_encoder1_path, tokenizer1)
    d2 = find_tokenizer_dir(2, text_encoder2_path, tokenizer2)
    try:
        with _quiet_transformers():
            # AutoTokenizer, not LlamaTokenizerFast: transformers 5 rebuilds a SentencePiece-style pipeline
            # for the Llama class, while the Llama-3 tokenizer.json is byte-level BPE.
            tok1 = AutoTokenizer.from_pretrained(str(d1), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise FramepackError(f"{d1}: cannot load tokenizer 1 ({e})", hint="pass --tokenizer1 DIR") from None
    try:
        with _quiet_transformers():
            tok2 = CLIPTokenizer.from_pretrained(str(d2), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise FramepackError(f"{d2}: cannot load tokenizer 2 ({e})", hint="pass --tokenizer2 DIR") from None
    tok1.padding_side = "right"  # the crop/slice logic assumes valid tokens first
    if tok1.pad_token is None:
        # Pad ids are never attended by valid (causal) positions and are sliced away; any id works.
        tok1.pad_token = tok1.eos_token
    return tok1, tok2


# --------------------------------------------------------------------------------------------------------------
# Prompt encoding
# --------------------------------------------------------------------------------------------------------------


def crop_or_pad_with_mask(vec: torch.Tensor, length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad or crop a `[B, L, D]` sequence to `length` tokens and give the validity mask.

    Args:
        vec: `[B, L, D]` with every one of the L tokens valid.
        length: target length (512 for the DiT).

    Returns:
        `(vec [B, length, D], mask [B, length] bool)`: the first `min(L, length)` positions are True.
    """
    import torch

    b, n, d = vec.shape
    if n >= length:
        return vec[:, :length], torch.ones(b, length, dtype=torch.bool, device=vec.device)
    out = torch.zeros(b, length, d, dtype=vec.dtype, device=vec.device)
    out[:, :n] = vec
    mask = torch.zeros(b, length, dtype=torch.bool, device=vec.device)
    mask[:, :n] = True
    return out, mask


EMPTY_PROMPT = " "  # what an empty positive prompt is encoded as (the reference: `args.prompt if args.prompt else " "`)


def positive_prompt(prompt: str | None) -> str:
    """The text encoded for a positive (section) prompt: an empty or missing prompt becomes a single space.

    musubi-tuner encodes `" "` when `--prompt` is empty; this applies the same rule to every empty positive
    prompt (an empty section of `"0:;;;1:foo"`, a batch line with only inline options) so equal inputs give
    equal videos. Negative prompts are not passed through this: an empty negative prompt is encoded as "".
    """
    return prompt if prompt else EMPTY_PROMPT


def prompt_overflow(
    prompt: str,
    tok1: Any,
    tok2: Any,
    *,
    custom_system_prompt: str | None = None,
    max_length: int = 256,
) -> dict[str, tuple[int, int]]:
    """Tokens of `prompt` that encoding drops, per encoder: `{"LLaMA": (tokens, kept), "CLIP-L": ...}`.

    Only encoders that drop something are listed. LLaMA counts the prompt's tokens after the template
    crop, with the closing `<|eot_id|>` (at most `max_length` are kept, see `encode_llama`); CLIP-L counts
    the raw prompt's tokens with BOS and EOS (at most 77 are kept).
    """
    text, crop = llama_text_and_crop(prompt, tok1, custom_system_prompt)
    with _quiet_transformers():  # "sequence length is longer than the maximum" is what we are measuring
        n_llama = len(tok1(text, truncation=False)["input_ids"]) - crop
        n_clip = len(tok2(prompt, truncation=False)["input_ids"])
    out = {}
    if n_llama > max_length:
        out["LLaMA"] = (n_llama, max_length)
    if n_clip > CLIP_LENGTH:
        out["CLIP-L"] = (n_clip, CLIP_LENGTH)
    return out


def llama_text_and_crop(prompt: str, tok1: Any, custom_system_prompt: str | None = None) -> tuple[str, int]:
    """The templated LLaMA input for `prompt` and the number of prefix tokens (incl. BOS) to crop."""
    if custom_system_prompt is None:
        return PROMPT_PREFIX.format(SYSTEM_PROMPT) + prompt + PROMPT_SUFFIX, DEFAULT_CROP_START
    prefix = PROMPT_PREFIX.format(custom_system_prompt)
    crop = len(tok1(prefix, truncation=True)["input_ids"])
    return prefix + prompt + PROMPT_SUFFIX, crop


def encode_llama(
    prompt: str,
    te1: nn.Module,
    tok1: Any,
    *,
    custom_system_prompt: str | None = None,
    max_length: int = 256,
) -> torch.Tensor:
    """LLaMA `hidden_states[-3]` of the templated prompt, cropped to the prompt tokens: `[1, L, D]`, L <= max_length.

    The templated text is tokenised to `max_length + crop_start` tokens (truncating long prompts), so up to
    `max_length` prompt tokens (including the closing `<|eot_id|>`) survive the crop.
    """
    import torch

    text, crop = llama_text_and_crop(prompt, tok1, custom_system_prompt)
    enc = tok1(
        text,
        padding="max_length",
        max_length=max_length + crop,
        truncation=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    dev = te1.embed_tokens.weight.device
    ids = enc["input_ids"].to(dev)
    mask = enc["attention_mask"].to(dev)
    with torch.no_grad():
        # `te1` is truncated after layer N-3 with an identity final norm (see load_text_encoder1), so
        # last_hidden_state is the full model's hidden_states[-3].
        hidden = te1(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    n_valid = int(mask[0].sum())
    return hidden[:, crop:n_valid]


def encode_clip(prompt: str, te2: nn.Module, tok2: Any) -> torch.Tensor:
    """CLIP-L `pooler_output` `[1, Dc]` of the raw prompt (no template), padded to 77 tokens."""
    import torch

    ids = tok2(prompt, padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt")["input_ids"]
    dev = next(te2.parameters()).device
    with torch.no_grad():
        # No attention mask, as in the reference: attention is causal and pooling takes the first EOS.
        return te2(input_ids=ids.to(dev)).pooler_output


def encode_prompt(
    prompt: str,
    te1: nn.Module,
    tok1: Any,
    te2: nn.Module,
    tok2: Any,
    *,
    custom_system_prompt: str | None = None,
    max_length: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode one prompt into the DiT's text conditioning (inference.md §3.1-3.2).

    The prompt is used as given: the generator passes positive prompts through `positive_prompt` first
    (an empty one becomes " "), negative prompts as they are.

    Args:
        prompt: the user's prompt.
        te1: from `load_text_encoder1`.
        tok1: LLaMA tokenizer from `load_tokenizers`.
        te2: from `load_text_encoder2`.
        tok2: CLIP tokenizer.
        custom_system_prompt: replaces the HunyuanVideo system prompt; the crop is then the token count of
            the custom prefix (incl. BOS) instead of 95.
        max_length: maximum number of prompt tokens kept (256 in the reference).

    Returns:
        `(llama_vec [1, 512, D], llama_mask [1, 512] bool, clip_pooler [1, Dc])` on the CPU, in the
        encoders' compute dtype.
    """
    vec = encode_llama(prompt, te1, tok1, custom_system_prompt=custom_system_prompt, max_length=max_length)
    vec, mask = crop_or_pad_with_mask(vec.cpu(), TEXT_LENGTH)
    pooler = encode_clip(prompt, te2, tok2).cpu()
    return vec, mask, pooler
