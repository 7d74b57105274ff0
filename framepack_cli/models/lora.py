"""LoRA files for the FramePack DiT: every key layout in circulation in, every layout out, exact merging.

Layouts read (detected from key names, never from file names or flags):

* ``musubi-framepack``: musubi-tuner's own files, ``lora_unet_<module path with _>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha`` with FramePack (diffusers) module names.
* ``musubi-hunyuanvideo``: musubi's HunyuanVideo LoRAs, ``lora_unet_double_blocks_0_img_attn_qkv`` style.
* ``diffusers``: PEFT keys under ``transformer.`` (``.lora_A.weight`` / ``.lora_B.weight``, no alpha, scale 1;
  diffusers' ``lora_adapter_metadata`` alphas are honoured when present); ``peft`` is the same without a prefix.
* ``comfy``: ``diffusion_model.<FramePack module>.lora_A/lora_B`` (kijai's FramePack wrapper);
  ``comfy-hunyuanvideo``: ``diffusion_model.`` + HunyuanVideo names, both the original ones (``img_attn_qkv``,
  ``img_mod.linear``, ``img_mlp.fc1``) and ComfyUI's own (``img_attn.qkv``, ``img_mod.lin``, ``img_mlp.0``).
* ``diffusion-pipe-hunyuanvideo``: ``transformer.`` + original HunyuanVideo names.
* LyCORIS LoHa (``hada_w1_a``...) and LoKr (``lokr_w1``...) modules and full-delta ``.diff`` modules in any of
  the layouts above. They are detected and merged with their own formulas, so musubi's ``--lycoris`` flag is
  accepted but not needed.

HunyuanVideo names are mapped onto the FramePack modules like the reference generator does: fused ``qkv``
projections are split by rows into ``to_q/to_k/to_v`` (``add_*_proj`` for text), ``linear1`` of a single block
into ``to_q/to_k/to_v/proj_mlp`` (3·inner + mlp rows), ``lora_down`` and ``alpha`` being shared by the parts.
HunyuanVideo modules outside the double/single blocks have no FramePack counterpart and are reported unused.

Merging is static, done on a state dict before any fp8 quantisation: for every matched weight
``W += m · (alpha / rank) · up @ down``, computed in float32 (all LoRAs stacked before one cast back to the
weight's dtype). `plan_merge` validates everything (files, shapes, patterns) from shapes alone before any
weight is touched, so a bad LoRA fails in seconds instead of after loading 25 GB.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from framepack_cli.errors import FramepackError, ModelFormatError

# --------------------------------------------------------------------------------------------------
# FramePack module names (diffusers naming, identical in every FramePack DiT checkpoint)
# --------------------------------------------------------------------------------------------------

DUAL_BLOCK = "transformer_blocks"
SINGLE_BLOCK = "single_transformer_blocks"
REFINER_BLOCK = "context_embedder.token_refiner.refiner_blocks"

# Every Linear (or conv) a LoRA can target, per block container. Norm weights are 1-D: never LoRA targets.
_BLOCK_MODULES: dict[str, tuple[str, ...]] = {
    DUAL_BLOCK: (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
        "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2", "norm1.linear", "norm1_context.linear",
    ),
    SINGLE_BLOCK: ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"),
    REFINER_BLOCK: ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2",
                    "norm_out.linear"),
}
_GLOBAL_MODULES = (
    "x_embedder.proj", "clean_x_embedder.proj", "clean_x_embedder.proj_2x", "clean_x_embedder.proj_4x",
    "image_projection.up", "image_projection.down",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
    "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "context_embedder.time_text_embed.text_embedder.linear_1",
    "context_embedder.time_text_embed.text_embedder.linear_2",
    "context_embedder.proj_in", "norm_out.linear", "proj_out",
)
_GLOBAL_BY_UNDERSCORE = {p.replace(".", "_"): p for p in _GLOBAL_MODULES}
_BLOCK_BY_UNDERSCORE = {
    block.replace(".", "_"): (block, {m.replace(".", "_"): m for m in modules})
    for block, modules in _BLOCK_MODULES.items()
}
# Anchored, so "single_transformer_blocks_0_..." never matches the dual-block alternative.
_FP_BLOCK_RE = re.compile(
    r"^(transformer_blocks|single_transformer_blocks|context_embedder_token_refiner_refiner_blocks)_(\d+)_(\w+)$"
)
_FP_DOTTED_RE = re.compile(r"^(transformer_blocks|single_transformer_blocks|context_embedder\.token_refiner\."
                           r"refiner_blocks)\.(\d+)\.(.+)$")

# HunyuanVideo block module (its name with every "." turned into "_") -> FramePack module(s) and how the
# rows of a fused projection are split: "qkv" = 3 equal parts, "qkvm" = 3 x inner + the MLP rest.
_HV_DOUBLE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "img_attn_qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), "qkv"),
    "img_attn_proj": (("attn.to_out.0",), None),
    "img_mod_linear": (("norm1.linear",), None),
    "img_mod_lin": (("norm1.linear",), None),
    "img_mlp_fc1": (("ff.net.0.proj",), None),
    "img_mlp_0": (("ff.net.0.proj",), None),
    "img_mlp_fc2": (("ff.net.2",), None),
    "img_mlp_2": (("ff.net.2",), None),
    "txt_attn_qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "qkv"),
    "txt_attn_proj": (("attn.to_add_out",), None),
    "txt_mod_linear": (("norm1_context.linear",), None),
    "txt_mod_lin": (("norm1_context.linear",), None),
    "txt_mlp_fc1": (("ff_context.net.0.proj",), None),
    "txt_mlp_0": (("ff_context.net.0.proj",), None),
    "txt_mlp_fc2": (("ff_context.net.2",), None),
    "txt_mlp_2": (("ff_context.net.2",), None),
}
_HV_SINGLE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "qkvm"),
    "linear2": (("proj_out",), None),
    "modulation_linear": (("norm.linear",), None),
    "modulation_lin": (("norm.linear",), None),
}
_HV_BLOCK_RE = re.compile(r"^(double_blocks|single_blocks)[._](\d+)[._](.+)$")
# HunyuanVideo modules outside the blocks (embedders, token refiner, final layer): they name the layout.
_HV_OTHER_RE = re.compile(r"^(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)[._]")
# FramePack/HunyuanVideo MLP ratio; only used to split `linear1` when no DiT tells the inner size.
_MLP_RATIO = 4

MUSUBI_PREFIX = "lora_unet_"
# Key prefixes of dotted layouts -> layout family. Longest first so "model.diffusion_model." wins.
_DOTTED_PREFIXES = (
    ("model.diffusion_model.", "comfy"),
    ("diffusion_model.", "comfy"),
    ("base_model.model.", "peft"),
    ("transformer.", "diffusers"),
)

# Per-module tensor names (after the module name). Keys are tried longest first.
_SUFFIXES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up",
    "alpha": "alpha", "diff": "diff",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b",
}
_SUFFIXES_LONGEST_FIRST = sorted(_SUFFIXES, key=len, reverse=True)
NETWORK_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "diff": "full delta"}
TARGETS = ("musubi", "diffusers", "comfy")


def musubi_name(path: str) -> str:
    """musubi module name of a FramePack module path (`transformer_blocks.0.attn.to_q` ->
    `lora_unet_transformer_blocks_0_attn_to_q`)."""
    return MUSUBI_PREFIX + path.replace(".", "_")


def framepack_path(name: str, dit_modules: Mapping[str, str] | None = None) -> str | None:
    """FramePack module path of an underscored name (musubi name without `lora_unet_`), by table lookup.

    A blanket `_` -> `.` replacement is wrong for FramePack (`to_out_0`, `ff_context_net_0_proj`,
    `proj_mlp`): that is exactly the reference converter's bug, so names are looked up instead.

    Args:
        name: e.g. `transformer_blocks_0_ff_context_net_0_proj`.
        dit_modules: optional underscored name -> path map of a concrete DiT, for modules not in the table.

    Returns:
        The dotted path, or None if the name is no FramePack module.
    """
    m = _FP_BLOCK_RE.match(name)
    if m:
        block, tails = _BLOCK_BY_UNDERSCORE[m.group(1)]
        tail = tails.get(m.group(3))
        if tail is not None:
            return f"{block}.{m.group(2)}.{tail}"
    elif name in _GLOBAL_BY_UNDERSCORE:
        return _GLOBAL_BY_UNDERSCORE[name]
    return dit_modules.get(name) if dit_modules else None


def is_framepack_path(path: str) -> bool:
    """Whether a dotted path is a LoRA-targetable FramePack module of the table."""
    m = _FP_DOTTED_RE.match(path)
    if m:
        return m.group(3) in _BLOCK_MODULES[m.group(1)]
    return path in _GLOBAL_MODULES


# --------------------------------------------------------------------------------------------------
# Modules and files
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraModule:
    """One adapted module, already mapped to a FramePack module path.

    Attributes:
        path: FramePack module path, e.g. `transformer_blocks.0.attn.to_q`.
        kind: "lora", "loha", "lokr" or "diff" (full delta).
        tensors: the module's tensors by role ("down"/"up", "hada_w1_a"..., "lokr_w1"..., "diff").
        alpha: the stored alpha, or None (scale 1).
        source: the module's name in the file (a HunyuanVideo module split into parts shares it).
        source_keys: the file keys this module came from.
    """

    path: str
    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None
    source: str
    source_keys: tuple[str, ...] = ()

    @property
    def rank(self) -> int | None:
        """Rank as the reference reads it from the weights (None for full LoKr factors and full deltas)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            if "lokr_w2_b" in t:
                return int(t["lokr_w2_b"].shape[0])
            if "lokr_w1_b" in t:
                return int(t["lokr_w1_b"].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank; 1 without alpha (diffusers/PEFT) or rank (full LoKr, full delta), like LyCORIS."""
        rank = self.rank
        if self.alpha is None or not rank or self.alpha == 0:
            return 1.0
        return self.alpha / rank

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, product of the input dims) of the delta."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["up"].shape[0]), math.prod(t["down"].shape[1:])
        if self.kind == "loha":
            return int(t["hada_w1_a"].shape[0]), math.prod(t["hada_w1_b"].shape[1:])
        if self.kind == "lokr":
            (l1, m1), (k2, n2) = _lokr_factor_shapes(t)
            return l1 * k2, m1 * n2
        d = t["diff"]
        return int(d.shape[0]), math.prod(d.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors.values())).dtype

    def product(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The delta without `scale` (e.g. `up @ down`), float32, shape [out, prod(in dims)]."""
        t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.tensors.items()}
        if self.kind == "lora":
            return t["up"].flatten(1) @ t["down"].flatten(1)
        if self.kind == "loha":
            return (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
        if self.kind == "lokr":
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
            return torch.kron(w1.flatten(1), w2.flatten(1))
        return t["diff"].flatten(1)


def _lokr_factor_shapes(t: Mapping[str, torch.Tensor]) -> tuple[tuple[int, int], tuple[int, int]]:
    w1 = (t["lokr_w1"].shape[0], t["lokr_w1"].shape[1]) if "lokr_w1" in t else (
        t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
    w2 = (t["lokr_w2"].shape[0], math.prod(t["lokr_w2"].shape[1:])) if "lokr_w2" in t else (
        t["lokr_w2_a"].shape[0], math.prod(t["lokr_w2_b"].shape[1:]))
    return (int(w1[0]), int(w1[1])), (int(w2[0]), int(w2[1]))


@dataclass
class LoraFile:
    """A LoRA file read and mapped onto FramePack module paths.

    Attributes:
        path: the file.
        format: key layout, see the module docstring (e.g. `musubi-hunyuanvideo`).
        modules: FramePack module path -> module.
        unused: file keys that map to no FramePack module (or that this tool cannot use), with why.
        metadata: safetensors metadata (empty for pickles).
        n_keys: number of tensors in the file.
        n_source_modules: number of adapted modules in the file (before HunyuanVideo splitting).
        dtypes: tensor dtypes found.
    """

    path: Path
    format: str
    modules: dict[str, LoraModule]
    unused: dict[str, str]
    metadata: dict[str, str]
    n_keys: int
    n_source_modules: int
    dtypes: tuple[str, ...] = ()

    @property
    def networks(self) -> list[str]:
        """Network types present ("lora", "loha", "lokr", "diff"), in a stable order."""
        kinds = {m.kind for m in self.modules.values()}
        return [k for k in NETWORK_LABELS if k in kinds]

    @property
    def network_label(self) -> str:
        return "+".join(NETWORK_LABELS[k] for k in self.networks) or "LoRA"

    def ranks(self) -> list[int]:
        return sorted({r for m in self.modules.values() if (r := m.rank) is not None})

    def alphas(self) -> list[float]:
        return sorted({m.alpha for m in self.modules.values() if m.alpha is not None})


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora_weight` with its multiplier and its include/exclude regex (None = no filter)."""

    path: str
    multiplier: float = 1.0
    include: str | None = None
    exclude: str | None = None


def lora_specs_from_options(opts: Any) -> list[LoraSpec]:
    """Pair each `--lora_weight` with its multiplier and patterns (generate, one-frame, kisekae, lora merge).

    One `--lora_multiplier` applies to every file, otherwise one each with missing ones 1.0; one
    `--include_patterns` / `--exclude_patterns` value applies to every file, otherwise one each.

    Raises:
        FramepackError: more multipliers or patterns than files (already refused by option validation).
    """
    paths = [str(p) for p in (getattr(opts, "lora_weight", None) or [])]
    n = len(paths)
    mults = [float(m) for m in (getattr(opts, "lora_multiplier", None) or [])]
    if len(mults) == 1:
        mults = mults * n
    if len(mults) > n:
        raise FramepackError(f"--lora_multiplier: {len(mults)} values for {n} --lora_weight files")
    mults += [1.0] * (n - len(mults))

    def per_file(flag: str) -> list[str | None]:
        pats = list(getattr(opts, flag, None) or [])
        if not pats:
            return [None] * n
        if len(pats) == 1:
            return pats * n
        if len(pats) != n:
            raise FramepackError(f"--{flag}: {len(pats)} patterns for {n} --lora_weight files; give one for all "
                                 "or one each")
        return pats

    inc, exc = per_file("include_patterns"), per_file("exclude_patterns")
    return [LoraSpec(p, m, i, e) for p, m, i, e in zip(paths, mults, inc, exc, strict=True)]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _load_tensors(path: Path, flag: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from framepack_cli.models.loading import load_pickle_state_dict, read_safetensors_header

    if not path.is_file():
        raise FramepackError(f"{flag}: {path}: no such file" if not path.exists() else
                             f"{flag}: {path} is a directory, expected a LoRA file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        _, metadata = read_safetensors_header(path)  # one clear line for truncated / non-safetensors files
        try:
            with safe_open(str(path), framework="pt", device="cpu") as h:
                return {k: h.get_tensor(k) for k in h.keys()}, dict(metadata)
        except (SafetensorError, OSError) as e:
            raise ModelFormatError(f"{flag}: {path}: cannot read safetensors file ({e})") from None
    # Pickles (.pt/.ckpt/.bin) are read with weights_only=True only.
    return dict(load_pickle_state_dict(path)), {}


def _split_key(key: str) -> tuple[str, str, str, str] | None:
    """(style, module name, role, module name as stored) of a key, or None if it is not a LoRA tensor.

    style is "musubi" (kohya naming: module name underscored, `lora_unet_` removed; text-encoder modules
    `lora_te*` keep their name and so map to nothing) or the dotted family ("diffusers", "comfy", "peft",
    "bare"), the module name then being the dotted path without the prefix.
    """
    head, _, suffix = key.partition(".")
    if head.startswith("lora_") and suffix in _SUFFIXES:
        return "musubi", head.removeprefix(MUSUBI_PREFIX), _SUFFIXES[suffix], head
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if key.endswith("." + suffix):
            module = key[: -len(suffix) - 1]
            for prefix, family in _DOTTED_PREFIXES:
                if module.startswith(prefix):
                    return family, module[len(prefix):], _SUFFIXES[suffix], module
            return "bare", module, _SUFFIXES[suffix], module
    return None


def _kind_of(roles: Mapping[str, torch.Tensor]) -> str | None:
    if "down" in roles and "up" in roles:
        return "lora"
    if all(f"hada_w{i}_{s}" in roles for i in (1, 2) for s in "ab"):
        return "loha"
    has_w1 = "lokr_w1" in roles or ("lokr_w1_a" in roles and "lokr_w1_b" in roles)
    has_w2 = "lokr_w2" in roles or ("lokr_w2_a" in roles and "lokr_w2_b" in roles)
    if has_w1 and has_w2:
        return "lokr"
    if "diff" in roles:
        return "diff"
    return None


def _peft_alpha(metadata: Mapping[str, str], path: str) -> float | None:
    """Effective alpha of a module from diffusers' `lora_adapter_metadata` (PEFT LoraConfig), if any.

    Returns alpha such that alpha / rank is PEFT's scaling (`lora_alpha / r`, `alpha_pattern` per module);
    rsLoRA (`lora_alpha / sqrt(r)`) is expressed the same way by the caller.
    """
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(cfg, dict):
        return None
    # Pipeline-level saves prefix every config key with the component name.
    cfg = {k.removeprefix("transformer."): v for k, v in cfg.items()}
    alpha = cfg.get("lora_alpha")
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        pat = str(pattern).removeprefix("^")
        try:
            hit = re.fullmatch(rf"(.*\.)?(?:{pat})", path) is not None
        except re.error:
            hit = False
        if hit or path == pattern:
            alpha = value
            break
    if alpha is None:
        return None
    return float(alpha)


def _peft_uses_rslora(metadata: Mapping[str, str]) -> bool:
    raw = metadata.get("lora_adapter_metadata")
    try:
        cfg = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return False
    return isinstance(cfg, dict) and bool(cfg.get("use_rslora") or cfg.get("transformer.use_rslora"))


def _slice_rows(mod: LoraModule, start: int, stop: int, path: str) -> LoraModule:
    """The part of a fused module producing output rows [start, stop): shared input factors, sliced output
    factors (exact for LoRA/LoHa; LoKr is sliced in Kronecker form when the split falls on whole blocks of
    its second factor, else materialised as a full delta)."""
    t = mod.tensors
    if mod.kind == "lora":
        parts = {"down": t["down"], "up": t["up"][start:stop]}
    elif mod.kind == "loha":
        parts = dict(t, hada_w1_a=t["hada_w1_a"][start:stop], hada_w2_a=t["hada_w2_a"][start:stop])
    elif mod.kind == "lokr":
        (_, _), (k2, _) = _lokr_factor_shapes(t)
        if start % k2 == 0 and stop % k2 == 0:
            key = "lokr_w1" if "lokr_w1" in t else "lokr_w1_a"
            parts = dict(t, **{key: t[key][start // k2: stop // k2]})
        else:
            diff = (mod.product() * mod.scale)[start:stop]
            return LoraModule(path, "diff", {"diff": diff}, None, mod.source, mod.source_keys)
    else:
        parts = {"diff": t["diff"][start:stop]}
    return LoraModule(path, mod.kind, parts, mod.alpha, mod.source, mod.source_keys)


def _split_sizes(rule: str, rows: int, inner_dim: int | None) -> list[int] | None:
    if rule == "qkv":
        # Always thirds: a LoRA for another model size then fails the shape check with a clear message.
        return [rows // 3] * 3 if rows % 3 == 0 else None
    inner = inner_dim if inner_dim is not None and rows > 3 * inner_dim else None
    if inner is None and rows % (3 + _MLP_RATIO) == 0:
        inner = rows // (3 + _MLP_RATIO)
    if inner is None:
        return None
    return [inner, inner, inner, rows - 3 * inner]


def _map_hunyuan(mod: LoraModule, name: str, inner_dim: int | None) -> tuple[list[LoraModule], str | None]:
    """FramePack modules of a HunyuanVideo-named module (`double_blocks.0.img_attn_qkv` in any spelling)."""
    m = _HV_BLOCK_RE.match(name)
    if not m:
        return [], "HunyuanVideo module outside the double/single blocks (no FramePack counterpart)"
    kind, idx, tail = m.group(1), m.group(2), m.group(3).replace(".", "_")
    table, block = (_HV_DOUBLE, DUAL_BLOCK) if kind == "double_blocks" else (_HV_SINGLE, SINGLE_BLOCK)
    if tail not in table:
        return [], f"unknown HunyuanVideo {kind} module {tail!r}"
    targets, rule = table[tail]
    paths = [f"{block}.{idx}.{t}" for t in targets]
    if rule is None:
        mod.path = paths[0]
        return [mod], None
    rows = mod.shape[0]
    sizes = _split_sizes(rule, rows, inner_dim)
    if sizes is None:
        return [], f"fused module with {rows} output rows cannot be split into {'/'.join(targets)}"
    out, start = [], 0
    for path, size in zip(paths, sizes, strict=True):
        out.append(_slice_rows(mod, start, start + size, path))
        start += size
    return out, None


_FORMAT_NAMES = {
    ("musubi", False): "musubi-framepack", ("musubi", True): "musubi-hunyuanvideo",
    ("diffusers", False): "diffusers", ("diffusers", True): "diffusion-pipe-hunyuanvideo",
    ("comfy", False): "comfy", ("comfy", True): "comfy-hunyuanvideo",
    ("peft", False): "peft", ("peft", True): "peft-hunyuanvideo",
    ("bare", False): "peft", ("bare", True): "hunyuanvideo",
}


def read_lora(
    path: str | Path,
    *,
    flag: str = "--lora_weight",
    inner_dim: int | None = None,
    dit_modules: Iterable[str] | None = None,
) -> LoraFile:
    """Read a LoRA/LoHa/LoKr file of any supported layout and map it onto FramePack module paths.

    Args:
        path: the file (.safetensors, or a torch pickle read with weights_only=True).
        flag: CLI flag named in error messages.
        inner_dim: the DiT's hidden size, to split HunyuanVideo `linear1` exactly; without it the split
            assumes the FramePack/HunyuanVideo MLP ratio 4.
        dit_modules: dotted module paths of a concrete DiT; modules missing from the built-in table but
            present there are accepted.

    Returns:
        The mapped file. Keys that map to nothing are in `unused` (never silently dropped).

    Raises:
        ModelFormatError: unreadable file, or a file with no LoRA tensors at all (e.g. a DiT or VAE).
    """
    path = Path(path)
    tensors, metadata = _load_tensors(path, flag)
    extra_paths = set(dit_modules or ())
    by_underscore = {p.replace(".", "_"): p for p in extra_paths}

    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    keys_of: dict[tuple[str, str], list[str]] = {}
    unused: dict[str, str] = {}
    stored: dict[tuple[str, str], str] = {}
    for key, value in tensors.items():
        split = _split_key(key)
        if split is None:
            unused[key] = ("DoRA magnitude (DoRA is not supported)" if key.endswith("dora_scale")
                           else "not a LoRA/LoHa/LoKr tensor name")
            continue
        style, name, role, module = split
        grouped.setdefault((style, name), {})[role] = value
        keys_of.setdefault((style, name), []).append(key)
        stored[(style, name)] = module

    if not grouped:
        from framepack_cli.models.detect import KIND_LABELS, detect_kind
        from framepack_cli.models.loading import TensorInfo

        det = detect_kind({k: TensorInfo("F32", tuple(v.shape)) for k, v in tensors.items()})
        what = KIND_LABELS[det.kind] if det.kind not in ("unknown", "lora") else (
            f"no LoRA (first key {sorted(tensors)[0]!r})" if tensors else "nothing (no tensors)")
        raise ModelFormatError(f"{flag}: {path} looks like {what}, expected a LoRA file")

    styles: dict[str, int] = {}
    hunyuan = False
    modules: dict[str, LoraModule] = {}
    rslora = _peft_uses_rslora(metadata)
    for (style, name), roles in grouped.items():
        keys = tuple(keys_of[(style, name)])
        kind = _kind_of(roles)
        if kind is None:
            for k in keys:
                unused[k] = "incomplete module (e.g. lora_down without lora_up)"
            continue
        styles[style] = styles.get(style, 0) + 1
        alpha_t = roles.pop("alpha", None)
        alpha = float(alpha_t.float().item()) if alpha_t is not None else None
        is_hv = bool(_HV_BLOCK_RE.match(name) or _HV_OTHER_RE.match(name))
        hunyuan |= is_hv
        mod = LoraModule("", kind, dict(roles), alpha, stored[(style, name)], keys)
        if is_hv:
            parts, why = _map_hunyuan(mod, name, inner_dim)
        else:
            fp = framepack_path(name, by_underscore) if style == "musubi" else (
                name if (is_framepack_path(name) or name in extra_paths) else None)
            parts, why = ([mod], None) if fp else ([], "no FramePack module of that name")
            if fp:
                mod.path = fp
                if alpha is None and style != "musubi" and kind == "lora":
                    peft_alpha = _peft_alpha(metadata, fp)
                    if peft_alpha is not None:
                        r = mod.rank or 1
                        # Express PEFT's scaling (alpha/r, or alpha/sqrt(r) for rsLoRA) as a musubi alpha.
                        mod.alpha = peft_alpha * math.sqrt(r) if rslora else peft_alpha
        if why:
            for k in keys:
                unused[k] = why
        for part in parts:
            if part.path in modules:
                for k in keys:
                    unused[k] = f"duplicate module {part.path}"
                continue
            modules[part.path] = part
    style = max(styles, key=styles.get) if styles else next(iter(grouped))[0]
    dtypes = tuple(sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()}))
    return LoraFile(path, _FORMAT_NAMES[(style, hunyuan)], modules, unused, metadata, len(tensors),
                    len(grouped), dtypes)


# --------------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------------


@dataclass
class MergePlan:
    """What to add to which weight, validated from shapes alone; `apply` does the float32 arithmetic.

    Attributes:
        targets: state-dict key -> [(module, multiplier)], in `--lora_weight` order.
        report: one summary line per LoRA (+ indented `unused:` lines under verbose).
        files: per LoRA, a dict for metadata / JSON (file, format, multiplier, modules merged, keys unused).
    """

    targets: dict[str, list[tuple[LoraModule, float]]] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, key: str, weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`weight` plus every LoRA delta planned for `key`, computed in float32 and rounded once to `dtype`
        (default: the weight's own dtype)."""
        dtype = dtype or weight.dtype
        mods = self.targets.get(key)
        if not mods:
            return weight.to(dtype)
        w = weight.to(dtype=torch.float32, copy=True)
        for mod, mult in mods:
            prod = mod.product(w.device)
            w.view(w.shape[0], -1).add_(prod, alpha=mult * mod.scale)
        return w.to(dtype)

    def apply_all(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Merge into `state_dict` in place (each planned key replaced by its merged tensor)."""
        with torch.no_grad():
            for key in self.targets:
                state_dict[key] = self.apply(key, state_dict[key])


def _compile(pattern: str | None, flag: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise FramepackError(f"{flag}: invalid regular expression {pattern!r} ({e})") from None


def _matches(rx: re.Pattern[str], path: str) -> bool:
    # Patterns written for musubi (on `lora_unet_..._attn_to_q` keys) and for dotted paths both work.
    return bool(rx.search(path) or rx.search(musubi_name(path)))


def _fmt_values(values: Sequence[float | int]) -> str:
    if not values:
        return "-"
    shown = [f"{v:g}" for v in values]
    return shown[0] if len(shown) == 1 else f"{shown[0]}..{shown[-1]}"


def dit_inner_dim(shapes: Mapping[str, Sequence[int]], prefix: str = "") -> int | None:
    """Hidden size of a DiT from its state-dict shapes (to split fused HunyuanVideo projections)."""
    for key in (f"{prefix}{DUAL_BLOCK}.0.attn.to_q.weight", f"{prefix}{SINGLE_BLOCK}.0.attn.to_q.weight"):
        if key in shapes:
            return int(shapes[key][0])
    return None


def plan_merge(
    specs: Sequence[LoraSpec | tuple[str | Path, float]],
    shapes: Mapping[str, Sequence[int]],
    *,
    prefix: str = "",
    include: str | None = None,
    exclude: str | None = None,
    verbose: bool = False,
    flag: str = "--lora_weight",
) -> MergePlan:
    """Read every LoRA and decide what merges where, from the DiT's tensor shapes alone.

    Args:
        specs: LoRAs in order (`LoraSpec`, or `(path, multiplier)` pairs).
        shapes: DiT state-dict key -> shape (header infos or a loaded state dict).
        prefix: key prefix of the DiT state dict (e.g. `diffusion_model.`), "" for bare keys.
        include: regex applied to LoRAs whose spec has none (see `LoraSpec`).
        exclude: likewise.
        verbose: add the unused keys of each LoRA to the report.
        flag: CLI flag named in errors.

    Raises:
        ModelFormatError: unreadable / non-LoRA file, a LoRA matching no module of this DiT, or a module
            whose shape differs from the DiT's (a LoRA for another model size).
        FramepackError: invalid regex, or patterns that filter out every module of a LoRA.
    """
    plan = MergePlan()
    n = len(prefix)
    dit_modules = {k[n:-7] for k, s in shapes.items() if k.startswith(prefix) and k.endswith(".weight")
                   and len(s) >= 2}
    inner = dit_inner_dim(shapes, prefix)
    for item in specs:
        spec = item if isinstance(item, LoraSpec) else LoraSpec(str(item[0]), float(item[1]))
        inc = _compile(spec.include if spec.include is not None else include, "--include_patterns")
        exc = _compile(spec.exclude if spec.exclude is not None else exclude, "--exclude_patterns")
        lora = read_lora(spec.path, flag=flag, inner_dim=inner, dit_modules=dit_modules)
        unused = dict(lora.unused)
        used_sources: set[str] = set()
        merged = filtered = 0
        for path, mod in lora.modules.items():
            if path not in dit_modules:
                for k in mod.source_keys:
                    unused.setdefault(k, "module not in this DiT")
                continue
            if (inc is not None and not _matches(inc, path)) or (exc is not None and _matches(exc, path)):
                filtered += 1
                continue
            key = f"{prefix}{path}.weight"
            want = tuple(int(s) for s in shapes[key])
            out, fan_in = mod.shape
            if out != want[0] or fan_in != math.prod(want[1:]):
                raise ModelFormatError(
                    f"{flag}: {lora.path}: module {path} is {out}x{fan_in} in the LoRA but {want[0]}x"
                    f"{math.prod(want[1:])} in the DiT; is it a LoRA for another model?")
            plan.targets.setdefault(key, []).append((mod, spec.multiplier))
            used_sources.add(mod.source)
            merged += 1
        # A fused HunyuanVideo module counts as used if any of its parts merged.
        for mod in lora.modules.values():
            if mod.source in used_sources:
                for k in mod.source_keys:
                    unused.pop(k, None)
        if merged == 0:
            if filtered:
                raise FramepackError(
                    f"{flag}: {lora.path}: --include_patterns/--exclude_patterns filtered out all {filtered} "
                    "matching modules; nothing would be merged")
            raise ModelFormatError(
                f"{flag}: {lora.path} matched no module of this DiT (format {lora.format}, {len(unused)} keys "
                "unused); is it a LoRA for another model?")
        ranks, alphas = lora.ranks(), lora.alphas()
        alpha_txt = f"alpha {_fmt_values(alphas)}" if alphas else "no alpha (scale 1)"
        line = (f"LoRA {lora.path.name}: {lora.format} {lora.network_label} (rank {_fmt_values(ranks)}, "
                f"{alpha_txt}), multiplier {spec.multiplier:g}: {merged} modules merged")
        if filtered:
            line += f", {filtered} skipped by --include_patterns/--exclude_patterns"
        line += f", {len(unused)} keys unused"
        if unused and not verbose:
            line += " (--verbose lists them)"
        plan.report.append(line)
        if verbose:
            plan.report.extend(f"  unused: {k} ({why})" for k, why in sorted(unused.items()))
        plan.files.append({"file": lora.path.name, "format": lora.format, "network": lora.network_label,
                           "multiplier": spec.multiplier, "modules_merged": merged, "keys_unused": len(unused)})
    return plan


def merge_loras(
    state_dict: dict[str, torch.Tensor],
    loras: Sequence[LoraSpec | tuple[str | Path, float]],
    include: str | None = None,
    exclude: str | None = None,
    verbose: bool = False,
    *,
    prefix: str = "",
    flag: str = "--lora_weight",
) -> list[str]:
    """Merge LoRAs into a DiT state dict in place (float32 arithmetic, each weight keeps its dtype).

    Args:
        state_dict: DiT state dict (bare diffusers keys, or keys under `prefix`).
        loras: `LoraSpec`s or `(path, multiplier)` pairs, merged in order.
        include: regex for LoRAs without their own (module kept if it matches the dotted path or the
            musubi name), see `plan_merge`.
        exclude: likewise, module dropped if it matches.
        verbose: list unused keys in the report.
        prefix: key prefix of `state_dict`.
        flag: CLI flag named in errors.

    Returns:
        The report: one line per LoRA (format, modules merged, keys unused), plus verbose detail lines.
    """
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    plan = plan_merge(loras, shapes, prefix=prefix, include=include, exclude=exclude, verbose=verbose, flag=flag)
    plan.apply_all(state_dict)
    return plan.report


# --------------------------------------------------------------------------------------------------
# Writing safetensors (streamed, atomic)
# --------------------------------------------------------------------------------------------------

_ST_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_ST_TORCH = {v: k for k, v in _ST_NAMES.items()}


def _check_output(output: Path, overwrite: bool, inputs: Iterable[Path], flag: str) -> None:
    if output.is_dir():
        raise FramepackError(f"{flag}: {output} is a directory (give a file name)")
    for p in inputs:
        if output.exists() and p.exists() and output.resolve() == p.resolve():
            raise FramepackError(f"{flag}: {output} is also an input; write to a new file")
    if output.exists() and not overwrite:
        hint = "pass --overwrite to replace it" if flag == "--output" else "choose a new file name"
        raise FramepackError(f"{flag}: file exists: {output}", hint=hint)
    if not output.parent.is_dir():
        raise FramepackError(f"{flag}: folder does not exist: {output.parent}")


def write_safetensors(
    output: str | Path,
    entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor (peak memory: one tensor), to a temp name then renamed.

    Args:
        output: destination; replaced atomically, so readers never see a half-written file.
        entries: (key, dtype, shape) of every tensor, in file order.
        produce: returns the tensor of a key (called once per key, in order); must match its entry.
        metadata: string metadata (`__metadata__`).
    """
    output = Path(output)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, dtype, shape in entries:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _ST_NAMES[dtype], "shape": [int(s) for s in shape],
                       "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for key, dtype, shape in entries:
                t = produce(key)
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise RuntimeError(f"tensor {key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
                f.write(memoryview(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_tensors(output: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                 ) -> None:
    """Save a small state dict (a LoRA) atomically; tensors sharing storage are fine."""
    items = sorted(tensors.items())
    write_safetensors(output, [(k, v.dtype, tuple(v.shape)) for k, v in items], lambda k: tensors[k], metadata)


# --------------------------------------------------------------------------------------------------
# Merged DiT file (framepack lora merge, generate --save_merged_model)
# --------------------------------------------------------------------------------------------------

_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def merge_dit_file(
    dit: str | Path,
    specs: Sequence[LoraSpec],
    output: str | Path,
    *,
    dtype: str = "auto",
    overwrite: bool = False,
    verbose: bool = False,
    dit_flag: str = "--dit",
    output_flag: str = "--output",
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Merge LoRAs into a DiT checkpoint and save it as one safetensors file in the same key layout.

    Every tensor of the input is written (other components bundled in a ComfyUI file included), under the
    same keys; shards are joined into one file. Streaming keeps memory to one tensor at a time, and the file
    appears only when complete (temp name, then rename).

    Args:
        dit: DiT file, any shard, or directory (as `--dit`).
        specs: LoRAs to merge, in order.
        output: the merged .safetensors file.
        dtype: "auto" keeps each stored dtype; "float32" / "bfloat16" / "float16" casts floating tensors.
        overwrite: replace `output` if it exists (otherwise that is an error).
        verbose: list unused LoRA keys in the report.
        dit_flag: flag named in DiT errors.
        output_flag: flag named in output errors.
        progress: optional one-line message sink.

    Returns:
        The merge report lines.

    Raises:
        ModelFormatError / FramepackError: see `plan_merge`; wrong kind of --dit file; output exists.
    """
    from framepack_cli.models.detect import expect_kind
    from framepack_cli.models.loading import (
        find_weight_files,
        load_pickle_state_dict,
        read_header_infos,
        read_safetensors_header,
    )

    dit, output = Path(dit), Path(output)
    if dtype != "auto" and dtype not in _DTYPE_NAMES:
        raise FramepackError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    # Same resolution as load_dit (file, shard, directory, snapshot with transformer/), without importing
    # diffusers: merging is pure tensor work.
    files = find_weight_files(dit / "transformer" if (dit / "transformer").is_dir() else dit, ("transformer",))
    _check_output(output, overwrite, [*files, *(Path(s.path) for s in specs)], output_flag)
    infos = read_header_infos(files)
    det = expect_kind(dit if dit.is_file() else files[0], infos, "dit", dit_flag)
    plan = plan_merge(specs, {k: v.shape for k, v in infos.items()}, prefix=det.prefix, verbose=verbose)
    for line in plan.report:
        if progress:
            progress(line)

    from safetensors.torch import safe_open

    target = _DTYPE_NAMES.get(dtype)
    # key -> where to read it: an open safetensors handle (lazy, one tensor at a time) or a loaded pickle.
    sources: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for f in files:
        if f.suffix == ".safetensors":
            metadata.update(read_safetensors_header(f)[1])
            h = safe_open(str(f), framework="pt", device="cpu")
            sources.update(dict.fromkeys(h.keys(), h))
        else:
            sd = load_pickle_state_dict(f)
            sources.update(dict.fromkeys(sd, sd))
    entries = []
    for key in sorted(sources):
        st = _ST_TORCH.get(infos[key].dtype)
        if st is None:
            raise ModelFormatError(f"{dit_flag}: {dit}: tensor {key} has unsupported dtype {infos[key].dtype}")
        entries.append((key, target if (target is not None and st.is_floating_point) else st, infos[key].shape))
    out_dtypes = {k: d for k, d, _ in entries}

    def produce(key: str) -> torch.Tensor:
        src = sources[key]
        t = src[key] if isinstance(src, dict) else src.get_tensor(key)
        with torch.no_grad():
            return plan.apply(key, t, out_dtypes[key])

    metadata["framepack.merged_loras"] = json.dumps(plan.files)
    if progress:
        progress(f"Writing merged DiT to {output}")
    write_safetensors(output, entries, produce, metadata)
    return plan.report


# --------------------------------------------------------------------------------------------------
# Converting
# --------------------------------------------------------------------------------------------------

# The tensor each layout folds the scale into (the first factor that multiplies the output).
_FOLD_INTO = {"lora": ("up",), "loha": ("hada_w1_a",), "lokr": ("lokr_w1", "lokr_w1_a")}
# Role -> key suffix when writing.
_MUSUBI_SUFFIX = {"down": "lora_down.weight", "up": "lora_up.weight"}
_PEFT_SUFFIX = {"down": "lora_A.weight", "up": "lora_B.weight"}


def _fold(t: torch.Tensor, scale: float) -> torch.Tensor:
    """`t * scale` computed in float32, kept in t's dtype when that is exact, else stored as float32."""
    if scale == 1.0:
        return t
    out = t.float() * scale
    back = out.to(t.dtype)
    return back if torch.equal(back.float(), out) else out


def convert_lora(lora: LoraFile, to: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of `lora` in another key layout, FramePack module names throughout.

    * musubi: `lora_unet_<module>` + `.lora_down.weight` / `.lora_up.weight` / `.alpha` (float32 0-d; alpha
      = rank when the source had none, i.e. scale 1). LoHa/LoKr keep their tensor names and alpha.
    * diffusers: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (what diffusers' FramePack
      transformer loads). PEFT has no per-module alpha, so alpha/rank is folded into `lora_B` (LoHa:
      `hada_w1_a`, LoKr: `lokr_w1`), in float32 where the source dtype cannot hold the product exactly.
    * comfy: the same under `diffusion_model.`.

    HunyuanVideo-named input comes out split into FramePack modules. Converting back and forth gives the same
    merged weights (bit-exact when alpha/rank is a power of two, else to float32 rounding).

    Raises:
        FramepackError: unknown target or a LoRA with nothing to convert.
    """
    if to not in TARGETS:
        raise FramepackError(f"--to: unknown layout {to!r}", hint=f"use one of: {', '.join(TARGETS)}")
    if not lora.modules:
        raise ModelFormatError(f"{lora.path}: no module maps to the FramePack DiT (format {lora.format}, "
                               f"{len(lora.unused)} keys unused); nothing to convert")
    out: dict[str, torch.Tensor] = {}
    for path in sorted(lora.modules):
        mod = lora.modules[path]
        if to == "musubi":
            name = musubi_name(path)
            for role, t in mod.tensors.items():
                out[f"{name}.{_MUSUBI_SUFFIX.get(role, role)}"] = t
            alpha = mod.alpha if mod.alpha is not None else mod.rank
            if alpha is not None and mod.kind != "diff":
                out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
        else:
            name = ("transformer." if to == "diffusers" else "diffusion_model.") + path
            scale = mod.scale
            fold = next((r for r in _FOLD_INTO.get(mod.kind, ()) if r in mod.tensors), None)
            for role, t in mod.tensors.items():
                out[f"{name}.{_PEFT_SUFFIX.get(role, role)}"] = _fold(t, scale) if role == fold else t
    # Split HunyuanVideo modules share their down factor; give every key its own storage so the result can
    # also be saved with safetensors' own save_file (which refuses shared tensors).
    seen: set[int] = set()
    for k, t in out.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            out[k] = t.clone()
        seen.add(ptr)
    # The sshs_* hashes cover the source file's tensors; they would be wrong for the converted ones.
    metadata = {k: v for k, v in lora.metadata.items()
                if k != "lora_adapter_metadata" and not k.startswith("sshs_")}
    metadata["framepack.converted_from"] = lora.format
    return out, metadata


def convert_lora_file(src: str | Path, to: str, output: str | Path, *, overwrite: bool = False) -> LoraFile:
    """Read `src`, convert it to layout `to` and save it to `output` (atomically, never over an existing
    file unless `overwrite`). Returns the source as read."""
    src, output = Path(src), Path(output)
    _check_output(output, overwrite, [src], "--output")
    lora = read_lora(src, flag="FILE")
    tensors, metadata = convert_lora(lora, to)
    save_tensors(output, tensors, metadata)
    return lora


# --------------------------------------------------------------------------------------------------
# Inspecting
# --------------------------------------------------------------------------------------------------

_METADATA_SUMMARY = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                     "ss_base_model_version", "ss_output_name", "ss_training_comment", "modelspec.architecture",
                     "modelspec.title", "framepack.converted_from", "lora_adapter_metadata")


def _block_of(path: str) -> tuple[str, int | None, str]:
    m = _FP_DOTTED_RE.match(path)
    if m:
        return m.group(1), int(m.group(2)), m.group(3)
    return "other", None, path


def _ranges(ints: Iterable[int]) -> str:
    vals = sorted(set(ints))
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)


def describe_lora(path: str | Path, *, verbose: bool = False) -> dict[str, Any]:
    """The `framepack lora inspect` object: layout, network type, rank, alpha, targets, metadata.

    Args:
        path: the LoRA file.
        verbose: full metadata (otherwise the training-relevant keys only). The module list is always there.
    """
    lora = read_lora(path, flag="FILE")
    targets: dict[str, dict[str, Any]] = {}
    for p in lora.modules:
        block, idx, tail = _block_of(p)
        entry = targets.setdefault(block, {"blocks": set(), "modules": set()})
        if idx is not None:
            entry["blocks"].add(idx)
        entry["modules"].add(tail)
    targets_json = {b: {"blocks": _ranges(e["blocks"]) if e["blocks"] else None,
                        "modules": sorted(e["modules"])} for b, e in targets.items()}
    meta = lora.metadata if verbose else {k: v for k, v in lora.metadata.items() if k in _METADATA_SUMMARY}
    scales = sorted({round(m.scale, 8) for m in lora.modules.values()})
    return {
        "path": str(lora.path),
        "format": lora.format,
        "network": lora.network_label,
        "tensors": lora.n_keys,
        "dtypes": list(lora.dtypes),
        "file_modules": lora.n_source_modules,
        "framepack_modules": len(lora.modules),
        "ranks": lora.ranks(),
        "alphas": lora.alphas(),
        "scales": scales,
        "targets": targets_json,
        "unused_keys": dict(sorted(lora.unused.items())),
        "metadata": dict(sorted(meta.items())),
        "metadata_keys": len(lora.metadata),
        "modules": [
            {"module": p, "name": musubi_name(p), "source": m.source, "network": NETWORK_LABELS[m.kind],
             "rank": m.rank, "alpha": m.alpha, "scale": m.scale, "shape": list(m.shape)}
            for p, m in sorted(lora.modules.items())
        ],
    }
