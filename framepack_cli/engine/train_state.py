"""Training states without pickles: what `--save_state` writes and `--resume` reads.

A state is a directory `<output_name>-step00000010-state/` (or `-000002-state`, `-state`) holding

- `network.safetensors`: the network's weights (float32, exactly as trained);
- `optimizer.safetensors` + the optimizer's non-tensor values in `state.json`;
- `state.json`: format, step, epoch, the position inside the epoch, the seed, the session id, the files the run
  has written (so a resumed run may replace and prune only its own files), the scheduler's state, the python /
  numpy / torch RNG states, and a digest of the options that must not change across a resume.

Everything is JSON or safetensors, so loading a state never unpickles anything (accelerate's own
`save_state` pickles the RNG states and the optimizer; the reference's state folders are refused with that
reason). The directory is written under a temporary name and renamed, so a state is complete or absent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from framepack_cli.errors import FramepackError

STATE_FORMAT = "framepack-train-state/1"
STATE_JSON = "state.json"
NETWORK_FILE = "network.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


# --------------------------------------------------------------------------------------------------------------
# Nested values <-> (JSON, tensors)


def _flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `value` where every tensor is replaced by `{"__tensor__": key}` (stored in `tensors`)."""
    if isinstance(value, torch.Tensor):
        key = prefix or "value"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training state")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__dict__" in value:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    return value


def rng_states() -> dict[str, Any]:
    """python, numpy and torch (CPU and every CUDA device) RNG states, JSON-able except the torch tensors."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    for i, s in enumerate(states.get("cuda") or []):
        if i < torch.cuda.device_count():
            torch.cuda.set_rng_state(s, i)


# --------------------------------------------------------------------------------------------------------------


@dataclass
class TrainProgress:
    """Where a run is: counters, and what it has written."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    position: int = 0  # batches of `epoch` this process has consumed
    micro_step: int = 0  # micro-batches done over the whole run (seeds the per-sample noise)
    seed: int = 0
    session_id: int = 0
    written: list[str] = field(default_factory=list)  # file / state names (in output_dir) this run wrote
    options_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position, "micro_step": self.micro_step,
                "seed": self.seed,
                "session_id": self.session_id, "written": list(self.written), "options_digest": self.options_digest}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainProgress:
        return cls(**{k: data[k] for k in ("step", "epoch", "position", "micro_step", "seed", "session_id",
                                           "written", "options_digest")})


def save_state(directory: Path, progress: TrainProgress, network, optimizer, scheduler) -> Path:
    """Write a complete state directory atomically (temp dir, then rename; an older one of the same name from
    this run is replaced)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        net = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        save_file(net, str(tmp / NETWORK_FILE))
        opt_tensors: dict[str, torch.Tensor] = {}
        opt = _flatten(optimizer.state_dict(), "opt", opt_tensors)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
        rng_tensors: dict[str, torch.Tensor] = {}
        rng = _flatten(rng_states(), "rng", rng_tensors)
        sched_tensors: dict[str, torch.Tensor] = {}
        sched = _flatten(scheduler.state_dict(), "sched", sched_tensors)
        if rng_tensors or sched_tensors:
            save_file({**rng_tensors, **sched_tensors}, str(tmp / "rng.safetensors"))
        doc = {"format": STATE_FORMAT, "progress": progress.to_json(), "optimizer": opt, "scheduler": sched,
               "rng": rng}
        (tmp / STATE_JSON).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


@dataclass
class LoadedState:
    progress: TrainProgress
    network: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def is_state_dir(path: Path) -> bool:
    return (Path(path) / STATE_JSON).is_file()


def read_state(directory: Path, flag: str = "--resume") -> LoadedState:
    """Read a state directory written by `save_state`.

    Raises:
        FramepackError: not a state directory (a reference/accelerate state is named as such), or damaged.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_state_dir(directory):
        if any((directory / n).exists() for n in ("random_states_0.pkl", "optimizer.bin", "scheduler.bin")):
            raise FramepackError(
                f"{flag}: {directory} is an accelerate state (the reference trainer's); framepack does not load "
                "its pickled files",
                hint="continue from its LoRA instead: --network_weights <the LoRA saved with that state>")
        raise FramepackError(f"{flag}: {directory} is not a framepack training state (no {STATE_JSON})",
                             hint="give a <output_name>-...-state folder written with --save_state")
    try:
        doc = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
        if doc.get("format") != STATE_FORMAT:
            raise FramepackError(f"{flag}: {directory} has state format {doc.get('format')!r}, "
                                 f"this framepack reads {STATE_FORMAT!r}")
        extra = load_file(str(directory / "rng.safetensors")) if (directory / "rng.safetensors").is_file() else {}
        opt_tensors = load_file(str(directory / OPTIMIZER_FILE))
        return LoadedState(
            progress=TrainProgress.from_json(doc["progress"]),
            network=load_file(str(directory / NETWORK_FILE)),
            optimizer=_unflatten(doc["optimizer"], opt_tensors),
            scheduler=_unflatten(doc["scheduler"], extra),
            rng=_unflatten(doc["rng"], extra),
        )
    except FramepackError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FramepackError(f"{flag}: the training state {directory} is damaged or incomplete ({e})") from None


def newest_state(directory: Path, name: str) -> Path | None:
    """The most advanced `<name>-*state` folder in `directory` (by its recorded step), or None."""
    best: tuple[int, float, Path] | None = None
    for p in Path(directory).glob(f"{name}*-state"):
        if not is_state_dir(p):
            continue
        try:
            step = int(json.loads((p / STATE_JSON).read_text(encoding="utf-8"))["progress"]["step"])
        except (OSError, ValueError, KeyError):
            continue
        key = (step, p.stat().st_mtime, p)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]
