"""Optimizer and learning-rate schedule of `framepack train` (musubi's `--optimizer_type`, `--lr_scheduler`).

Optimizers (`make_optimizer`), as the reference trainer picks them, with these differences:

- `--optimizer_type` AdamW (the default; an empty value means AdamW too, where the reference crashes),
  AdamW8bit, Adafactor: matched case-insensitively, as the reference.
- Any `*8bit` name (and any `bitsandbytes.` path) needs bitsandbytes (the optional extra `framepack[bnb]`) and a
  CUDA device. Missing on CUDA: one line, exit 2. Without CUDA (8-bit optimizers need a GPU), with or without
  bitsandbytes: one warning and the torch optimizer of the same family (AdamW for AdamW8bit) instead.
- Short names of optional packages: Lion (lion_pytorch.Lion), Prodigy (prodigyopt.Prodigy), AdamWScheduleFree,
  SGDScheduleFree, RAdamScheduleFree (schedulefree.*); a missing package is one line naming its pip package.
- Adafactor (transformers): `relative_step` defaults to True; then it schedules its own learning rate: the
  optimizer gets lr=None, `--learning_rate` is the initial lr of the `adafactor:<lr>` schedule (its
  `ss_learning_rate` is None and `ss_lr_scheduler` is `adafactor:<lr>`, as the reference records), and
  warmup must be 0. With `relative_step=False` the reference's advice (warnings) is given.
- Any other name without a dot is a torch.optim class (case-sensitive as the reference; a case mismatch is
  answered with the right spelling); `module.Class` is imported. Bad `--optimizer_args` for that class are one
  line naming the argument and the class.

Schedulers (`make_scheduler`): every `--lr_scheduler` value (transformers' schedule family with warmup,
cycles, power, min lr ratio; `warmup_stable_decay`; `piecewise_constant` from diffusers; `rex`, our RexLR;
`adafactor`), or a custom `--lr_scheduler_type` class with `--lr_scheduler_args`. Warmup and decay ratios are
resolved against `total_steps * num_processes` (accelerate steps the scheduler once per process). Schedule-free
optimizers get a no-op schedule whose `get_last_lr` is the groups' lr. Every schedule has `step()`,
`get_last_lr()` and a `state_dict()` / `load_state_dict()` that round-trips (resume).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from framepack_cli.errors import FramepackError
from framepack_cli.options.train import TrainOptions

# short name (lower case) -> (module, class): optional packages the reference reaches by their full path
SHORT_NAMES: dict[str, tuple[str, str]] = {
    "lion": ("lion_pytorch", "Lion"),
    "prodigy": ("prodigyopt", "Prodigy"),
    "adamwschedulefree": ("schedulefree", "AdamWScheduleFree"),
    "sgdschedulefree": ("schedulefree", "SGDScheduleFree"),
    "radamschedulefree": ("schedulefree", "RAdamScheduleFree"),
}
# top-level module -> pip package (for the "needs ...: pip install ..." line)
PIP_PACKAGES = {
    "bitsandbytes": "bitsandbytes",
    "lion_pytorch": "lion-pytorch",
    "prodigyopt": "prodigyopt",
    "schedulefree": "schedulefree",
}
KNOWN_NAMES = ("AdamW", "AdamW8bit", "Adafactor", "Lion", "Prodigy", "AdamWScheduleFree", "SGDScheduleFree",
               "RAdamScheduleFree")
# what sets each schedule argument we pass ourselves (a --lr_scheduler_args key colliding with one is refused)
_SET_BY = {
    "num_warmup_steps": "--lr_warmup_steps",
    "num_training_steps": "--max_train_steps",
    "num_steps": "--max_train_steps",
    "num_stable_steps": "--lr_warmup_steps and --lr_decay_steps",
    "num_decay_steps": "--lr_decay_steps",
    "num_cycles": "--lr_scheduler_num_cycles",
    "power": "--lr_scheduler_power",
    "timescale": "--lr_scheduler_timescale",
    "min_lr_rate": "--lr_scheduler_min_lr_ratio",
    "min_lr_ratio": "--lr_scheduler_min_lr_ratio",
    "min_lr": "--lr_scheduler_min_lr_ratio",
    "max_lr": "--learning_rate",
}
DEFAULT_REX_MIN_LR_RATIO = 0.01


# --------------------------------------------------------------------------------------------------------------
# optimizer


@dataclass
class OptimizerChoice:
    """The optimizer of a run and what the loop, the logs and the metadata need to know about it."""

    optimizer: torch.optim.Optimizer
    description: str  # ss_optimizer: "<module>.<Class>" + "(k=v,...)" when there are arguments
    schedule_free: bool  # the schedule is a no-op; call optimizer_train/optimizer_eval around training
    lr_for_logs: Callable[[], list[float]]  # per group lr (d*lr for Prodigy / D-Adaptation)
    adafactor_initial_lr: float | None = None  # set when Adafactor schedules itself (relative_step=True)

    @property
    def metadata_learning_rate(self) -> float | None:
        """`ss_learning_rate`: None when Adafactor schedules itself (the reference sets it to None), else the lr."""
        return None if self.adafactor_initial_lr is not None else self.optimizer.defaults.get("lr")


def scheduler_name(opts: TrainOptions, choice: OptimizerChoice) -> str:
    """`ss_lr_scheduler`: `adafactor:<lr>` when Adafactor schedules itself, else `--lr_scheduler` (as the
    reference records it, also when `--lr_scheduler_type` replaces it)."""
    if choice.adafactor_initial_lr is not None:
        return f"adafactor:{choice.adafactor_initial_lr}"
    return opts.lr_scheduler


def _optimizer_classes(module: Any) -> list[str]:
    return sorted(
        n for n, v in vars(module).items()
        if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer
    )


def _same_name_ignoring_case(name: str, candidates: list[str]) -> str | None:
    return next((c for c in candidates if c.lower() == name.lower()), None)


def _import_attr(spec: str, flag: str) -> tuple[Any, str]:
    """`module.Name` -> (the object, "module.Name"); one line naming `flag` for anything that goes wrong."""
    module_name, _, name = spec.rpartition(".")
    root = module_name.split(".")[0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == module_name or module_name.startswith(missing + ".") or not missing:
            pip = PIP_PACKAGES.get(root)
            if pip is not None:
                raise FramepackError(f"{flag} needs {pip}: pip install {pip}") from None
            raise FramepackError(f"{flag}: no module named {missing or module_name!r} (install the package that "
                                 "provides it, or check the spelling)") from None
        raise FramepackError(f"{flag}: importing {module_name} failed: {e}") from None
    except Exception as e:  # a broken third-party package: its own error, in one line
        raise FramepackError(f"{flag}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, name):
        public = [n for n in dir(module) if not n.startswith("_")]
        near = _same_name_ignoring_case(name, public) or next(iter(difflib.get_close_matches(name, public, 1)), None)
        hint = f"; did you mean {module_name}.{near}?" if near else ""
        raise FramepackError(f"{flag}: module {module_name} has no {name!r}{hint}")
    return getattr(module, name), spec


def _check_optimizer_class(obj: Any, path: str, flag: str) -> type[torch.optim.Optimizer]:
    if not isinstance(obj, type):
        raise FramepackError(f"{flag}: {path} is not a class (it is a {type(obj).__name__})")
    if not issubclass(obj, torch.optim.Optimizer) or obj is torch.optim.Optimizer:
        raise FramepackError(f"{flag}: {path} is not an optimizer (not a torch.optim.Optimizer subclass)")
    return obj


def _torch_optimizer(name: str, flag: str) -> type[torch.optim.Optimizer]:
    names = _optimizer_classes(torch.optim)
    if name in names:
        return getattr(torch.optim, name)
    same = _same_name_ignoring_case(name, names)
    if same is not None:
        raise FramepackError(f"{flag}: torch.optim class names are case-sensitive; did you mean {same}?")
    near = difflib.get_close_matches(name, [*KNOWN_NAMES, *names], 1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise FramepackError(
        f"{flag}: not a known optimizer; {hint}Choose {', '.join(KNOWN_NAMES)}, a torch.optim class "
        f"({', '.join(names)}) or a module path like prodigyopt.Prodigy"
    )


def _params_of(cls: Any, skip: int = 1) -> tuple[list[str], list[str], bool] | None:
    """(accepted keyword names, required names, takes **kwargs) of a class/function after its first `skip`
    positional parameters (the params / the optimizer), or None when it has no readable signature."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skipped = {p.name for p in positional[:skip]}
    rest = [p for p in params if p.name not in skipped]
    names = [p.name for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.default is inspect.Parameter.empty]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in rest)
    return names, required, var_kw


def _unknown_kwargs(cls: Any, kwargs: dict[str, Any], flag: str, label: str, taken: tuple[str, ...] = ()) -> None:
    info = _params_of(cls)
    if info is None or info[2]:
        return
    names, _, _ = info
    bad = [k for k in kwargs if k not in names]
    if bad:
        free = [n for n in names if n not in taken]
        what = "argument" if len(bad) == 1 else "arguments"
        raise FramepackError(f"{flag}: {label} takes no {what} {', '.join(repr(b) for b in bad)} "
                             f"(it takes: {', '.join(free) or 'nothing'})")


def _args_text(kwargs: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


def _adafactor(opts: TrainOptions, kwargs: dict[str, Any], warn: Callable[[str], None]) -> tuple[Any, float | None]:
    """(the class, the initial lr of its own schedule or None) for `--optimizer_type Adafactor`."""
    from transformers.optimization import Adafactor

    kwargs.setdefault("relative_step", True)  # the reference's default (recorded in ss_optimizer)
    if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
        warn("--optimizer_args: Adafactor's warmup_init=True needs relative_step=True; using relative_step=True")
        kwargs["relative_step"] = True
    lr = opts.learning_rate
    if kwargs["relative_step"]:
        redo = "pass --optimizer_args relative_step=False to schedule it yourself"
        if opts.lr_scheduler_type:
            raise FramepackError(f"--lr_scheduler_type {opts.lr_scheduler_type}: Adafactor with relative_step=True "
                                 f"schedules its own learning rate; {redo}")
        if opts.lr_warmup:
            raise FramepackError(f"--lr_warmup_steps {opts.lr_warmup_steps}: Adafactor with relative_step=True "
                                 f"schedules its own learning rate and takes no warmup; set --lr_warmup_steps 0 or "
                                 f"{redo}")
        replaced = "" if opts.lr_scheduler in ("constant", "adafactor") else \
            f", and --lr_scheduler {opts.lr_scheduler} is replaced by its schedule"
        warn(f"--optimizer_type {opts.optimizer_type}: Adafactor with relative_step=True schedules its own learning "
             f"rate: --learning_rate {lr} is only its initial value{replaced} ({redo})")
        return Adafactor, lr
    if opts.lr_scheduler == "adafactor":
        raise FramepackError("--lr_scheduler adafactor needs Adafactor's relative_step=True (its default); drop "
                             "relative_step=False from --optimizer_args or choose another --lr_scheduler")
    if opts.max_grad_norm != 0:
        warn(f"Adafactor: --max_grad_norm {opts.max_grad_norm} clips gradients on top of Adafactor's own update "
             "clipping; --max_grad_norm 0 may be better")
    if opts.lr_scheduler != "constant_with_warmup":
        warn(f"Adafactor: --lr_scheduler constant_with_warmup may be better (got {opts.lr_scheduler})")
    if kwargs.get("clip_threshold", 1.0) != 1.0:
        warn(f"Adafactor: clip_threshold=1.0 may be better (got --optimizer_args clip_threshold="
             f"{kwargs['clip_threshold']})")
    return Adafactor, None


def _needs_bitsandbytes(name: str) -> bool:
    return name.lower().endswith("8bit") or name.split(".")[0] == "bitsandbytes"


def _torch_counterpart(name: str) -> type[torch.optim.Optimizer]:
    """The torch optimizer of an 8-bit optimizer's family (Adam8bit -> Adam, PagedAdamW8bit -> AdamW), else AdamW."""
    base = name.rsplit(".", 1)[-1]
    if base.lower().endswith("8bit"):
        base = base[: -len("8bit")]
    if base.lower().startswith("paged"):
        base = base[len("paged"):]
    same = _same_name_ignoring_case(base, _optimizer_classes(torch.optim))
    return getattr(torch.optim, same) if same else torch.optim.AdamW


def _bitsandbytes_class(
    given: str, kwargs: dict[str, Any], device: torch.device, warn: Callable[[str], None]
) -> tuple[Any, str, dict[str, Any]]:
    flag = f"--optimizer_type {given}"
    if device.type != "cuda":
        cls = _torch_counterpart(given)
        info = _params_of(cls)
        dropped = [k for k in kwargs if info is not None and not info[2] and k not in info[0]]
        kept = {k: v for k, v in kwargs.items() if k not in dropped}
        note = f"; ignoring its bitsandbytes-only --optimizer_args {', '.join(dropped)}" if dropped else ""
        warn(f"{flag}: 8-bit optimizers need a CUDA GPU (training on {device.type}); using "
             f"torch.optim.{cls.__name__} instead{note}")
        return cls, f"torch.optim.{cls.__name__}", kept
    if "." in given:
        obj, path = _import_attr(given, flag)
        return obj, path, kwargs
    try:
        bnb_optim = importlib.import_module("bitsandbytes.optim")
    except ModuleNotFoundError as e:
        if e.name in (None, "bitsandbytes", "bitsandbytes.optim"):
            raise FramepackError(f"{flag} needs bitsandbytes: pip install bitsandbytes") from None
        raise FramepackError(f"{flag}: importing bitsandbytes failed: {e}") from None
    except Exception as e:
        raise FramepackError(f"{flag}: importing bitsandbytes failed: {type(e).__name__}: {e}") from None
    names = [n for n in dir(bnb_optim) if not n.startswith("_")]
    same = given if given in names else _same_name_ignoring_case(given, names)
    if same is None:
        eight = [n for n in names if n.lower().endswith("8bit")]
        raise FramepackError(f"{flag}: bitsandbytes.optim has no {given!r} (it has {', '.join(eight)})")
    return getattr(bnb_optim, same), f"bitsandbytes.optim.{same}", kwargs


def _group_lr_fn(optimizer: torch.optim.Optimizer, adafactor_initial_lr: float | None) -> Callable[[], list[float]]:
    def lrs() -> list[float]:
        out: list[float] = []
        for group in optimizer.param_groups:
            lr = group.get("lr")
            if adafactor_initial_lr is not None:  # what Adafactor actually uses (AdafactorSchedule's lr)
                state = optimizer.state.get(group["params"][0], {})
                lr = optimizer._get_lr(group, state) if "step" in state else adafactor_initial_lr
            if "d" in group and lr is not None:  # Prodigy / D-Adaptation: the effective lr is d*lr
                lr = group["d"] * lr
            out.append(float(lr) if lr is not None else 0.0)
        return out

    return lrs


def make_optimizer(
    opts: TrainOptions, param_groups: list[dict], *, device: torch.device, warn: Callable[[str], None]
) -> OptimizerChoice:
    """The optimizer `--optimizer_type` / `--optimizer_args` / `--learning_rate` ask for, over `param_groups`
    (the network's groups, each with its own "lr"); see the module doc.

    Raises:
        FramepackError: one line naming the flag: unknown optimizer, missing package, bad argument (exit 2).
    """
    param_groups = [  # lists, so a generator of parameters is not used up by the check below
        {**g, "params": [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])}
        for g in param_groups
    ]
    if not any(g["params"] for g in param_groups):
        raise ValueError("make_optimizer: no parameters to train")
    given = opts.optimizer_type.strip() or "AdamW"
    low = given.lower()
    flag = f"--optimizer_type {given}"
    kwargs = dict(opts.optimizer_kwargs)
    lr: float | None = opts.learning_rate
    adafactor_initial_lr = None
    if low == "adamw":
        cls, path = torch.optim.AdamW, "torch.optim.AdamW"
    elif low == "adafactor":
        cls, adafactor_initial_lr = _adafactor(opts, kwargs, warn)
        path = "transformers.optimization.Adafactor"
        if adafactor_initial_lr is not None:
            lr = None
    elif _needs_bitsandbytes(given):
        cls, path, kwargs = _bitsandbytes_class(given, kwargs, device, warn)
    elif low in SHORT_NAMES:
        module_name, class_name = SHORT_NAMES[low]
        obj, path = _import_attr(f"{module_name}.{class_name}", flag)
        cls = obj
    elif "." in given:
        cls, path = _import_attr(given, flag)
    else:
        cls, path = _torch_optimizer(given, flag), f"torch.optim.{given}"
    cls = _check_optimizer_class(cls, path, flag)

    for reserved, source in (("params", "the network's parameters"), ("lr", "--learning_rate")):
        if reserved in kwargs:
            raise FramepackError(f"--optimizer_args: {reserved} cannot be given here; it is set by {source}")
    _unknown_kwargs(cls, kwargs, "--optimizer_args", cls.__name__, taken=("lr",))
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        if kwargs:
            raise FramepackError(f"--optimizer_args: {cls.__name__} refused {_args_text(kwargs)}: {e}") from None
        raise FramepackError(f"{flag}: cannot create {cls.__name__}: {e}") from None

    description = f"{cls.__module__}.{cls.__name__}" + (f"({_args_text(kwargs)})" if kwargs else "")
    schedule_free = low.endswith("schedulefree") or cls.__name__.lower().endswith("schedulefree")
    return OptimizerChoice(
        optimizer=optimizer,
        description=description,
        schedule_free=schedule_free,
        lr_for_logs=_group_lr_fn(optimizer, adafactor_initial_lr),
        adafactor_initial_lr=adafactor_initial_lr,
    )


def optimizer_train(choice: OptimizerChoice) -> None:
    """Put a schedule-free optimizer into training mode (before training steps); a no-op for the others."""
    fn = getattr(choice.optimizer, "train", None)
    if callable(fn):
        fn()


def optimizer_eval(choice: OptimizerChoice) -> None:
    """Put a schedule-free optimizer into evaluation mode (before sampling or saving); a no-op for the others."""
    fn = getattr(choice.optimizer, "eval", None)
    if callable(fn):
        fn()


def lr_logs(choice: OptimizerChoice, scheduler: Any, descriptions: list[str] | None = None) -> dict[str, float]:
    """The reference's `lr/<desc>` log values (the schedule's lr per group) plus `lr/d*lr/<desc>` for groups with a
    `d` (Prodigy, D-Adaptation). Groups are named by `descriptions` (the network's: `unet`, `unet plus`), else
    `unet` for one group and `group<i>` for several (the reference would name two groups `unet` both)."""
    lrs = scheduler.get_last_lr()
    logs: dict[str, float] = {}
    for i, lr in enumerate(lrs):
        desc = descriptions[i] if descriptions else ("unet" if len(lrs) == 1 else f"group{i}")
        logs[f"lr/{desc}"] = float(lr)
        group = choice.optimizer.param_groups[i]
        if "d" in group:
            logs[f"lr/d*lr/{desc}"] = float(group["d"] * group["lr"])
            if "effective_lr" in group:
                logs[f"lr/d*eff_lr/{desc}"] = float(group["d"] * group["effective_lr"])
    return logs


# --------------------------------------------------------------------------------------------------------------
# schedulers


class ConstantScheduler:
    """The schedule of a schedule-free optimizer: `step()` does nothing, `get_last_lr()` is the groups' lr."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class RexLR(torch.optim.lr_scheduler.LRScheduler):
    """Reflected exponential (REX) schedule (Chen et al., 2021, arXiv:2107.04197), with the reference's warmup.

    With k = the step counter (`last_epoch`), W = `num_warmup_steps`, N = `num_steps`:
    - warmup (0 <= k < W; k = 1 too when W = 1): `min_lr` at k <= 1, then linear towards `max_lr`:
      min + (max-min)*(k-1)/(W-1);
    - then a = k - W, R = N - W: `min_lr` when a >= R or R <= 0; else z = (R - a mod R)/R and
      lr = base_lr * (min/max + (1 - min/max) * z / (rex_alpha + rex_beta*z)).

    As the reference, except at k = 0 with W > 1, where the reference's formula gives an accidental
    base_lr * factor(z = W/R) (about half of max_lr for W = 10, N = 100) before its warmup starts at min_lr;
    here warmup starts at min_lr. `initial_lr` is set on every group, so a resumed schedule can be rebuilt.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        min_lr: float = 0.0,
        num_steps: int = 0,
        num_warmup_steps: int = 0,
        rex_alpha: float = 0.1,
        rex_beta: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        if min_lr > max_lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed max_lr ({max_lr})")
        if num_warmup_steps > num_steps:
            raise ValueError(f"num_warmup_steps ({num_warmup_steps}) must not exceed num_steps ({num_steps})")
        self.max_lr, self.min_lr = float(max_lr), float(min_lr)
        self.num_steps, self.num_warmup_steps = int(num_steps), int(num_warmup_steps)
        self.rex_alpha, self.rex_beta = float(rex_alpha), float(rex_beta)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch)

    def lr_at(self, k: int, base_lr: float) -> float:
        w, n = self.num_warmup_steps, self.num_steps
        if 0 <= k < w or (w == 1 and k == 1):
            if k <= 1:
                return self.min_lr
            return self.min_lr + (self.max_lr - self.min_lr) * (k - 1) / (w - 1)
        a, r = k - w, n - w
        if a >= r or a == -1 or r <= 0:
            return self.min_lr
        z = (r - a % r) / r
        ratio = self.min_lr / self.max_lr if self.max_lr else 0.0
        return base_lr * (ratio + (1.0 - ratio) * z / (self.rex_alpha + self.rex_beta * z))

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]


def _steps(value: int | float, total: int) -> int:
    """A step count, or a ratio (float) of `total` truncated to int, as the reference."""
    return int(value * total) if isinstance(value, float) else int(value)


def _call_schedule(
    fn: Callable[..., Any], optimizer: torch.optim.Optimizer, fixed: dict[str, Any], user: dict[str, Any], label: str
) -> Any:
    for key in user:
        if key in fixed:
            raise FramepackError(f"--lr_scheduler_args: {key} cannot be given here; it is set by "
                                 f"{_SET_BY.get(key, 'framepack')}")
    _unknown_kwargs(fn, user, "--lr_scheduler_args", f"the {label} schedule", taken=tuple(fixed))
    try:
        return fn(optimizer, **fixed, **user)
    except (TypeError, ValueError, KeyError) as e:
        raise FramepackError(f"--lr_scheduler {label}: cannot create the schedule: {e}") from None


def _custom_scheduler(spec: str, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]) -> Any:
    flag = f"--lr_scheduler_type {spec}"
    if "." in spec:
        obj, path = _import_attr(spec, flag)
    else:
        module = torch.optim.lr_scheduler
        classes = sorted(n for n, v in vars(module).items() if isinstance(v, type)
                         and issubclass(v, module.LRScheduler) and not n.startswith("_") and n != "LRScheduler")
        if spec not in classes:
            same = _same_name_ignoring_case(spec, classes)
            near = same or next(iter(difflib.get_close_matches(spec, classes, 1)), None)
            hint = f"did you mean {near}? " if near else ""
            raise FramepackError(f"{flag}: torch.optim.lr_scheduler has no scheduler {spec!r}; {hint}(names are "
                                 f"case-sensitive: {', '.join(classes)}; or give module.Class)")
        obj, path = getattr(module, spec), f"torch.optim.lr_scheduler.{spec}"
    if not isinstance(obj, type):
        raise FramepackError(f"{flag}: {path} is not a class (it is a {type(obj).__name__})")
    if issubclass(obj, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise FramepackError(f"{flag}: {path} steps on a loss value (step(metrics)), which the training loop does "
                             "not give; choose a scheduler that steps on its own")
    is_scheduler = issubclass(obj, torch.optim.lr_scheduler.LRScheduler) or all(
        callable(getattr(obj, m, None)) for m in ("step", "get_last_lr", "state_dict", "load_state_dict"))
    if not is_scheduler:
        raise FramepackError(f"{flag}: {path} is not a learning-rate scheduler (it needs step, get_last_lr, "
                             "state_dict and load_state_dict)")
    info = _params_of(obj)
    if info is not None:
        missing = [n for n in info[1] if n not in kwargs]
        if missing:
            raise FramepackError(f"{flag} needs --lr_scheduler_args " + " ".join(f"{m}=<value>" for m in missing))
        _unknown_kwargs(obj, kwargs, "--lr_scheduler_args", obj.__name__)
    try:
        return obj(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise FramepackError(f"{flag}: cannot create the scheduler with --lr_scheduler_args "
                             f"{_args_text(kwargs) or '(none)'}: {e}") from None


def _check_step_rules(rules: Any) -> None:
    example = "step_rules='1:100,0.1:200,0.01' (multiplier 1 before step 100, 0.1 before step 200, then 0.01)"
    if not isinstance(rules, str):
        raise FramepackError(f"--lr_scheduler_args: step_rules must be a quoted string like {example}")
    *pairs, last = rules.split(",")
    try:
        for pair in pairs:
            value, step = pair.split(":")
            float(value), int(step)
        float(last)
    except ValueError:
        raise FramepackError(f"--lr_scheduler_args: step_rules={rules!r} is not like {example}") from None


def make_scheduler(
    opts: TrainOptions,
    choice: OptimizerChoice,
    *,
    total_steps: int,
    num_processes: int = 1,
    warn: Callable[[str], None] | None = None,
) -> Any:
    """The learning-rate schedule of `--lr_scheduler` (or `--lr_scheduler_type`) for `choice`'s optimizer.

    `total_steps` is the run's optimizer step count (`--max_train_steps`, or what `--max_train_epochs` gives);
    warmup/decay ratios and the schedules' length are taken against `total_steps * num_processes` as the
    reference. `warn` gets one line for options that have no effect.

    Raises:
        FramepackError: one line naming the flag (missing or bad scheduler arguments, impossible step counts).
    """
    warn = warn or (lambda _text: None)
    optimizer = choice.optimizer
    name = opts.lr_scheduler
    kwargs = dict(opts.lr_scheduler_kwargs)
    if choice.schedule_free:
        asked = [f"--lr_scheduler {name}" if name != "constant" else "",
                 f"--lr_scheduler_type {opts.lr_scheduler_type}" if opts.lr_scheduler_type else "",
                 "--lr_warmup_steps" if opts.lr_warmup else ""]
        asked = [a for a in asked if a]
        if asked:
            warn(f"{' / '.join(asked)}: no effect with the schedule-free {type(optimizer).__name__}, which keeps "
                 "the learning rate constant (give its warmup as --optimizer_args warmup_steps=N)")
        return ConstantScheduler(optimizer)

    n = int(total_steps) * int(num_processes)
    warmup = _steps(opts.lr_warmup, n)
    decay = _steps(opts.lr_decay, n)
    stable = n - warmup - decay

    if opts.lr_scheduler_type:
        return _custom_scheduler(opts.lr_scheduler_type, optimizer, kwargs)

    if choice.adafactor_initial_lr is not None or name == "adafactor":
        if choice.adafactor_initial_lr is None:
            raise FramepackError("--lr_scheduler adafactor needs --optimizer_type Adafactor (with its default "
                                 "relative_step=True)")
        if warmup:
            raise FramepackError(f"--lr_warmup_steps {opts.lr_warmup_steps}: the adafactor schedule takes no warmup; "
                                 "set --lr_warmup_steps 0")
        if kwargs:
            warn(f"--lr_scheduler_args {_args_text(kwargs)}: no effect with Adafactor's own schedule")
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, choice.adafactor_initial_lr)

    if warmup > n:
        if name == "rex":
            raise FramepackError(f"--lr_warmup_steps {opts.lr_warmup_steps}: {warmup} warmup steps exceed the {n} "
                                 "training steps")
        if name != "constant":
            warn(f"--lr_warmup_steps {opts.lr_warmup_steps}: {warmup} warmup steps exceed the {n} training steps; "
                 "the learning rate never reaches --learning_rate")
    if decay and name != "warmup_stable_decay":
        warn(f"--lr_decay_steps {opts.lr_decay_steps}: no effect with --lr_scheduler {name} (only "
             "warmup_stable_decay uses it)")

    if name == "rex":
        ratio = opts.lr_scheduler_min_lr_ratio
        lr = opts.learning_rate
        fixed = {"max_lr": lr, "min_lr": lr * (ratio if ratio is not None else DEFAULT_REX_MIN_LR_RATIO),
                 "num_steps": n, "num_warmup_steps": warmup}
        return _call_schedule(RexLR, optimizer, fixed, kwargs, name)

    if name == "piecewise_constant":
        from diffusers.optimization import get_piecewise_constant_schedule

        if "step_rules" not in kwargs:
            raise FramepackError("--lr_scheduler piecewise_constant needs --lr_scheduler_args "
                                 "step_rules='1:100,0.1:200,0.01' (multiplier 1 before step 100, 0.1 before step "
                                 "200, then 0.01)")
        _check_step_rules(kwargs["step_rules"])
        if warmup:
            warn(f"--lr_warmup_steps {opts.lr_warmup_steps}: no effect with --lr_scheduler piecewise_constant "
                 "(write the warmup into step_rules)")
        return _call_schedule(get_piecewise_constant_schedule, optimizer, {}, kwargs, name)

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    fn = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    cycles = opts.lr_scheduler_num_cycles
    ratio = opts.lr_scheduler_min_lr_ratio
    if name == "constant":
        if warmup:
            raise FramepackError("--lr_warmup_steps: the constant scheduler takes no warmup; use --lr_scheduler "
                                 "constant_with_warmup")
        fixed: dict[str, Any] = {}
    elif name == "constant_with_warmup":
        fixed = {"num_warmup_steps": warmup}
    elif name == "inverse_sqrt":
        fixed = {"num_warmup_steps": warmup, "timescale": opts.lr_scheduler_timescale}
    elif name == "cosine_with_restarts":
        fixed = {"num_warmup_steps": warmup, "num_training_steps": n, "num_cycles": cycles}
    elif name == "polynomial":
        fixed = {"num_warmup_steps": warmup, "num_training_steps": n, "power": opts.lr_scheduler_power}
    elif name == "cosine_with_min_lr":
        if ratio is None:
            raise FramepackError("--lr_scheduler_min_lr_ratio is required with --lr_scheduler cosine_with_min_lr")
        fixed = {"num_warmup_steps": warmup, "num_training_steps": n, "num_cycles": cycles / 2, "min_lr_rate": ratio}
    elif name in ("linear", "cosine"):
        fixed = {"num_warmup_steps": warmup, "num_training_steps": n}
    elif name == "warmup_stable_decay":
        if stable < 0:
            raise FramepackError(f"--lr_warmup_steps {opts.lr_warmup_steps} / --lr_decay_steps "
                                 f"{opts.lr_decay_steps}: {warmup} warmup + {decay} decay steps exceed the {n} "
                                 "training steps")
        fixed = {"num_warmup_steps": warmup, "num_stable_steps": stable, "num_decay_steps": decay,
                 "num_cycles": cycles / 2, "min_lr_ratio": ratio if ratio is not None else 0.0}
    else:  # a name transformers knows and the reference passes through this way
        fixed = {"num_warmup_steps": warmup, "num_training_steps": n, "num_decay_steps": decay}
    return _call_schedule(fn, optimizer, fixed, kwargs, name)
