"""Trainable LoHa and LoKr networks of the FramePack DiT (musubi's `networks.loha` / `networks.lokr`, same files).

Targets, names and patterns are those of `LoraNetwork` (`target_linears`: every Linear of the dual/single blocks,
`.*(norm).*` always excluded, include patterns rescue excluded modules). Each target keeps its frozen weight; its
forward becomes `y0 + F.linear(x, ΔW) · multiplier` with a float32 delta `ΔW` built from the module's factors.

LoHa (rank r, scale = alpha/r; alpha None/0 -> r): `ΔW = ((w1a @ w1b) ⊙ (w2a @ w2b)) · scale`, saved as
`<name>.hada_w1_a` (out, r), `.hada_w1_b` (r, in), `.hada_w2_a` (out, r), `.hada_w2_b` (r, in), `.alpha` ().
Init: w1a ~ N(0, 0.1), w1b ~ N(0, 1), w2a = 0, w2b ~ N(0, 1), so a fresh network is the identity.

LoKr (`factor` network arg, default -1 = most balanced): in = in_m·in_n, out = out_l·out_k (`factorization`);
`ΔW = kron(w1, w2) · scale` with `lokr_w1` (out_l, in_m) and, when r < max(out_k, in_n)/2, `lokr_w2_a` (out_k, r),
`lokr_w2_b` (r, in_n) (w2 = a @ b, scale alpha/r), else a full `lokr_w2` (out_k, in_n) with alpha forced to r
(scale 1). Init: w1 and w2_a Kaiming-uniform (a=√5), w2_b (or the full w2) zeros: identity again.

Both: rank dropout (`--network_args rank_dropout=p`) zeroes whole output rows of ΔW with probability p and
scales by 1/(1-p); module dropout skips the module; both in training mode only. The reference ignores neuron
dropout (`--network_dropout`) for both kinds; so does this code (the factory warns). As for LoRA, a loaded file's
alpha sets the scale (the reference keeps `--network_alpha`'s).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from framepack_cli.errors import FramepackError
from framepack_cli.models.lora.names import musubi_name
from framepack_cli.models.lora.network import LoadReport, NetworkBase, few_names, read_network_file, target_linears

LOHA_MODULE = "networks.loha"
LOKR_MODULE = "networks.lokr"


# --------------------------------------------------------------------------------------------------
# The factors
# --------------------------------------------------------------------------------------------------


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """The (smaller, larger) divisor pair LoKr splits `dimension` into, as the reference chooses it.

    `factor > 0` dividing `dimension`: (factor, dimension/factor) sorted. Otherwise the divisors m of `dimension`
    are walked upward from 1 while m < dimension/m, never past the cap `factor` (no cap when negative; 0 caps at
    1): the most balanced pair under the cap. E.g. 128 -> (8, 16), 3072 -> (48, 64), 15360 -> (120, 128);
    `factor=4`: 3072 -> (4, 768).
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    cap = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        nm = m + 1
        while dimension % nm:
            nm += 1
        if nm > cap:
            break
        m, n = nm, dimension // nm
    return (m, n) if m <= n else (n, m)


class _Hadamard(torch.autograd.Function):
    """`((w1a @ w1b) ⊙ (w2a @ w2b)) · scale`, the two products recomputed in backward instead of stored."""

    @staticmethod
    def forward(ctx, w1a, w1b, w2a, w2b, scale: float):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(w1a, w1b, w2a, w2b)
        ctx.scale = scale
        return ((w1a @ w1b) * (w2a @ w2b)) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        w1a, w1b, w2a, w2b = ctx.saved_tensors
        grad = grad * ctx.scale
        t = grad * (w2a @ w2b)
        g1a, g1b = t @ w1b.T, w1a.T @ t
        t = grad * (w1a @ w1b)
        g2a, g2b = t @ w2b.T, w2a.T @ t
        return g1a, g1b, g2a, g2b, None


# --------------------------------------------------------------------------------------------------
# One adapted Linear
# --------------------------------------------------------------------------------------------------


class DeltaLinear(nn.Module):
    """A module whose delta ΔW (out, in) is added to one `nn.Linear` (the LoHa / LoKr base).

    Subclasses create float32 parameters named like the saved keys and implement `delta()` (scale included)."""

    kind = ""

    def __init__(self, path: str, org: nn.Linear, dim: int, multiplier: float = 1.0,
                 rank_dropout: float | None = None, module_dropout: float | None = None) -> None:
        super().__init__()
        self.path = path
        self.lora_name = musubi_name(path)
        self.lora_dim = int(dim)
        self.multiplier = multiplier
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self._org = [org]  # a list, so the Linear is no submodule (not in the state dict)
        self._org_forward = None
        self.register_buffer("alpha", torch.zeros((), dtype=torch.float32, device=self._device))
        self.scale = 1.0

    @property
    def _device(self) -> torch.device | None:
        w = self._org[0].weight
        return w.device if w.device.type != "meta" else None

    def _param(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape, dtype=torch.float32, device=self._device))

    @property
    def org_module(self) -> nn.Linear:
        return self._org[0]

    def set_alpha(self, alpha: float | None) -> None:
        """Set alpha (None/0 -> rank) and the scale alpha/rank."""
        alpha = float(self.lora_dim if alpha is None or alpha == 0 else alpha)
        with torch.no_grad():
            self.alpha.fill_(alpha)
        self.scale = alpha / self.lora_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.set_alpha(float(self.alpha))

    def attach(self) -> None:
        org = self.org_module
        org.weight.requires_grad_(False)
        if org.bias is not None:
            org.bias.requires_grad_(False)
        self._org_forward = org.forward
        org.forward = self.forward

    def detach(self) -> None:
        if self._org_forward is not None:
            del self.org_module.forward  # the instance attribute; the class method is visible again
            self._org_forward = None

    def delta(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self._org_forward(x)
        if self.module_dropout is not None and self.training and torch.rand(1) < self.module_dropout:
            return y0
        dw = self.delta()
        mult = self.multiplier
        if self.rank_dropout is not None and self.training:
            keep = (torch.rand(dw.size(0), device=dw.device) > self.rank_dropout).to(dw.dtype)
            dw = dw * keep.view(-1, 1)
            mult = mult / (1.0 - self.rank_dropout)
        autocast = x.is_floating_point() and torch.is_autocast_enabled(x.device.type)
        h = x.to(dw.dtype) if x.is_floating_point() and x.dtype != dw.dtype and not autocast else x
        y = y0 + F.linear(h, dw) * mult
        return y.to(y0.dtype) if y.dtype != y0.dtype and y0.is_floating_point() else y


class LohaLinear(DeltaLinear):
    """LoHa of one Linear: parameters `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (see the module doc)."""

    kind = "loha"

    def __init__(self, path: str, org: nn.Linear, dim: int, alpha: float | None, multiplier: float = 1.0,
                 rank_dropout: float | None = None, module_dropout: float | None = None) -> None:
        super().__init__(path, org, dim, multiplier, rank_dropout, module_dropout)
        out_dim, in_dim, r = org.out_features, org.in_features, self.lora_dim
        self.hada_w1_a = self._param(out_dim, r)
        self.hada_w1_b = self._param(r, in_dim)
        self.hada_w2_a = self._param(out_dim, r)
        self.hada_w2_b = self._param(r, in_dim)
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.zeros_(self.hada_w2_a)
        nn.init.normal_(self.hada_w2_b, std=1.0)
        self.set_alpha(alpha)

    def delta(self) -> torch.Tensor:
        return _Hadamard.apply(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale)


class LokrLinear(DeltaLinear):
    """LoKr of one Linear: `lokr_w1` and `lokr_w2_a`/`lokr_w2_b` (low rank) or a full `lokr_w2`.

    Args:
        factor: the `factor` network arg (see `factorization`).
        factors: ((out_l, in_m), (out_k, in_n)) to use instead of `factorization` (a network built from a file).
        full: full w2 instead of `dim < max(out_k, in_n)/2` (a network built from a file).
    """

    kind = "lokr"

    def __init__(self, path: str, org: nn.Linear, dim: int, alpha: float | None, multiplier: float = 1.0,
                 rank_dropout: float | None = None, module_dropout: float | None = None, *, factor: int = -1,
                 factors: tuple[tuple[int, int], tuple[int, int]] | None = None, full: bool | None = None) -> None:
        super().__init__(path, org, dim, multiplier, rank_dropout, module_dropout)
        if factors is None:
            in_m, in_n = factorization(org.in_features, factor)
            out_l, out_k = factorization(org.out_features, factor)
        else:
            (out_l, in_m), (out_k, in_n) = factors
        self.factors = ((out_l, in_m), (out_k, in_n))
        self.full = self.lora_dim >= max(out_k, in_n) / 2 if full is None else bool(full)
        self.lokr_w1 = self._param(out_l, in_m)
        if self.full:
            self.lokr_w2 = self._param(out_k, in_n)
        else:
            self.lokr_w2_a = self._param(out_k, self.lora_dim)
            self.lokr_w2_b = self._param(self.lora_dim, in_n)
        nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
        if self.full:
            nn.init.zeros_(self.lokr_w2)
        else:
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
            nn.init.zeros_(self.lokr_w2_b)
        # A fresh full-w2 module stores alpha = rank (the reference forces it); its scale is 1 whatever alpha says.
        self.set_alpha(self.lora_dim if self.full else alpha)

    def set_alpha(self, alpha: float | None) -> None:
        super().set_alpha(alpha)
        if self.full:
            self.scale = 1.0

    def delta(self) -> torch.Tensor:
        w2 = self.lokr_w2 if self.full else self.lokr_w2_a @ self.lokr_w2_b
        dw = torch.kron(self.lokr_w1, w2.contiguous())
        return dw * self.scale if self.scale != 1 else dw


# --------------------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------------------


class LycorisNetwork(NetworkBase):
    """A LoHa or LoKr network over a loaded `FramePackTransformer` (base of `LohaNetwork` / `LokrNetwork`).

    Args:
        model: the DiT.
        dim: rank of every module (None -> 4).
        alpha: alpha of every module (None -> 1; 0 -> dim).
        multiplier: strength (1 in training).
        rank_dropout / module_dropout: `--network_args` probabilities (training mode only).
        exclude_patterns / include_patterns: as `LoraNetwork`.
        modules: per-module keyword arguments of the module class by musubi name (`dim`, `alpha`, ...; a network
            built from weights): only the listed modules are created.
        apply: attach to the model right away.
        **module_kwargs: passed to every module (LoKr: `factor`).

    Raises:
        FramepackError: a bad pattern, or no module targeted.
    """

    module_class: type[DeltaLinear] = DeltaLinear
    label = ""

    def __init__(self, model: nn.Module, dim: int | None = 4, alpha: float | None = 1.0, *,
                 multiplier: float = 1.0, rank_dropout: float | None = None, module_dropout: float | None = None,
                 exclude_patterns: str | Sequence[str] | None = (), include_patterns: str | Sequence[str] | None = (),
                 modules: Mapping[str, Mapping[str, Any]] | None = None, apply: bool = True,
                 **module_kwargs: Any) -> None:
        super().__init__()
        self.dim = 4 if dim is None else int(dim)
        self.alpha = 1.0 if alpha is None else float(alpha)
        self.multiplier = multiplier
        self.dropout = None
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.loraplus_lr_ratio = None
        self.warnings: list[str] = []
        self.loras: list[DeltaLinear] = []
        for path, linear in target_linears(model, exclude_patterns, include_patterns):
            name = musubi_name(path)
            if modules is not None:
                if name not in modules:
                    continue
                kwargs = dict(module_kwargs, **modules[name])
            else:
                kwargs = dict(module_kwargs, dim=self.dim, alpha=self.alpha)
            if not kwargs["dim"]:
                continue
            mod = self.module_class(path, linear, multiplier=multiplier, rank_dropout=rank_dropout,
                                    module_dropout=module_dropout, **kwargs)
            self.add_module(mod.lora_name, mod)
            self.loras.append(mod)
        if not self.loras:
            raise FramepackError("--network_args: the include/exclude patterns leave no module to train",
                                 hint="loosen exclude_patterns or add include_patterns")
        self._model = [model]
        self.applied = False
        if apply:
            self.apply_to_model()

    # ---- construction from weights ----------------------------------------------------------------

    @classmethod
    def module_spec(cls, mod: Any) -> dict[str, Any]:
        """Keyword arguments of the module class reproducing a file module (`LoraModule`) exactly."""
        raise NotImplementedError

    @classmethod
    def from_weights(cls, model: nn.Module, path: str | Path, *, multiplier: float = 1.0,
                     flag: str = "--network_weights", **kwargs: Any) -> LycorisNetwork:
        """A network with the ranks, alphas (and LoKr factors) of a file (`--dim_from_weights`), weights loaded.

        Raises:
            FramepackError: a module of another kind, or one this code cannot train (LoKr with a decomposed w1).
        """
        lora_file = read_network_file(path, flag, model)
        cls.check_kinds(lora_file, flag)
        modules = {musubi_name(p): cls.module_spec(m) for p, m in lora_file.modules.items()}
        net = cls(model, multiplier=multiplier, modules=modules, **kwargs)
        net.load_lora_file(lora_file, flag)
        return net

    # ---- loading ------------------------------------------------------------------------------------

    @classmethod
    def check_kinds(cls, lora_file: Any, flag: str) -> None:
        kind = cls.module_class.kind
        bad = sorted(f"{musubi_name(p)} ({m.kind})" for p, m in lora_file.modules.items() if m.kind != kind)
        if bad:
            raise FramepackError(f"{flag}: {lora_file.path}: only {cls.label} modules can be trained by this network, "
                                 f"not {few_names(bad)}")
        w1_split = sorted(musubi_name(p) for p, m in lora_file.modules.items() if "lokr_w1_a" in m.tensors)
        if w1_split:
            raise FramepackError(f"{flag}: {lora_file.path}: LoKr modules with a low-rank w1 (lokr_w1_a/lokr_w1_b) "
                                 f"cannot be trained (musubi's LoKr has a full lokr_w1): {few_names(w1_split)}")

    def load_weights(self, path: str | Path, *, flag: str = "--network_weights") -> LoadReport:
        """Load initial weights from a file of this kind in any layout `read_lora` reads. Every module of the
        file must be a module of this network with the same tensors and shapes; network modules the file lacks
        keep their initial values (reported in `missing`). The file's alpha sets each module's scale.

        Raises:
            FramepackError: a module the network does not have, another kind, or a shape mismatch (names them).
        """
        return self.load_lora_file(read_network_file(path, flag, self._model[0]), flag)

    def load_lora_file(self, lora_file: Any, flag: str) -> LoadReport:
        self.check_kinds(lora_file, flag)
        by_path = {m.path: m for m in self.loras}
        unknown, bad_shape = [], []
        for p, fmod in sorted(lora_file.modules.items()):
            mod = by_path.get(p)
            if mod is None:
                unknown.append(musubi_name(p))
                continue
            want = {n: list(t.shape) for n, t in mod.named_parameters(recurse=False)}
            got = {n: list(t.shape) for n, t in fmod.tensors.items()}
            if want != got:
                bad_shape.append(f"{musubi_name(p)} {_shapes(got)}, network {_shapes(want)}")
        shown = lora_file.path
        if unknown:
            raise FramepackError(f"{flag}: {shown}: {len(unknown)} module(s) are not in this network: "
                                 f"{few_names(unknown)}",
                                 hint="check --network_args include/exclude patterns and the DiT")
        if bad_shape:
            raise FramepackError(f"{flag}: {shown}: shapes do not match for {len(bad_shape)} module(s): "
                                 f"{few_names(bad_shape)}", hint=self._shape_hint())
        report = LoadReport(Path(shown), format=lora_file.format)
        with torch.no_grad():
            for mod in self.loras:
                fmod = lora_file.modules.get(mod.path)
                if fmod is None:
                    report.missing.append(mod.lora_name)
                    continue
                for name, param in mod.named_parameters(recurse=False):
                    param.copy_(fmod.tensors[name].to(torch.float32))
                mod.set_alpha(fmod.alpha)
                report.loaded.append(mod.lora_name)
        return report

    def _shape_hint(self) -> str:
        return "use the file's rank as --network_dim (or --dim_from_weights)"

    # ---- training helpers ---------------------------------------------------------------------------

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for mod in self.loras:
            yield from mod.parameters()

    def param_groups(self, lr: float, loraplus_lr_ratio: float | None = None) -> list[dict[str, Any]]:
        """One group of every parameter at `lr` (none if lr is 0). LoRA+ does not apply (there is no `lora_up`):
        `loraplus_lr_ratio` is ignored, as by the reference (the factory warns)."""
        self.requires_grad_(True)
        return [{"params": list(self.trainable_parameters()), "lr": lr}] if lr else []

    def max_norm_regularize(self, max_norm: float) -> None:
        """`--scale_weight_norms` is LoRA-only (the reference warns and does nothing): returns None."""
        return None


def _shapes(shapes: Mapping[str, list[int]]) -> str:
    return " ".join(f"{k}{v}" for k, v in sorted(shapes.items()))


class LohaNetwork(LycorisNetwork):
    """musubi's `networks.loha` for the FramePack DiT (see the module docstring)."""

    network_module = LOHA_MODULE
    module_class = LohaLinear
    label = "LoHa"

    @classmethod
    def module_spec(cls, mod: Any) -> dict[str, Any]:
        return {"dim": int(mod.tensors["hada_w1_b"].shape[0]), "alpha": mod.alpha}


class LokrNetwork(LycorisNetwork):
    """musubi's `networks.lokr` for the FramePack DiT (see the module docstring); `factor` as a keyword."""

    network_module = LOKR_MODULE
    module_class = LokrLinear
    label = "LoKr"

    def __init__(self, model: nn.Module, dim: int | None = 4, alpha: float | None = 1.0, *, factor: int = -1,
                 **kwargs: Any) -> None:
        super().__init__(model, dim, alpha, factor=factor, **kwargs)
        self.factor = factor
        full = [m for m in self.loras if m.full]
        if full and kwargs.get("modules") is None:
            m = full[0]
            self.warnings.append(
                f"LoKr: --network_dim {self.dim} is not below half of the larger w2 side for {len(full)} of "
                f"{len(self.loras)} modules (e.g. {m.path}: w2 {m.factors[1][0]}x{m.factors[1][1]}, factor "
                f"{factor}); they train a full w2 matrix with scale 1")

    @classmethod
    def module_spec(cls, mod: Any) -> dict[str, Any]:
        t = mod.tensors
        full = "lokr_w2" in t
        w2 = t["lokr_w2"].shape if full else (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
        factors = ((int(t["lokr_w1"].shape[0]), int(t["lokr_w1"].shape[1])), (int(w2[0]), int(w2[1])))
        if full:
            # A full w2 was chosen because rank >= max(w2)/2, and the reference stored that rank as alpha.
            alpha = mod.alpha
            rank_as_alpha = alpha is not None and float(alpha).is_integer() and alpha >= max(w2) / 2
            dim = int(alpha) if rank_as_alpha else max(int(s) for s in w2)
        else:
            dim = int(t["lokr_w2_a"].shape[1])
        return {"dim": dim, "alpha": mod.alpha, "factors": factors, "full": full}

    def _shape_hint(self) -> str:
        return ("use the file's rank as --network_dim and its factor as --network_args factor=N "
                "(or --dim_from_weights)")


__all__ = ["LOHA_MODULE", "LOKR_MODULE", "DeltaLinear", "LohaLinear", "LohaNetwork", "LokrLinear", "LokrNetwork",
           "LycorisNetwork", "factorization"]
