"""`framepack doctor`: what this machine can run, on one screen (or `--json`).

Facts, each from its own small function (tests replace the probes): torch / CUDA / driver versions, every GPU
with its free memory, RAM, free disk under the output and model folders, the attention kernels and video codecs
installed, the memory settings `--memory auto` would choose for a 640x640 video with the released DiT's and
VAE's sizes (`engine/memory_plan.py`; on the CPU the RAM a run needs instead), and the model files found in the
given folders (`models_found(folders)`, each file's kind from its header, `engine/inspect.py`), and what the
model resolution finds where `framepack download` writes (`stored_models`: `--models_dir`, `$FRAMEPACK_HOME`, the
Hugging Face cache; `models/store.py`) with, per command, what is missing and the command that fetches it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError

GiB = 2**30
KERNELS = {"flash_attn": "flash_attn", "flash_attn_3": "flash_attn_interface", "sageattention": "sageattention",
           "xformers": "xformers"}  # name shown -> module imported
PLAN_SIZE = (640, 640)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# The released FramePack DiT (lllyasviel/FramePackI2V_HY config.json), for the plan when no DiT file is found.
RELEASED_DIT = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
    "num_layers": 20, "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2,
    "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096,
    "pooled_projection_dim": 768, "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56], "image_proj_dim": 1152,
}


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GiB:.1f} GiB"


# --------------------------------------------------------------------------------------------------------
# probes
# --------------------------------------------------------------------------------------------------------


def torch_facts() -> dict[str, Any]:
    """torch, its CUDA build and the NVIDIA driver (None where absent)."""
    import torch

    driver = None
    if torch.cuda.is_available():
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "driver": driver}


def gpu_devices() -> list[dict[str, Any]]:
    """One entry per CUDA device: index, name, capability, free and total bytes."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        cap = torch.cuda.get_device_capability(i)
        out.append({"index": i, "name": torch.cuda.get_device_name(i), "capability": f"{cap[0]}.{cap[1]}",
                    "free": int(free), "total": int(total)})
    return out


def ram_facts() -> dict[str, int | None]:
    from framepack_cli.engine.resources import ram

    available, total = ram()
    return {"total": total, "available": available}


def disk_facts(folders: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Free bytes under each folder (its nearest existing parent when it does not exist yet)."""
    out = {}
    for what, folder in folders.items():
        p = Path(folder).expanduser().absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            free = shutil.disk_usage(p).free
        except OSError:
            free = None
        out[what] = {"path": str(folder), "free": free}
    return out


def attention_kernels() -> dict[str, dict[str, Any]]:
    """Each optional attention kernel: importable or not (with the import error), and its version."""
    out = {}
    for name, module in KERNELS.items():
        entry: dict[str, Any] = {"importable": False, "version": None}
        try:
            mod = importlib.import_module(module)
            entry["importable"] = True
            entry["version"] = getattr(mod, "__version__", None)
        except ModuleNotFoundError:
            entry["error"] = "not installed"
        except Exception as e:  # a broken install (wrong CUDA, missing symbol): say why  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        if entry["version"] is None:
            try:
                entry["version"] = importlib.metadata.version(name.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                pass
        out[name] = entry
    return out


def video_codecs() -> dict[str, Any]:
    """PyAV (what framepack encodes MP4 with) and whether its FFmpeg has libx264; the ffmpeg program."""
    out: dict[str, Any] = {"av": None, "libx264": False, "ffmpeg": shutil.which("ffmpeg")}
    try:
        import av

        out["av"] = av.__version__
        out["libx264"] = "libx264" in av.codecs_available
    except ImportError:
        pass
    return out


# --------------------------------------------------------------------------------------------------------
# models found
# --------------------------------------------------------------------------------------------------------


def _candidates(folder: Path) -> list[Path]:
    """Weight files of `folder` (one entry per shard set) and its subfolders (each one model)."""
    from framepack_cli.models.loading import expand_shards

    files = sorted(x for x in folder.iterdir() if x.is_file() and x.name.endswith(WEIGHT_SUFFIXES))
    seen: set[Path] = set()
    out: list[Path] = []
    for f in files:
        if f in seen:
            continue
        shards = expand_shards(f)
        seen.update(shards)
        out.append(folder if len(shards) == len(files) and len(shards) > 1 else f)
    # hub-cache repositories (`models--owner--name`, what `framepack download` writes) are the store's: see
    # `stored_models`
    out += sorted(x for x in folder.iterdir()
                  if x.is_dir() and not x.name.startswith(".") and not x.name.startswith("models--"))
    return out


def models_found(folders: list[str | Path]) -> list[dict[str, Any]]:
    """What each model file or model folder directly in `folders` is: `{"path", "kind", "description",
    "format", "dtype", "parameters"}`, or `{"path", "kind": None, "error"}` for what is not a model framepack
    reads. Folders that do not exist give one entry with their error."""
    from framepack_cli.engine.inspect import describe

    out: list[dict[str, Any]] = []
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            out.append({"path": str(root), "kind": None, "error": "not a folder"})
            continue
        for c in _candidates(root):
            try:
                info = describe(str(c))
            except FramepackError as e:
                if c.is_dir() and "no weight" in e.message.lower():
                    continue  # a folder without weights (tokenizers, configs): not a model
                out.append({"path": str(c), "kind": None, "error": e.message})
                continue
            except Exception as e:  # an unreadable file: listed, never fatal  # noqa: BLE001
                out.append({"path": str(c), "kind": None, "error": f"{type(e).__name__}: {e}"})
                continue
            out.append({k: info[k] for k in ("path", "kind", "description", "format", "dtype", "parameters")})
    return out


# --------------------------------------------------------------------------------------------------------
# the memory settings
# --------------------------------------------------------------------------------------------------------


def released_sizes():
    """(`memory_plan.DitSize`, VAE bytes in float16) of the released models, from their architectures on the
    meta device (no weights needed)."""
    import torch

    from framepack_cli.engine import memory_plan as mp
    from framepack_cli.models.tensor_info import TensorInfo
    from framepack_cli.models.transformer import FramePackTransformer

    with torch.device("meta"):
        model = FramePackTransformer(**RELEASED_DIT)
    infos = {k: TensorInfo("BF16", tuple(v.shape)) for k, v in model.state_dict().items()}
    try:
        from diffusers import AutoencoderKLHunyuanVideo

        with torch.device("meta"):
            vae = sum(p.numel() for p in AutoencoderKLHunyuanVideo().parameters()) * 2  # its defaults: FramePack's
    except Exception:  # noqa: BLE001 - the VAE's share of the estimate is small; planned without it
        vae = 0
    return mp.dit_size(infos), vae


def memory_settings(gpus: list[dict[str, Any]], ram: dict[str, int | None]) -> dict[str, Any]:
    """What `--memory auto` chooses for a 640x640 video (5 sections, window 9) with the released model's size
    on the first GPU; on the CPU the RAM the DiT's sampling needs (float32)."""
    from framepack_cli.engine import memory_plan as mp

    size, vae = released_sizes()
    h, w = PLAN_SIZE
    req = mp.Request(h, w, 9, sections=5)
    if not gpus:
        need = size.nbytes(4) + mp.activation_bytes(size, req, 4)
        fits = ram["available"] is None or need + mp.RAM_RESERVE <= ram["available"]
        line = (f"no CUDA GPU: runs on CPU; sampling {h}x{w} with the released DiT needs about {_gib(need)} of "
                f"RAM (float32), {_gib(ram['available'])} available" + ("" if fits else ": does not fit"))
        return {"device": "cpu", "ram_needed": need, "fits": fits, "line": line}
    gpu = gpus[0]
    plan = mp.plan_memory(size, req, free_vram=gpu["free"], total_ram=ram["total"], vae=vae)
    line = plan.line if plan.fits else plan.error(f"cuda:{gpu['index']}").message
    return {"device": f"cuda:{gpu['index']}", "fits": plan.fits, "settings": plan.settings(), "fp8": plan.fp8,
            "blocks_to_swap": plan.blocks_to_swap, "vae_chunk_size": plan.vae_chunk_size, "vae_tile": plan.vae_tile,
            "sampling_bytes": plan.dit_bytes, "line": line}


# --------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------


def stored_models(models_dirs: list[str] | None) -> dict[str, Any]:
    """What a run without model flags would use: each catalog component found (path, where, repository) or None,
    searched like every command does (the `--models_dir` folders, `$FRAMEPACK_HOME`, the HF cache; offline), and
    per command the components still missing with the `framepack download` command that fetches them."""
    from framepack_cli.models.store import find_component, store_places
    from framepack_cli.plan.model_catalog import COMMAND_NEEDS, COMPONENTS, fetch_command

    dirs = list(models_dirs or [])
    places = [(Path(d).expanduser(), "--models_dir") for d in dirs[:-1]] + store_places(dirs[-1] if dirs else None)
    found = {name: find_component(comp, places) for name, comp in COMPONENTS.items()}
    components = {name: None if f is None else {"path": str(f.path), "place": f.place, "repo": f.repo}
                  for name, f in found.items()}
    commands = {}
    for cmd, needs in COMMAND_NEEDS.items():
        missing = [n for n in needs if found.get(n) is None]
        commands[cmd] = {"missing": missing,
                         "fetch": fetch_command(missing, dirs[-1] if dirs else None) if missing else None}
    return {"places": [{"path": str(p), "label": label} for p, label in places], "components": components,
            "commands": commands}


def collect(models_dirs: list[str] | None, save_path: str) -> dict[str, Any]:
    folders = list(models_dirs or [])
    models = models_found(folders)
    stored = stored_models(folders)
    gpus = gpu_devices()
    ram = ram_facts()
    disk = disk_facts({"output": save_path, **{f"models {d}": d for d in folders}})
    return {"torch": torch_facts(), "gpus": gpus, "ram": ram, "disk": disk, "attention": attention_kernels(),
            "video": video_codecs(), "memory": memory_settings(gpus, ram), "models": models, "stored": stored}


def rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """The one-screen report as `key  value` rows."""
    t = facts["torch"]
    out = [("torch", f"{t['torch']} (CUDA {t['cuda'] or 'none'}, driver {t['driver'] or 'none'})")]
    if facts["gpus"]:
        for g in facts["gpus"]:
            out.append((f"GPU {g['index']}", f"{g['name']} (capability {g['capability']}): {_gib(g['free'])} free "
                                             f"of {_gib(g['total'])}"))
    else:
        out.append(("GPU", "none (no CUDA device)"))
    r = facts["ram"]
    out.append(("RAM", f"{_gib(r['available'])} available of {_gib(r['total'])}"))
    for what, d in facts["disk"].items():
        out.append((f"disk ({what})", f"{_gib(d['free'])} free under {d['path']}"))
    for name, k in facts["attention"].items():
        state = f"yes ({k['version'] or 'version unknown'})" if k["importable"] else f"no ({k.get('error')})"
        out.append((f"attention {name}", state))
    v = facts["video"]
    out.append(("video", f"PyAV {v['av'] or 'not installed'}, libx264 {'yes' if v['libx264'] else 'NO'}, "
                         f"ffmpeg program {v['ffmpeg'] or 'not found'}"))
    out.append((f"memory at {PLAN_SIZE[0]}x{PLAN_SIZE[1]}", facts["memory"]["line"]))
    stored = facts["stored"]
    out.append(("models searched", ", ".join(f"{p['label']} {p['path']}" for p in stored["places"])))
    for name, c in stored["components"].items():
        out.append((f"  {name}", "not found" if c is None else f"{c['path']} ({c['place']}, {c['repo']})"))
    for cmd, c in stored["commands"].items():
        out.append((f"  ready: {cmd}", "yes" if not c["missing"] else
                    f"no, missing {', '.join(c['missing'])}: {c['fetch']}"))
    if not facts["models"] and facts["disk"].keys() - {"output"}:
        out.append(("model files", "none found in the --models_dir folders"))
    folder = None
    for entry in facts["models"]:
        p = Path(entry["path"])
        if str(p.parent) != folder and entry.get("error") != "not a folder":
            folder = str(p.parent)
            out.append((f"models in {folder}", ""))
        what = (f"{entry['description']}, {entry['format']}, {entry['dtype']}, {entry['parameters']:,} parameters"
                if entry["kind"] else entry["error"])
        out.append((f"  {p.name}" if entry.get("error") != "not a folder" else f"models in {p}", what))
    return out
