"""The trainable LoRA network of the FramePack DiT (musubi's `networks.lora_framepack`, same file format).

Targets: every `nn.Linear` inside the dual (`transformer_blocks.N`) and single (`single_transformer_blocks.N`)
blocks whose module path does not full-match an exclude pattern (`.*(norm).*` is always added, which removes the
AdaLN modulation linears `norm1.linear`, `norm1_context.linear`, `norm.linear`), unless it full-matches an include
pattern (include patterns only rescue excluded modules). Embedders, token refiner, image projection, `norm_out`
and the model's `proj_out` are never targets.

Each target keeps its own frozen weight; its `forward` is replaced by `y0 + up(down(x)) · multiplier · alpha/rank`
with float32 `lora_down` (Kaiming-uniform, a=√5) / `lora_up` (zeros) parameters and a 0-d `alpha` buffer. The
network's `state_dict` has the saved keys: `lora_unet_<path with . -> _>.lora_down.weight` (r, in),
`.lora_up.weight` (out, r) and `.alpha` ().

One deliberate difference from the reference: after `load_weights` the scale follows the loaded alpha (the
reference keeps `--network_alpha`'s scale while saving the file's alpha, which it marks FIXME), so a saved file
always reproduces the model that was trained.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from framepack_cli.errors import FramepackError
from framepack_cli.models.lora.names import DUAL_BLOCK, MUSUBI_PREFIX, SINGLE_BLOCK, musubi_name

DEFAULT_EXCLUDE = r".*(norm).*"
_BLOCK_PATH_RE = re.compile(rf"^({DUAL_BLOCK}|{SINGLE_BLOCK})\.\d+$")
NETWORK_MODULE = "networks.lora_framepack"


# --------------------------------------------------------------------------------------------------
# One adapted Linear
# --------------------------------------------------------------------------------------------------


class LoraLinear(nn.Module):
    """The LoRA of one `nn.Linear`; `attach()` replaces the Linear's forward, `detach()` restores it.

    The original module is not a submodule (so it is not in the state dict); its weight is frozen on attach.
    """

    def __init__(self, path: str, org: nn.Linear, dim: int, alpha: float | None, multiplier: float = 1.0,
                 dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None) -> None:
        super().__init__()
        self.path = path
        self.lora_name = musubi_name(path)
        self.lora_dim = int(dim)
        device = org.weight.device if org.weight.device.type != "meta" else None
        self.lora_down = nn.Linear(org.in_features, self.lora_dim, bias=False, device=device, dtype=torch.float32)
        self.lora_up = nn.Linear(self.lora_dim, org.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.zeros((), dtype=torch.float32, device=device))
        self.set_alpha(alpha)
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self._org = [org]  # a list, so the Linear is no submodule
        self._org_forward = None

    def set_alpha(self, alpha: float | None) -> None:
        """Set alpha (None/0 -> rank) and the scale alpha/rank that the forward uses."""
        alpha = float(self.lora_dim if alpha is None or alpha == 0 else alpha)
        with torch.no_grad():
            self.alpha.fill_(alpha)
        self.scale = alpha / self.lora_dim  # a Python float: no device sync in the forward

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.set_alpha(float(self.alpha))  # a loaded alpha buffer sets the scale too

    @property
    def org_module(self) -> nn.Linear:
        return self._org[0]

    def attach(self) -> None:
        org = self.org_module
        org.weight.requires_grad_(False)
        if org.bias is not None:
            org.bias.requires_grad_(False)
        self._org_forward = org.forward
        org.forward = self.forward

    def detach(self) -> None:
        org = self.org_module
        if self._org_forward is not None:
            del org.forward  # the instance attribute; the class method is visible again
            self._org_forward = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self._org_forward(x)
        if self.module_dropout is not None and self.training and torch.rand(1) < self.module_dropout:
            return y0
        dtype = self.lora_down.weight.dtype
        autocast = x.is_floating_point() and torch.is_autocast_enabled(x.device.type)
        h = self.lora_down(x.to(dtype) if x.is_floating_point() and x.dtype != dtype and not autocast else x)
        if self.dropout is not None and self.training:
            h = nn.functional.dropout(h, p=self.dropout)
        scale = self.scale
        if self.rank_dropout is not None and self.training:
            mask = torch.rand((h.size(0), self.lora_dim), device=h.device) > self.rank_dropout
            h = h * mask.view(h.size(0), *([1] * (h.dim() - 2)), self.lora_dim)
            scale = scale / (1.0 - self.rank_dropout)
        y = y0 + self.lora_up(h) * (self.multiplier * scale)
        return y.to(y0.dtype) if y.dtype != y0.dtype and y0.is_floating_point() else y


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


def parse_network_args(args: Sequence[str] | None) -> dict[str, str]:
    """`--network_args key=value ...` as a dict of strings (one clear line for an item without `=`)."""
    out: dict[str, str] = {}
    for item in args or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FramepackError(f"--network_args: {item!r} is not key=value",
                                 hint="e.g. --network_args \"exclude_patterns=[r'.*ff.*']\" rank_dropout=0.1")
        out[key.strip()] = value.strip()
    return out


def _pattern_list(value: str | Sequence[str] | None, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise FramepackError(f"--network_args: {key}={value} is not a Python list of strings",
                                 hint=f"e.g. {key}=[r'.*attn.*']") from None
        if isinstance(value, str):
            value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise FramepackError(f"--network_args: {key}={value!r} is not a list of strings",
                             hint=f"e.g. {key}=[r'.*attn.*']")
    return list(value)


def _compile(patterns: Iterable[str], key: str) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise FramepackError(f"--network_args: {key}: invalid regular expression {p!r} ({e})") from None
    return out


def target_linears(model: nn.Module, exclude_patterns: str | Sequence[str] | None = (),
                   include_patterns: str | Sequence[str] | None = ()) -> list[tuple[str, nn.Linear]]:
    """(path, Linear) of every LoRA target of a FramePack DiT, in module order (see the module docstring).

    Patterns are lists of regexes, or a `--network_args` value (a Python list literal as a string)."""
    exclude = _compile([*_pattern_list(exclude_patterns, "exclude_patterns"), DEFAULT_EXCLUDE], "exclude_patterns")
    include = _compile(_pattern_list(include_patterns, "include_patterns"), "include_patterns")
    found = []
    for name, block in model.named_modules():
        if not _BLOCK_PATH_RE.match(name):
            continue
        for child_name, child in block.named_modules():
            if not isinstance(child, nn.Linear):
                continue
            path = f"{name}.{child_name}"
            if any(p.fullmatch(path) for p in exclude) and not any(p.fullmatch(path) for p in include):
                continue
            found.append((path, child))
    return found


@dataclass
class LoadReport:
    """What `load_weights` did: modules loaded, network modules the file lacks (kept at their init)."""

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    format: str = ""


class NetworkBase(nn.Module):
    """What every trainable network of the DiT shares (LoRA, LoHa, LoKr): a list `loras` of adapted modules
    (each with `attach()`/`detach()`, `lora_name`, `multiplier`), applying, multiplier, saving.

    Subclasses set `network_module` (the reference's `--network_module` name, saved as `ss_network_module`),
    `dim` / `alpha` (the `--network_dim` / `--network_alpha` it was built with, for the metadata) and
    `loraplus_lr_ratio` (None unless `--network_args loraplus_lr_ratio=R`).
    """

    network_module = ""
    loras: list[nn.Module]
    applied: bool
    multiplier: float

    def apply_to_model(self) -> None:
        """Replace the forward of every target Linear (idempotent)."""
        if not self.applied:
            for lora in self.loras:
                lora.attach()
            self.applied = True

    def remove_from_model(self) -> None:
        """Restore the original forwards."""
        if self.applied:
            for lora in self.loras:
                lora.detach()
            self.applied = False

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = multiplier
        for lora in self.loras:
            lora.multiplier = multiplier

    @property
    def module_names(self) -> list[str]:
        return [lora.lora_name for lora in self.loras]

    def weights(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The saved tensors (detached CPU copies), every one in `dtype` if given (alpha included)."""
        out = {}
        for key, value in self.state_dict().items():
            v = value.detach().to("cpu")
            out[key] = v.to(dtype).clone() if dtype is not None else v.clone()
        return out

    def save_weights(self, path: str | Path, *, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None, flag: str = "--output_dir") -> dict[str, str]:
        """Save as musubi does, as safetensors (temp file then rename: never a half-written file), adding
        `sshs_model_hash` and `sshs_legacy_hash` to the metadata. Returns the metadata written.

        Raises:
            ResourceError: the file cannot be written (disk full, no permission); names `flag` and the path.
        """
        from framepack_cli.io.writable import resource_error_for
        from framepack_cli.models.lora.save import save_tensors

        tensors = self.weights(dtype)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        model_hash, legacy_hash = safetensors_hashes(tensors, meta)
        meta["sshs_model_hash"] = model_hash
        meta["sshs_legacy_hash"] = legacy_hash
        try:
            save_tensors(path, tensors, meta)
        except OSError as e:
            raise resource_error_for(e, flag, path) from None
        return meta


class LoraNetwork(NetworkBase):
    """Trainable LoRA over a loaded `FramePackTransformer` (musubi `networks.lora_framepack` semantics).

    Args:
        model: the DiT; its target Linears get the LoRA forward on `apply()` (or at once with `apply=True`).
        dim: rank of every module (None -> 4).
        alpha: alpha of every module (None -> 1; 0 -> dim, i.e. scale 1).
        multiplier: LoRA strength (1 in training).
        dropout: neuron dropout probability on the rank activations (`--network_dropout`).
        rank_dropout / module_dropout: `--network_args` probabilities (training mode only).
        exclude_patterns / include_patterns: full-match regexes on module paths (`.*(norm).*` always excluded).
        modules_dim / modules_alpha: per-module rank / alpha by musubi name (a network built from weights):
            only the listed modules are created.
        apply: attach to the model right away.

    Raises:
        FramepackError: a bad pattern, or no module targeted.
    """

    network_module = NETWORK_MODULE

    def __init__(self, model: nn.Module, dim: int | None = 4, alpha: float | None = 1.0, *,
                 multiplier: float = 1.0, dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None, exclude_patterns: str | Sequence[str] | None = (),
                 include_patterns: str | Sequence[str] | None = (), modules_dim: Mapping[str, int] | None = None,
                 modules_alpha: Mapping[str, float | None] | None = None, apply: bool = True,
                 loraplus_lr_ratio: float | None = None) -> None:
        super().__init__()
        self.dim = 4 if dim is None else int(dim)
        self.alpha_value = 1.0 if alpha is None else float(alpha)
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.warnings: list[str] = []
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.loras: list[LoraLinear] = []
        for path, linear in target_linears(model, exclude_patterns, include_patterns):
            name = musubi_name(path)
            if modules_dim is not None:
                if name not in modules_dim:
                    continue
                d, a = modules_dim[name], (modules_alpha or {}).get(name)
            else:
                d, a = self.dim, self.alpha_value
            if not d:
                continue
            lora = LoraLinear(path, linear, d, a, multiplier, dropout, rank_dropout, module_dropout)
            self.add_module(lora.lora_name, lora)
            self.loras.append(lora)
        if not self.loras:
            raise FramepackError("--network_args: the include/exclude patterns leave no module to train",
                                 hint="loosen exclude_patterns or add include_patterns")
        self._model = [model]
        self.applied = False
        if apply:
            self.apply_to_model()

    @property
    def alpha(self) -> float:
        """`--network_alpha` as built (for `ss_network_alpha`); each module has its own `alpha` buffer."""
        return self.alpha_value

    # ---- construction from weights ----------------------------------------------------------------

    @classmethod
    def from_weights(cls, model: nn.Module, path: str | Path, *, multiplier: float = 1.0,
                     flag: str = "--network_weights", **kwargs: Any) -> LoraNetwork:
        """A network with the ranks and alphas of a LoRA file (`--dim_from_weights`), weights loaded too."""
        lora_file = read_network_file(path, flag, model)
        dims, alphas = {}, {}
        for p, mod in lora_file.modules.items():
            dims[musubi_name(p)] = int(mod.tensors["down"].shape[0])
            alphas[musubi_name(p)] = mod.alpha
        net = cls(model, multiplier=multiplier, modules_dim=dims, modules_alpha=alphas, **kwargs)
        net.load_lora_file(lora_file, flag)
        return net

    # ---- loading ------------------------------------------------------------------------------------

    def load_weights(self, path: str | Path, *, flag: str = "--network_weights") -> LoadReport:
        """Load initial weights from a LoRA file of any layout `read_lora` reads (musubi, diffusers, comfy,
        HunyuanVideo names). Every module of the file must be a module of this network with the same rank and
        shapes; network modules the file lacks keep their initial values (reported in `missing`).

        Raises:
            FramepackError: a module of the file the network does not have, a rank/shape mismatch, or a
                non-LoRA module (LoHa/LoKr/full delta); the message names the modules.
        """
        return self.load_lora_file(read_network_file(path, flag, self._model[0]), flag)

    def load_lora_file(self, lora_file: Any, flag: str) -> LoadReport:
        by_path = {lora.path: lora for lora in self.loras}
        unknown, bad_shape, bad_kind = [], [], []
        for p, mod in sorted(lora_file.modules.items()):
            lora = by_path.get(p)
            if lora is None:
                unknown.append(musubi_name(p))
            elif mod.kind != "lora":
                bad_kind.append(f"{musubi_name(p)} ({mod.kind})")
            else:
                want = (tuple(lora.lora_down.weight.shape), tuple(lora.lora_up.weight.shape))
                got = (tuple(mod.tensors["down"].shape), tuple(mod.tensors["up"].shape))
                if want != got:
                    bad_shape.append(f"{musubi_name(p)} down/up {list(got[0])}/{list(got[1])}, "
                                     f"network {list(want[0])}/{list(want[1])}")
        shown = lora_file.path
        unknown.sort()
        bad_shape.sort()
        bad_kind.sort()
        if bad_kind:
            raise FramepackError(f"{flag}: {shown}: only LoRA modules can be trained, not "
                                 f"{few_names(bad_kind)}")
        if unknown:
            raise FramepackError(f"{flag}: {shown}: {len(unknown)} module(s) are not in this network: "
                                 f"{few_names(unknown)}",
                                 hint="check --network_args include/exclude patterns and the DiT")
        if bad_shape:
            raise FramepackError(f"{flag}: {shown}: shapes do not match for {len(bad_shape)} module(s): "
                                 f"{few_names(bad_shape)}",
                                 hint="use the file's rank as --network_dim (or --dim_from_weights)")
        report = LoadReport(Path(shown), format=lora_file.format)
        with torch.no_grad():
            for lora in self.loras:
                mod = lora_file.modules.get(lora.path)
                if mod is None:
                    report.missing.append(lora.lora_name)
                    continue
                lora.lora_down.weight.copy_(mod.tensors["down"].to(torch.float32))
                lora.lora_up.weight.copy_(mod.tensors["up"].to(torch.float32))
                lora.set_alpha(mod.alpha)
                report.loaded.append(lora.lora_name)
        return report

    # ---- training helpers ---------------------------------------------------------------------------

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for lora in self.loras:
            yield lora.lora_down.weight
            yield lora.lora_up.weight

    def param_groups(self, lr: float, loraplus_lr_ratio: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups like the reference: one group at `lr`; with LoRA+ (`loraplus_lr_ratio`, default the
        network's own from `--network_args`) the `lora_up` weights in a second group at `lr × ratio`. Groups whose
        lr is 0 are dropped."""
        self.requires_grad_(True)
        if loraplus_lr_ratio is None:
            loraplus_lr_ratio = self.loraplus_lr_ratio
        if loraplus_lr_ratio is None:
            groups = [{"params": list(self.trainable_parameters()), "lr": lr}]
        else:
            groups = [{"params": [x.lora_down.weight for x in self.loras], "lr": lr},
                      {"params": [x.lora_up.weight for x in self.loras], "lr": lr * loraplus_lr_ratio}]
        return [g for g in groups if g["lr"]]

    @torch.no_grad()
    def max_norm_regularize(self, max_norm: float) -> tuple[int, float, float]:
        """`--scale_weight_norms`: scale up and down by √ratio where ‖(up@down)·alpha/r‖_F exceeds `max_norm`.

        Returns:
            (modules scaled, mean of the norms after scaling, max of them).
        """
        scaled, norms = 0, []
        for lora in self.loras:
            up, down = lora.lora_up.weight, lora.lora_down.weight
            updown = (up @ down) * (lora.alpha / lora.lora_dim)
            norm = updown.norm().clamp(min=max_norm / 2)
            ratio = (torch.clamp(norm, max=max_norm) / norm).cpu()
            if ratio != 1:
                scaled += 1
                up.mul_(ratio.sqrt().to(up.device))
                down.mul_(ratio.sqrt().to(down.device))
            norms.append(float(updown.norm().cpu() * ratio))
        return scaled, sum(norms) / len(norms), max(norms)


def few_names(items: Sequence[str], n: int = 5) -> str:
    """The first `n` names, comma-separated, with a `(+k more)` tail (for one-line errors)."""
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _inner_dim(model: nn.Module) -> int | None:
    for blocks in (DUAL_BLOCK, SINGLE_BLOCK):
        container = getattr(model, blocks, None)
        if container is not None and len(container) and isinstance(getattr(container[0].attn, "to_q", None), nn.Linear):
            return int(container[0].attn.to_q.out_features)
    return None


def read_network_file(path: str | Path, flag: str, model: nn.Module) -> Any:
    """`read_lora` of a `--network_weights` file for the DiT `model` (any layout, mapped onto its modules)."""
    from framepack_cli.models.lora.read import read_lora

    # the hidden size splits fused HunyuanVideo projections (linear1 of a single block) exactly
    return read_lora(path, flag=flag, inner_dim=_inner_dim(model))


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(`sshs_model_hash`, `sshs_legacy_hash`) as sd-webui-additional-networks / musubi compute them: the file
    is serialized with only the `ss_*` metadata; model hash = SHA-256 of everything after the header, legacy
    hash = first 8 hex of SHA-256 of the 64 KiB at offset 1 MiB (empty input for small files)."""
    from safetensors.torch import save

    raw = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = int.from_bytes(raw[:8], "little")
    model_hash = hashlib.sha256(raw[8 + n:]).hexdigest()
    legacy_hash = hashlib.sha256(raw[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def modelspec_metadata(timestamp: float, title: str | None = None, resolution: str | int | Sequence[int] | None = None,
                       *, author: str | None = None, description: str | None = None, license: str | None = None,
                       tags: str | None = None, timesteps: Sequence[int] | None = None) -> dict[str, str]:
    """The reference's SAI model-spec fields of a FramePack LoRA (`modelspec.*`)."""
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "framepack/lora",
            "modelspec.implementation": "https://github.com/lllyasviel/FramePack",
            "modelspec.title": title if title is not None else f"LoRA@{timestamp}"}
    for key, value in (("author", author), ("description", description), ("license", license), ("tags", tags)):
        if value is not None:
            meta[f"modelspec.{key}"] = value
    # Local time, like the reference (datetime.fromtimestamp of the integral timestamp).
    meta["modelspec.date"] = datetime.datetime.fromtimestamp(int(timestamp)).isoformat()
    if resolution is None:
        reso: tuple[int, ...] = (1280, 720)
    elif isinstance(resolution, int):
        reso = (resolution, resolution)
    elif isinstance(resolution, str):
        reso = tuple(int(v) for v in resolution.split(","))
    else:
        reso = tuple(int(v) for v in resolution)
    if len(reso) == 1:
        reso = (reso[0], reso[0])
    meta["modelspec.resolution"] = f"{reso[0]}x{reso[1]}"
    if timesteps is not None:
        ts = tuple(timesteps) if not isinstance(timesteps, int) else (timesteps, timesteps)
        if len(ts) == 1:
            ts = (ts[0], ts[0])
        meta["modelspec.timestep_range"] = f"{ts[0]},{ts[1]}"
    return meta


def training_metadata(values: Mapping[str, Any], *, timestamp: float, title: str | None = None,
                      resolution: str | int | Sequence[int] | None = None, no_metadata: bool = False,
                      **modelspec: Any) -> dict[str, str]:
    """Metadata of a saved LoRA: `ss_<name>` = `str(value)` for every plain value (None -> "None"; names may
    be given with or without the `ss_` prefix), plus the `modelspec.*` fields. With `no_metadata` only
    `ss_base_model_version`, `ss_network_module`, `ss_network_dim`, `ss_network_alpha` and `ss_network_args`
    are kept and no model spec is added. The `sshs_*` hashes are added by `LoraNetwork.save_weights`."""
    meta = {}
    for key, value in values.items():
        key = key if key.startswith("ss_") else f"ss_{key}"
        meta[key] = str(value)
    if no_metadata:
        keep = ("ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args")
        return {k: v for k, v in meta.items() if k in keep}
    meta.update(modelspec_metadata(timestamp, title, resolution, **modelspec))
    return meta


__all__ = [
    "DEFAULT_EXCLUDE", "MUSUBI_PREFIX", "NETWORK_MODULE", "LoadReport", "LoraLinear", "LoraNetwork", "NetworkBase",
    "modelspec_metadata", "parse_network_args", "safetensors_hashes", "target_linears", "training_metadata",
]
