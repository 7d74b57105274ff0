"""The network the training loop trains: one factory for `--network_module networks.lora_framepack / loha / lokr`.

`create_network` validates everything the user gave for the network (`--network_module`, `--network_dim`,
`--network_alpha`, `--network_dropout`, `--network_args`, `--network_weights`, `--dim_from_weights`) and returns a
`TrainableNetwork` already applied to the DiT. Warnings (an argument the chosen kind ignores, keys of the weights
file that are not used) are collected once each in `network.warnings` and also passed to `warn` when given.

`--network_args` keys (values are strings, as the reference parses them):

* all kinds: `exclude_patterns`, `include_patterns` (Python lists of regexes), `rank_dropout`, `module_dropout`
  (probabilities in [0, 1)), `verbose` (`True`: `module_lines(network)` lists the modules), `conv_dim` /
  `conv_alpha` (accepted; the FramePack targets have no Conv layers, so they change nothing: warned);
* LoRA: `loraplus_lr_ratio` (> 0: `lora_up` weights at lr × ratio); LoHa/LoKr ignore it (no `lora_up`: warned);
* LoKr: `factor` (int, default -1; see `lycoris.factorization`); the other kinds ignore it (warned).

Any other key is ignored with a warning (the reference ignores it silently).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from framepack_cli.errors import FramepackError
from framepack_cli.models.lora.lycoris import LOHA_MODULE, LOKR_MODULE, LohaNetwork, LokrNetwork
from framepack_cli.models.lora.names import NETWORK_LABELS, musubi_name
from framepack_cli.models.lora.network import NETWORK_MODULE, LoadReport, LoraNetwork, few_names, read_network_file

NETWORK_MODULES = (NETWORK_MODULE, LOHA_MODULE, LOKR_MODULE)
_KIND_OF_MODULE = {NETWORK_MODULE: "lora", LOHA_MODULE: "loha", LOKR_MODULE: "lokr"}
_MODULE_OF_KIND = {v: k for k, v in _KIND_OF_MODULE.items()}
_COMMON_ARGS = ("exclude_patterns", "include_patterns", "rank_dropout", "module_dropout", "verbose", "conv_dim",
                "conv_alpha", "loraplus_lr_ratio", "factor")
WEIGHTS_FLAG = "--network_weights"


@runtime_checkable
class TrainableNetwork(Protocol):
    """What the training loop uses of a network (LoraNetwork, LohaNetwork, LokrNetwork are all this)."""

    network_module: str  # `ss_network_module`
    dim: int  # `--network_dim` as built (the file's rank with --dim_from_weights)
    alpha: float  # `--network_alpha` as built (the file's alpha with --dim_from_weights)
    loraplus_lr_ratio: float | None
    warnings: list[str]
    multiplier: float

    def trainable_parameters(self) -> Iterator[nn.Parameter]: ...
    def param_groups(self, lr: float, loraplus_lr_ratio: float | None = None) -> list[dict[str, Any]]: ...
    def max_norm_regularize(self, max_norm: float) -> tuple[int, float, float] | None: ...
    def save_weights(self, path: str | Path, *, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None, flag: str = "--output_dir") -> dict[str, str]: ...
    def load_weights(self, path: str | Path, *, flag: str = WEIGHTS_FLAG) -> LoadReport: ...
    def apply_to_model(self) -> None: ...
    def remove_from_model(self) -> None: ...
    def set_multiplier(self, multiplier: float) -> None: ...
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...
    def to(self, *args: Any, **kwargs: Any) -> Any: ...


# --------------------------------------------------------------------------------------------------
# --network_args values
# --------------------------------------------------------------------------------------------------


def _probability(args: Mapping[str, str], key: str) -> float | None:
    raw = args.get(key)
    if raw is None:
        return None
    try:
        p = float(raw)
    except ValueError:
        raise FramepackError(f"--network_args: {key}={raw} is not a number",
                             hint=f"a probability in [0, 1), e.g. {key}=0.1") from None
    if not 0 <= p < 1:
        raise FramepackError(f"--network_args: {key}={raw} is outside [0, 1)", hint=f"e.g. {key}=0.1")
    return p


def _int_arg(args: Mapping[str, str], key: str, default: int) -> int:
    raw = args.get(key)
    if raw is None:
        return default
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise FramepackError(f"--network_args: {key}={raw} is not an integer", hint=f"e.g. {key}=4 or {key}=-1")
    return value


def _positive(args: Mapping[str, str], key: str) -> float | None:
    raw = args.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise FramepackError(f"--network_args: {key}={raw} is not a positive number", hint=f"e.g. {key}=4")
    return value


# --------------------------------------------------------------------------------------------------
# The weights file
# --------------------------------------------------------------------------------------------------


def _values(values: list[float] | list[int]) -> str:
    shown = [f"{v:g}" for v in values]
    return shown[0] if len(shown) == 1 else f"{shown[0]}..{shown[-1]}"


def _check_weights(lora_file: Any, module: str, dim: int | None, dim_from_weights: bool) -> None:
    """One line saying what the `--network_weights` file is and what `module` expected, if they differ."""
    kind = _KIND_OF_MODULE[module]
    want = NETWORK_LABELS[kind]
    path, fmt = lora_file.path, lora_file.format
    if fmt == "hunyuanvideo" or fmt.endswith("-hunyuanvideo"):
        source = sorted({m.source for m in lora_file.modules.values()} or set(lora_file.unused))[0]
        raise FramepackError(
            f"{WEIGHTS_FLAG}: {path} is a HunyuanVideo {lora_file.network_label} ({fmt} layout, e.g. {source}), "
            f"expected a FramePack {want} (lora_unet_transformer_blocks_* / lora_unet_single_transformer_blocks_*) "
            f"for --network_module {module}",
            hint="framepack lora convert FILE --to musubi --output NEW writes it with FramePack module names")
    if not lora_file.modules:
        first = sorted(lora_file.unused)[0]
        raise FramepackError(f"{WEIGHTS_FLAG}: {path} has no module of the FramePack DiT ({fmt} layout, "
                             f"{len(lora_file.unused)} keys, e.g. {first}), expected a FramePack {want}")
    kinds = lora_file.networks
    if kinds != [kind]:
        label = lora_file.network_label
        other = [_MODULE_OF_KIND[k] for k in kinds if k in _MODULE_OF_KIND]
        hint = (f"use --network_module {other[0]}" if len(kinds) == 1 and other else
                "give a file of one network kind")
        raise FramepackError(f"{WEIGHTS_FLAG}: {path} is a {label} file ({len(lora_file.modules)} modules), "
                             f"expected a {want} file for --network_module {module}", hint=hint)
    if dim_from_weights:
        return
    ranks = lora_file.ranks()
    want_dim = 4 if dim is None else int(dim)
    if ranks and ranks != [want_dim]:
        alphas = lora_file.alphas()
        alpha_txt = f", alpha {_values(alphas)}" if alphas else ""
        raise FramepackError(f"{WEIGHTS_FLAG}: {path} is a {want} of rank {_values(ranks)}{alpha_txt}, "
                             f"expected rank {want_dim} (--network_dim {want_dim})",
                             hint=f"use --network_dim {ranks[-1]}, or --dim_from_weights to take the ranks and "
                                  "alphas from the file")


def _most_common(values: list[Any], default: Any) -> Any:
    values = [v for v in values if v is not None]
    return max(set(values), key=values.count) if values else default


# --------------------------------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------------------------------


def create_network(module: str, model: nn.Module, *, dim: int | None, alpha: float | None, dropout: float | None,
                   network_args: Mapping[str, str], weights: str | Path | None = None, dim_from_weights: bool = False,
                   multiplier: float = 1.0, warn: Callable[[str], None] | None = None) -> TrainableNetwork:
    """The trainable network of `--network_module module` over the DiT `model`, applied to it.

    Args:
        module: `networks.lora_framepack`, `networks.loha` or `networks.lokr`.
        model: the loaded DiT (its target Linears get the network's forward; their weights are frozen).
        dim: `--network_dim` (None -> 4). alpha: `--network_alpha` (None -> 1, 0 -> dim).
        dropout: `--network_dropout` (LoRA neuron dropout; LoHa/LoKr ignore it like the reference: warned).
        network_args: `--network_args` as a dict of strings (see the module docstring).
        weights: `--network_weights`: initial weights, a file of the same kind in any layout `read_lora` reads.
        dim_from_weights: build the modules with the ranks and alphas (LoKr: also the factors) of `weights`.
        multiplier: strength (1 in training).
        warn: called with each warning line (also collected in `network.warnings`).

    Raises:
        FramepackError: unknown module, a bad `--network_args` value, no module targeted, or a `--network_weights`
            file that is not what `module` needs (another model, another kind, another rank) — one line each.
    """
    if module not in NETWORK_MODULES:
        raise FramepackError(f"--network_module: {module!r} is not supported; use one of {', '.join(NETWORK_MODULES)}")
    if dropout is not None and not 0 <= dropout < 1:
        raise FramepackError(f"--network_dropout: {dropout:g} is outside [0, 1)", hint="e.g. --network_dropout 0.1")
    if dim is not None and dim < 1:
        raise FramepackError(f"--network_dim: {dim} is not a positive rank", hint="e.g. --network_dim 32")
    if dim_from_weights and weights is None:
        raise FramepackError("--dim_from_weights: needs --network_weights (the file whose ranks and alphas to use)")

    kind = _KIND_OF_MODULE[module]
    warnings: list[str] = []
    args = dict(network_args)
    unknown = sorted(k for k in args if k not in _COMMON_ARGS)
    if unknown:
        warnings.append(f"--network_args: {', '.join(unknown)} not known to {module}; ignored")
    if "conv_dim" in args or "conv_alpha" in args:
        warnings.append("--network_args: conv_dim/conv_alpha change nothing (the FramePack targets are Linear only)")
    if kind != "lokr" and "factor" in args:
        warnings.append(f"--network_args: factor is a LoKr argument; ignored by {module}")
    if kind != "lora" and "loraplus_lr_ratio" in args:
        warnings.append(f"--network_args: loraplus_lr_ratio has no effect on {NETWORK_LABELS[kind]} (there are no "
                        "lora_up weights); all parameters train at the learning rate")
    if kind != "lora" and dropout is not None:
        warnings.append(f"--network_dropout {dropout:g} is ignored by {module} (as by the reference); "
                        "use --network_args rank_dropout=P or module_dropout=P")
    common: dict[str, Any] = {
        "multiplier": multiplier,
        "rank_dropout": _probability(args, "rank_dropout"),
        "module_dropout": _probability(args, "module_dropout"),
        "exclude_patterns": args.get("exclude_patterns"),
        "include_patterns": args.get("include_patterns"),
    }
    loraplus = _positive(args, "loraplus_lr_ratio") if kind == "lora" else None
    factor = _int_arg(args, "factor", -1) if kind == "lokr" else -1

    lora_file = None
    if weights is not None:
        lora_file = read_network_file(weights, WEIGHTS_FLAG, model)
        _check_weights(lora_file, module, dim, dim_from_weights)

    net: Any
    if kind == "lora":
        kwargs = dict(common, dropout=dropout, loraplus_lr_ratio=loraplus)
        if dim_from_weights:
            mods = {musubi_name(p): m for p, m in lora_file.modules.items()}
            net = LoraNetwork(model, modules_dim={n: m.rank for n, m in mods.items()},
                              modules_alpha={n: m.alpha for n, m in mods.items()}, **kwargs)
        else:
            net = LoraNetwork(model, dim, 1.0 if alpha is None else alpha, **kwargs)
        net.warnings = []
    else:
        cls = LohaNetwork if kind == "loha" else LokrNetwork
        extra = {"factor": factor} if kind == "lokr" else {}
        if dim_from_weights:
            cls.check_kinds(lora_file, WEIGHTS_FLAG)
            mods = {musubi_name(p): cls.module_spec(m) for p, m in lora_file.modules.items()}
            net = cls(model, modules=mods, **extra, **common)
        else:
            net = cls(model, dim, 1.0 if alpha is None else alpha, **extra, **common)
    warnings.extend(net.warnings)

    if lora_file is not None:
        report = net.load_lora_file(lora_file, WEIGHTS_FLAG)
        if dim_from_weights:
            net.dim = int(_most_common([m.lora_dim for m in net.loras], net.dim))
            # LoKr modules with a full w2 store alpha = rank whatever --network_alpha was: not counted
            shaped = [m for m in net.loras if not getattr(m, "full", False)] or net.loras
            file_alpha = float(_most_common([float(m.alpha) for m in shaped], net.dim))
            if kind == "lora":
                net.alpha_value = file_alpha
            else:
                net.alpha = file_alpha
        if report.missing:
            warnings.append(f"{WEIGHTS_FLAG}: {lora_file.path} has no weights for {len(report.missing)} of "
                            f"{len(net.loras)} network modules (e.g. {report.missing[0]}); they start from their "
                            "initial values")
        if lora_file.unused:
            warnings.append(f"{WEIGHTS_FLAG}: {len(lora_file.unused)} keys of {lora_file.path} are not used "
                            f"(e.g. {few_names(sorted(lora_file.unused), 2)})")
    net.verbose = args.get("verbose") == "True"
    net.network_args = args
    net.warnings = warnings
    if warn is not None:
        for line in warnings:
            warn(line)
    return net


def module_lines(network: Any) -> list[str]:
    """One line per module (`verbose=True` in `--network_args`): name, rank, alpha, like the reference."""
    return [f"{m.lora_name:50} {m.lora_dim}, {float(m.alpha):g}" for m in network.loras]


__all__ = ["NETWORK_MODULES", "TrainableNetwork", "create_network", "module_lines"]
