"""`framepack inspect PATH`: what is this file? Kind, format, dtype, parameter count and architecture,
from the file headers alone (no weights are loaded, except for torch pickles, which have no header)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.models.detect import KIND_LABELS, detect_kind
from framepack_cli.models.loading import (
    TensorInfo,
    expand_shards,
    find_weight_files,
    read_config_json,
    read_header_infos,
)

ST_DTYPES = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "U8": "uint8", "I8": "int8", "BOOL": "bool",
}
MODEL_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")


def _strip(infos: dict[str, TensorInfo], prefix: str) -> dict[str, TensorInfo]:
    return {k[len(prefix):]: v for k, v in infos.items() if k.startswith(prefix)} if prefix else infos


def _config(kind: str, infos: dict[str, TensorInfo], files: list[Path]) -> dict[str, Any]:
    raw = read_config_json(files)
    if kind == "dit":
        from framepack_cli.models.transformer import dit_config_from_json, infer_dit_config

        try:
            return dit_config_from_json(raw) if raw else infer_dit_config(infos)
        except Exception:  # a foreign config.json beside the weights: fall back to the shapes
            return infer_dit_config(infos)
    if kind == "vae":
        from framepack_cli.models.vae import infer_vae_config

        return infer_vae_config(infos, files[0])
    if kind in ("text_encoder1", "text_encoder2", "image_encoder"):
        from framepack_cli.models.clip_text import clip_text_config
        from framepack_cli.models.image_encoder import siglip_config
        from framepack_cli.models.llama import llama_config

        fn = {"text_encoder1": llama_config, "text_encoder2": clip_text_config, "image_encoder": siglip_config}[kind]
        cfg = fn(infos, raw, files[0]).to_dict()
        keep = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "max_position_embeddings", "image_size", "patch_size",
                "hidden_act", "rope_theta")
        return {k: cfg[k] for k in keep if k in cfg and cfg[k] is not None}
    if kind == "lora":
        return _lora_summary(files[0])
    return {}


def _lora_summary(path: Path) -> dict[str, Any]:
    """The same reading as `framepack lora inspect` (one detector for both commands)."""
    from framepack_cli.models.lora import describe_lora

    d = describe_lora(path)
    return {"lora_format": d["format"], "network": d["network"], "modules": d["framepack_modules"],
            "ranks": d["ranks"], "alphas": d["alphas"]}


def _format(det, layout: str, config: dict[str, Any]) -> str:
    if det.kind == "vae" and layout == "pickle":
        return "official"
    if det.kind == "lora":
        return str(config.get("lora_format", "lora"))
    return det.format


def describe(path: str) -> dict[str, Any]:
    """The `--json` object for a file or directory.

    Raises:
        FramepackError: missing path, no weights, a multi-model snapshot, or an unknown file.
    """
    p = Path(path)
    from framepack_cli.engine.inspect_output import describe_output, is_output

    if is_output(p):  # a video, PNG or latent we wrote: its settings and the command line that re-creates it
        return describe_output(path)
    if p.is_dir() and any(c.is_dir() and c.name.startswith("models--") for c in p.iterdir()):
        return describe_models_dir(p)
    if p.is_dir():
        weights = sorted(x for x in p.iterdir() if x.is_file() and x.suffix in (".safetensors", ".pt", ".pth",
                                                                                ".bin", ".ckpt"))
        subs = [s + "/" for s in MODEL_SUBFOLDERS if (p / s).is_dir()]
        one_set = bool(weights) and set(expand_shards(weights[0])) == set(weights)
        if (weights and not one_set) or (not weights and subs):
            names = [w.name for w in weights] + subs
            raise FramepackError(
                f"{path}: a folder holding several models ({', '.join(names)}); inspect one of them",
                hint=f"framepack inspect {p / names[0]}")
    files = find_weight_files(p)
    infos = read_header_infos(files)
    det = detect_kind(infos)
    if det.kind not in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "lora"):
        first = ", ".join(sorted(infos)[:3]) or "no tensors"
        raise FramepackError(f"{path}: looks like {KIND_LABELS[det.kind]} (keys like {first}); framepack reads "
                             "FramePack DiTs, HunyuanVideo VAEs, LLaMA/CLIP-L text encoders, SigLIP and LoRAs")
    stripped = _strip(infos, det.prefix)
    by_dtype: Counter[str] = Counter()
    for info in infos.values():
        by_dtype[ST_DTYPES.get(info.dtype, info.dtype)] += info.numel
    config = _config(det.kind, stripped, files)
    layout = "pickle" if files[0].suffix != ".safetensors" else (
        f"sharded ({len(files)} files)" if len(files) > 1 else "single file")
    return {
        "path": str(p),
        "kind": det.kind,
        "description": KIND_LABELS[det.kind],
        "format": _format(det, layout, config),
        "layout": layout,
        "key_prefix": det.prefix,
        "dtype": by_dtype.most_common(1)[0][0] if by_dtype else None,
        "dtypes": dict(by_dtype),
        "parameters": sum(i.numel for i in infos.values()),
        "tensors": len(infos),
        "files": [str(f) for f in files],
        "config": config,
    }


def describe_models_dir(p: Path) -> dict[str, Any]:
    """The `--json` object for a models directory (the hub cache layout `framepack download` writes): each
    catalog component found (file, kind read from its header, whether it is the kind its flag expects), the other
    repositories there, and what each command still lacks with the command that fetches it."""
    from framepack_cli.models.store import find_component, find_tokenizer_snapshot
    from framepack_cli.plan.model_catalog import COMMAND_NEEDS, COMPONENTS, fetch_command

    places = [(p, "DIR")]
    components: dict[str, Any] = {}
    for name, comp in COMPONENTS.items():
        found = find_component(comp, places)
        if found is None:
            components[name] = None
            continue
        entry: dict[str, Any] = {"repo": found.repo, "source": found.source, "path": str(found.path)}
        if comp.kind is not None:
            try:
                files = find_weight_files(found.path)
                det = detect_kind(read_header_infos(files))
                entry.update(kind=det.kind, format=det.format, files=len(files), ok=det.kind == comp.kind)
            except FramepackError as e:
                entry.update(kind="unreadable", error=e.message, ok=False)
        else:
            ok = all(find_tokenizer_snapshot(k, places) is not None for k in (1, 2))
            entry.update(kind="tokenizers", ok=ok)
        components[name] = entry
    known = {"models--" + s.repo.replace("/", "--") for c in COMPONENTS.values() for s in c.sources}
    others = sorted(c.name[len("models--"):].replace("--", "/", 1) for c in p.iterdir()
                    if c.is_dir() and c.name.startswith("models--") and c.name not in known)
    commands = {}
    for cmd, needs in COMMAND_NEEDS.items():
        missing = [n for n in needs if not (components[n] or {}).get("ok")]
        commands[cmd] = {"missing": missing, "fetch": fetch_command(missing, str(p)) if missing else None}
    return {"path": str(p), "kind": "models_dir", "components": components, "other_repos": others,
            "commands": commands}
