"""Reading every LoRA key layout into `LoraFile` (HunyuanVideo names mapped onto FramePack modules)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.lora.modules import LoraFile, LoraModule, lokr_factor_shapes
from framepack_cli.models.lora.names import (
    DOTTED_PREFIXES,
    DUAL_BLOCK,
    HV_BLOCK_RE,
    HV_DOUBLE,
    HV_OTHER_RE,
    HV_SINGLE,
    MLP_RATIO,
    MUSUBI_PREFIX,
    SINGLE_BLOCK,
    SUFFIXES,
    SUFFIXES_LONGEST_FIRST,
    framepack_path,
    is_framepack_path,
)

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
    if head.startswith("lora_") and suffix in SUFFIXES:
        return "musubi", head.removeprefix(MUSUBI_PREFIX), SUFFIXES[suffix], head
    for suffix in SUFFIXES_LONGEST_FIRST:
        if key.endswith("." + suffix):
            module = key[: -len(suffix) - 1]
            for prefix, family in DOTTED_PREFIXES:
                if module.startswith(prefix):
                    return family, module[len(prefix):], SUFFIXES[suffix], module
            return "bare", module, SUFFIXES[suffix], module
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
        (_, _), (k2, _) = lokr_factor_shapes(t)
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
    if inner is None and rows % (3 + MLP_RATIO) == 0:
        inner = rows // (3 + MLP_RATIO)
    if inner is None:
        return None
    return [inner, inner, inner, rows - 3 * inner]


def _map_hunyuan(mod: LoraModule, name: str, inner_dim: int | None) -> tuple[list[LoraModule], str | None]:
    """FramePack modules of a HunyuanVideo-named module (`double_blocks.0.img_attn_qkv` in any spelling)."""
    m = HV_BLOCK_RE.match(name)
    if not m:
        return [], "HunyuanVideo module outside the double/single blocks (no FramePack counterpart)"
    kind, idx, tail = m.group(1), m.group(2), m.group(3).replace(".", "_")
    table, block = (HV_DOUBLE, DUAL_BLOCK) if kind == "double_blocks" else (HV_SINGLE, SINGLE_BLOCK)
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
        is_hv = bool(HV_BLOCK_RE.match(name) or HV_OTHER_RE.match(name))
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


