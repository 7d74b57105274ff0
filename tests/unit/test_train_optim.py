"""Optimizers and learning-rate schedules of `framepack train` (engine/train_optim.py).

bitsandbytes, prodigyopt, schedulefree and lion_pytorch are not installed here: their paths are tested with
small fake packages written under tmp_path (installed) and with `sys.modules[name] = None` (missing).
"""

from __future__ import annotations

import io
import math
import sys
import textwrap

import pytest
import torch

from framepack_cli.engine.train_optim import (
    ConstantScheduler,
    RexLR,
    lr_logs,
    make_optimizer,
    make_scheduler,
    optimizer_eval,
    optimizer_train,
    scheduler_name,
)
from framepack_cli.errors import FramepackError
from framepack_cli.options.train import TrainOptions

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # only the device *type* is read: no GPU needed
LR = 1e-3


def opts(**kw) -> TrainOptions:
    """Validated options; --show_timesteps spares the options required to train (dataset, DiT, output)."""
    kw.setdefault("learning_rate", LR)
    return TrainOptions(show_timesteps="console", **kw)


def groups(lr: float = LR, n: int = 1) -> list[dict]:
    return [{"params": [torch.nn.Parameter(torch.ones(4, 3))], "lr": lr} for _ in range(n)]


def build(warn=None, device=CPU, n_groups: int = 1, **kw):
    warnings: list[str] = [] if warn is None else warn
    o = opts(**kw)
    return o, make_optimizer(o, groups(n=n_groups), device=device, warn=warnings.append), warnings


def error(fn) -> str:
    with pytest.raises(FramepackError) as e:
        fn()
    assert e.value.exit_code == 2
    text = str(e.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------------------------
# fake optional packages

FAKES = {
    "bitsandbytes/__init__.py": "from . import optim\n",
    "bitsandbytes/optim.py": """
        import torch
        class AdamW8bit(torch.optim.AdamW):
            def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                         percentile_clipping=100, block_wise=True):
                super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
                self.block_wise = block_wise
        class Lion8bit(torch.optim.SGD):
            pass
        """,
    "prodigyopt/__init__.py": """
        import torch
        class Prodigy(torch.optim.Optimizer):
            def __init__(self, params, lr=1.0, d0=1e-6):
                super().__init__(params, dict(lr=lr, d=0.5, d0=d0))
            def step(self, closure=None):
                pass
        """,
    "lion_pytorch/__init__.py": """
        import torch
        class Lion(torch.optim.Optimizer):
            def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
                super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        """,
    "schedulefree/__init__.py": """
        import torch
        class _SF(torch.optim.Optimizer):
            def __init__(self, params, lr=0.0025, warmup_steps=0):
                super().__init__(params, dict(lr=lr, warmup_steps=warmup_steps))
                self.mode = None
            def step(self, closure=None):
                pass
            def train(self):
                self.mode = "train"
            def eval(self):
                self.mode = "eval"
        class AdamWScheduleFree(_SF):
            pass
        class SGDScheduleFree(_SF):
            pass
        class RAdamScheduleFree(_SF):
            pass
        """,
}
FAKE_ROOTS = ("bitsandbytes", "prodigyopt", "lion_pytorch", "schedulefree")


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    root = tmp_path / "site"
    for rel, text in FAKES.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_ROOTS:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_ROOTS:
            del sys.modules[name]


@pytest.fixture
def missing_packages(monkeypatch):
    """Whatever is installed, importing these fails as for a missing package."""
    for name in (*FAKE_ROOTS, "bitsandbytes.optim"):
        monkeypatch.setitem(sys.modules, name, None)


# --------------------------------------------------------------------------------------------------------------
# optimizers


@pytest.mark.parametrize("name", ["AdamW", "adamw", "ADAMW", "", "  "])
def test_adamw_is_the_default_and_matched_case_insensitively(name):
    # an empty value means AdamW too (the reference crashes on its empty default); the options model refuses
    # an empty --optimizer_type today, so that case is set after validation
    o = opts().model_copy(update={"optimizer_type": name})
    warnings: list[str] = []
    c = make_optimizer(o, groups(), device=CPU, warn=warnings.append)
    assert type(c.optimizer) is torch.optim.AdamW and c.description == "torch.optim.adamw.AdamW"
    assert not c.schedule_free and warnings == [] and c.lr_for_logs() == [LR]
    assert opts().optimizer_type == "AdamW"


def test_optimizer_args_are_passed_and_described_like_ss_optimizer():
    _, c, _ = build(optimizer_args=["weight_decay=0.01", "betas=(0.9,0.99)"])
    assert c.optimizer.defaults["weight_decay"] == 0.01 and c.optimizer.defaults["betas"] == (0.9, 0.99)
    assert c.description == "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.99))"
    assert c.metadata_learning_rate == LR


def test_param_groups_keep_their_own_lr():
    o = opts()
    g = groups() + [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 4 * LR}]
    c = make_optimizer(o, g, device=CPU, warn=print)
    assert c.lr_for_logs() == [LR, 4 * LR]
    s = make_scheduler(o, c, total_steps=10)
    assert lr_logs(c, s) == {"lr/group0": LR, "lr/group1": 4 * LR}
    assert lr_logs(c, s, ["unet", "unet plus"]) == {"lr/unet": LR, "lr/unet plus": 4 * LR}
    with pytest.raises(ValueError, match="no parameters"):
        make_optimizer(o, [{"params": [], "lr": LR}], device=CPU, warn=print)


def test_generator_params_are_not_used_up():
    o = opts()
    p = torch.nn.Parameter(torch.ones(3))
    c = make_optimizer(o, [{"params": (x for x in [p]), "lr": LR}], device=CPU, warn=print)
    assert c.optimizer.param_groups[0]["params"] == [p]


def test_torch_optim_classes_are_case_sensitive_with_a_suggestion():
    _, c, _ = build(optimizer_type="SGD", optimizer_args=["momentum=0.9"])
    assert type(c.optimizer) is torch.optim.SGD and c.description == "torch.optim.sgd.SGD(momentum=0.9)"
    assert error(lambda: build(optimizer_type="sgd")) == (
        "--optimizer_type sgd: torch.optim class names are case-sensitive; did you mean SGD?")
    msg = error(lambda: build(optimizer_type="AdamX"))
    assert msg.startswith("--optimizer_type AdamX: not a known optimizer; did you mean Adam")
    assert "Choose AdamW, AdamW8bit, Adafactor, Lion, Prodigy, AdamWScheduleFree" in msg and "SGD" in msg
    assert error(lambda: build(optimizer_type="Optimizer")).startswith("--optimizer_type Optimizer: not a known")


def test_module_class_paths():
    _, c, _ = build(optimizer_type="torch.optim.RAdam")
    assert type(c.optimizer) is torch.optim.RAdam and c.description == "torch.optim.radam.RAdam"
    assert error(lambda: build(optimizer_type="nosuchpkg.Opt")) == (
        "--optimizer_type nosuchpkg.Opt: no module named 'nosuchpkg' (install the package that provides it, or "
        "check the spelling)")
    assert error(lambda: build(optimizer_type="torch.optim.adam")) == (
        "--optimizer_type torch.optim.adam: module torch.optim has no 'adam'; did you mean torch.optim.Adam?")
    assert error(lambda: build(optimizer_type="math.pi")) == (
        "--optimizer_type math.pi: math.pi is not a class (it is a float)")
    assert error(lambda: build(optimizer_type="torch.nn.Linear")) == (
        "--optimizer_type torch.nn.Linear: torch.nn.Linear is not an optimizer (not a torch.optim.Optimizer "
        "subclass)")


def test_bad_optimizer_args_name_the_argument_and_the_class():
    msg = error(lambda: build(optimizer_args=["foo=1"]))
    assert msg.startswith("--optimizer_args: AdamW takes no argument 'foo' (it takes: betas, eps, weight_decay")
    assert "lr" not in msg.split("it takes:")[1].split(", ")
    msg = error(lambda: build(optimizer_type="SGD", optimizer_args=["foo=1", "bar=2"]))
    assert msg.startswith("--optimizer_args: SGD takes no arguments 'foo', 'bar' (it takes: momentum")
    assert error(lambda: build(optimizer_args=["lr=0.1"])) == (
        "--optimizer_args: lr cannot be given here; it is set by --learning_rate")
    assert error(lambda: build(optimizer_args=["betas=(2.0,0.9)"])) == (
        "--optimizer_args: AdamW refused betas=(2.0, 0.9): Invalid beta parameter at index 0: 2.0")


# --- bitsandbytes


def test_8bit_without_bitsandbytes_on_cuda_is_one_line(missing_packages):
    assert error(lambda: build(optimizer_type="AdamW8bit", device=CUDA)) == (
        "--optimizer_type AdamW8bit needs bitsandbytes: pip install bitsandbytes")
    assert error(lambda: build(optimizer_type="Lion8bit", device=CUDA)) == (
        "--optimizer_type Lion8bit needs bitsandbytes: pip install bitsandbytes")
    assert error(lambda: build(optimizer_type="bitsandbytes.optim.AdEMAMix8bit", device=CUDA)) == (
        "--optimizer_type bitsandbytes.optim.AdEMAMix8bit needs bitsandbytes: pip install bitsandbytes")


@pytest.mark.parametrize("installed", [False, True])
def test_8bit_without_cuda_falls_back_to_torch_with_one_warning(installed, request):
    request.getfixturevalue("fake_packages" if installed else "missing_packages")
    _, c, warnings = build(optimizer_type="AdamW8bit", optimizer_args=["weight_decay=0.1"])
    assert type(c.optimizer) is torch.optim.AdamW and c.description == "torch.optim.adamw.AdamW(weight_decay=0.1)"
    assert warnings == ["--optimizer_type AdamW8bit: 8-bit optimizers need a CUDA GPU (training on cpu); using "
                        "torch.optim.AdamW instead"]
    # bitsandbytes-only arguments are dropped, and named
    _, c, warnings = build(optimizer_type="adamw8bit", optimizer_args=["percentile_clipping=95", "eps=1e-6"])
    assert warnings == ["--optimizer_type adamw8bit: 8-bit optimizers need a CUDA GPU (training on cpu); using "
                        "torch.optim.AdamW instead; ignoring its bitsandbytes-only --optimizer_args "
                        "percentile_clipping"]
    assert c.optimizer.defaults["eps"] == 1e-6
    # the torch optimizer of the same family
    for name, cls in (("Adam8bit", torch.optim.Adam), ("PagedAdamW8bit", torch.optim.AdamW),
                      ("SGD8bit", torch.optim.SGD), ("Lion8bit", torch.optim.AdamW)):
        _, c, warnings = build(optimizer_type=name)
        assert type(c.optimizer) is cls and len(warnings) == 1 and f"using torch.optim.{cls.__name__}" in warnings[0]


def test_8bit_with_bitsandbytes_on_cuda(fake_packages):
    _, c, warnings = build(optimizer_type="AdamW8bit", device=CUDA, optimizer_args=["block_wise=False"])
    assert type(c.optimizer).__name__ == "AdamW8bit" and c.optimizer.block_wise is False
    assert c.description == "bitsandbytes.optim.AdamW8bit(block_wise=False)" and warnings == []
    _, c, _ = build(optimizer_type="lion8bit", device=CUDA)  # any 8-bit class of bitsandbytes.optim
    assert type(c.optimizer).__name__ == "Lion8bit"
    _, c, _ = build(optimizer_type="bitsandbytes.optim.Lion8bit", device=CUDA)
    assert type(c.optimizer).__name__ == "Lion8bit"
    assert error(lambda: build(optimizer_type="Foo8bit", device=CUDA)) == (
        "--optimizer_type Foo8bit: bitsandbytes.optim has no 'Foo8bit' (it has AdamW8bit, Lion8bit)")
    msg = error(lambda: build(optimizer_type="AdamW8bit", device=CUDA, optimizer_args=["paged=True"]))
    assert msg.startswith("--optimizer_args: AdamW8bit takes no argument 'paged' (it takes: betas, eps")


# --- optional packages by short name


@pytest.mark.parametrize(("name", "pip"), [
    ("Lion", "lion-pytorch"), ("lion", "lion-pytorch"), ("lion_pytorch.Lion", "lion-pytorch"),
    ("Prodigy", "prodigyopt"), ("prodigyopt.Prodigy", "prodigyopt"),
    ("AdamWScheduleFree", "schedulefree"), ("SGDScheduleFree", "schedulefree"), ("RAdamScheduleFree", "schedulefree"),
    ("schedulefree.AdamWScheduleFree", "schedulefree"),
])
def test_missing_optional_package_names_its_pip_package(name, pip, missing_packages):
    assert error(lambda: build(optimizer_type=name)) == f"--optimizer_type {name} needs {pip}: pip install {pip}"


def test_lion_and_prodigy_when_installed(fake_packages):
    _, c, _ = build(optimizer_type="Lion", optimizer_args=["betas=(0.95,0.98)"])
    assert type(c.optimizer).__name__ == "Lion" and c.description == "lion_pytorch.Lion(betas=(0.95, 0.98))"
    o = opts(optimizer_type="Prodigy", learning_rate=1.0)
    c = make_optimizer(o, groups(lr=1.0), device=CPU, warn=print)
    assert c.description == "prodigyopt.Prodigy" and not c.schedule_free
    assert c.lr_for_logs() == [0.5]  # d * lr
    s = make_scheduler(o, c, total_steps=10)
    assert lr_logs(c, s) == {"lr/unet": 1.0, "lr/d*lr/unet": 0.5}
    msg = error(lambda: build(optimizer_type="Prodigy", optimizer_args=["dd=1"]))
    assert msg == "--optimizer_args: Prodigy takes no argument 'dd' (it takes: d0)"


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "sgdschedulefree", "RAdamScheduleFree",
                                  "schedulefree.AdamWScheduleFree"])
def test_schedule_free_optimizers(name, fake_packages):
    o, c, _ = build(optimizer_type=name, optimizer_args=["warmup_steps=5"])
    assert c.schedule_free and c.optimizer.defaults["warmup_steps"] == 5
    warnings: list[str] = []
    s = make_scheduler(o, c, total_steps=100, warn=warnings.append)
    assert isinstance(s, ConstantScheduler) and warnings == []
    s.step()
    assert s.get_last_lr() == [LR] and s.state_dict() == {}
    s.load_state_dict({})
    optimizer_train(c)
    assert c.optimizer.mode == "train"
    optimizer_eval(c)
    assert c.optimizer.mode == "eval"
    # a schedule asked for is said to have no effect
    o = opts(optimizer_type=name, lr_scheduler="cosine", lr_warmup_steps="10")
    c = make_optimizer(o, groups(), device=CPU, warn=print)
    make_scheduler(o, c, total_steps=100, warn=warnings.append)
    cls = type(c.optimizer).__name__
    assert warnings == [f"--lr_scheduler cosine / --lr_warmup_steps: no effect with the schedule-free {cls}, which "
                        "keeps the learning rate constant (give its warmup as --optimizer_args warmup_steps=N)"]


def test_train_eval_are_no_ops_for_ordinary_optimizers():
    _, c, _ = build()
    optimizer_train(c)
    optimizer_eval(c)
    assert type(c.optimizer) is torch.optim.AdamW


# --- Adafactor


def test_adafactor_relative_step_schedules_itself():
    o, c, warnings = build(optimizer_type="Adafactor")
    assert type(c.optimizer).__name__ == "Adafactor" and c.optimizer.defaults["lr"] is None
    assert c.description == "transformers.optimization.Adafactor(relative_step=True)"
    assert c.adafactor_initial_lr == LR and c.metadata_learning_rate is None
    assert scheduler_name(o, c) == "adafactor:0.001"
    assert warnings == ["--optimizer_type Adafactor: Adafactor with relative_step=True schedules its own learning "
                        "rate: --learning_rate 0.001 is only its initial value (pass --optimizer_args "
                        "relative_step=False to schedule it yourself)"]
    s = make_scheduler(o, c, total_steps=100)
    assert type(s).__name__ == "AdafactorSchedule" and s.get_last_lr() == [LR] and c.lr_for_logs() == [LR]
    p = c.optimizer.param_groups[0]["params"][0]
    p.grad = torch.full_like(p, 0.1)
    c.optimizer.step()
    s.step()
    expect = 1e-2 * 1.0  # min(1e-2, 1/sqrt(step 1)) * RMS of the parameters before the step (ones)
    assert [float(v) for v in s.get_last_lr()] == pytest.approx([expect]) and c.lr_for_logs() == pytest.approx([expect])
    # --lr_scheduler adafactor names that schedule; its --lr_scheduler_args have no effect
    o, c, warnings = build(optimizer_type="Adafactor", lr_scheduler="adafactor", lr_scheduler_args=["x=1"])
    assert warnings[0].endswith("is only its initial value (pass --optimizer_args relative_step=False to schedule "
                                "it yourself)")
    s = make_scheduler(o, c, total_steps=10, warn=warnings.append)
    assert type(s).__name__ == "AdafactorSchedule" and scheduler_name(o, c) == "adafactor:0.001"
    assert warnings[1:] == ["--lr_scheduler_args x=1: no effect with Adafactor's own schedule"]
    # another --lr_scheduler is replaced, and said so
    _, _, warnings = build(optimizer_type="adafactor", lr_scheduler="cosine")
    assert warnings[0].endswith("is only its initial value, and --lr_scheduler cosine is replaced by its schedule "
                                "(pass --optimizer_args relative_step=False to schedule it yourself)")


def test_adafactor_relative_step_refuses_warmup_and_custom_schedulers():
    assert error(lambda: build(optimizer_type="Adafactor", lr_scheduler="constant_with_warmup",
                               lr_warmup_steps="10")) == (
        "--lr_warmup_steps 10: Adafactor with relative_step=True schedules its own learning rate and takes no "
        "warmup; set --lr_warmup_steps 0 or pass --optimizer_args relative_step=False to schedule it yourself")
    assert error(lambda: build(optimizer_type="Adafactor", lr_scheduler_type="StepLR",
                               lr_scheduler_args=["step_size=10"])) == (
        "--lr_scheduler_type StepLR: Adafactor with relative_step=True schedules its own learning rate; pass "
        "--optimizer_args relative_step=False to schedule it yourself")


def test_adafactor_without_relative_step_gives_the_reference_advice():
    o, c, warnings = build(optimizer_type="Adafactor", optimizer_args=["relative_step=False", "clip_threshold=2.0",
                                                                       "scale_parameter=False"])
    assert c.optimizer.defaults["lr"] == LR and c.adafactor_initial_lr is None and scheduler_name(o, c) == "constant"
    assert c.description == ("transformers.optimization.Adafactor(relative_step=False,clip_threshold=2.0,"
                             "scale_parameter=False)")
    assert warnings == [
        "Adafactor: --max_grad_norm 1.0 clips gradients on top of Adafactor's own update clipping; "
        "--max_grad_norm 0 may be better",
        "Adafactor: --lr_scheduler constant_with_warmup may be better (got constant)",
        "Adafactor: clip_threshold=1.0 may be better (got --optimizer_args clip_threshold=2.0)",
    ]
    _, _, warnings = build(optimizer_type="Adafactor", max_grad_norm=0, lr_scheduler="constant_with_warmup",
                           optimizer_args=["relative_step=False"])
    assert warnings == []
    # warmup_init forces relative_step
    _, c, warnings = build(optimizer_type="Adafactor", optimizer_args=["relative_step=False", "warmup_init=True"])
    assert c.adafactor_initial_lr == LR
    assert warnings[0] == ("--optimizer_args: Adafactor's warmup_init=True needs relative_step=True; using "
                           "relative_step=True")
    assert error(lambda: build(optimizer_type="Adafactor", lr_scheduler="adafactor",
                               optimizer_args=["relative_step=False"])) == (
        "--lr_scheduler adafactor needs Adafactor's relative_step=True (its default); drop relative_step=False "
        "from --optimizer_args or choose another --lr_scheduler")


# --------------------------------------------------------------------------------------------------------------
# schedulers


def curve(o: TrainOptions, total_steps: int = 100, num_processes: int = 1, steps: int | None = None,
          n_groups: int = 1) -> list[float]:
    c = make_optimizer(o, groups(n=n_groups), device=CPU, warn=lambda _: None)
    s = make_scheduler(o, c, total_steps=total_steps, num_processes=num_processes)
    out = []
    for _ in range((total_steps * num_processes + 1) if steps is None else steps):
        out.append(s.get_last_lr()[0])
        c.optimizer.step()
        s.step()
    return out


def warm(k: int, w: int = 10) -> float:
    return LR * k / w


FORMULAS = {  # (options, lr at step k) for N = 100 steps, warmup 10
    "constant": ({}, lambda k: LR),
    "constant_with_warmup": ({"lr_warmup_steps": "10"}, lambda k: warm(k) if k < 10 else LR),
    "linear": ({"lr_warmup_steps": "10"}, lambda k: warm(k) if k < 10 else LR * max(0.0, (100 - k) / 90)),
    "cosine": ({"lr_warmup_steps": "10"},
               lambda k: warm(k) if k < 10 else LR * 0.5 * (1 + math.cos(math.pi * (k - 10) / 90))),
    "cosine_with_restarts": ({"lr_warmup_steps": "10", "lr_scheduler_num_cycles": 2},
                             lambda k: warm(k) if k < 10 else (
                                 0.0 if k >= 100 else LR * 0.5 * (1 + math.cos(math.pi * ((2 * (k - 10) / 90) % 1))))),
    "polynomial": ({"lr_warmup_steps": "10", "lr_scheduler_power": 2.0},
                   lambda k: warm(k) if k < 10 else (LR - 1e-7) * (1 - (k - 10) / 90) ** 2 + 1e-7),
    "inverse_sqrt": ({"lr_warmup_steps": "10", "lr_scheduler_timescale": 20},
                     lambda k: warm(k) if k < 10 else LR / math.sqrt((k + 10) / 20)),
    "cosine_with_min_lr": ({"lr_warmup_steps": "10", "lr_scheduler_min_lr_ratio": 0.1},
                           lambda k: warm(k) if k < 10 else
                           LR * (0.5 * (1 + math.cos(math.pi * (k - 10) / 90)) * 0.9 + 0.1)),
    "warmup_stable_decay": ({"lr_warmup_steps": "10", "lr_decay_steps": "0.2", "lr_scheduler_min_lr_ratio": 0.05},
                            lambda k: LR * (k / 10 * 0.95 + 0.05) if k < 10 else LR if k < 80 else
                            LR * (0.5 * (1 + math.cos(math.pi * (k - 80) / 20)) * 0.95 + 0.05) if k < 100 else
                            LR * 0.05),
    "piecewise_constant": ({"lr_scheduler_args": ["step_rules='1:10,0.1:20,0.01'"]},
                           lambda k: LR if k < 10 else LR * 0.1 if k < 20 else LR * 0.01),
}


@pytest.mark.parametrize("name", list(FORMULAS))
def test_schedule_lr_curves_follow_their_formulas(name):
    extra, f = FORMULAS[name]
    got = curve(opts(lr_scheduler=name, **extra))
    expect = [f(k) for k in range(101)]
    assert got == pytest.approx(expect, rel=1e-9, abs=1e-15), name


def test_ratios_resolve_against_total_steps_times_processes():
    # warmup 0.1 of 50 steps x 2 processes = 10 steps of a 100-step linear schedule
    got = curve(opts(lr_scheduler="linear", lr_warmup_steps="0.1"), total_steps=50, num_processes=2)
    assert got == pytest.approx([FORMULAS["linear"][1](k) for k in range(101)], rel=1e-9, abs=1e-15)
    got = curve(opts(lr_scheduler="linear", lr_warmup_steps="10%"), total_steps=100)
    assert got[:11] == pytest.approx([warm(k) for k in range(10)] + [LR])


def rex(k: int, n: int = 100, w: int = 0, lo: float = 0.01 * LR, hi: float = LR, a: float = 0.1, b: float = 0.9):
    """The spec's REX formula (training.md 4.7), with warmup starting at min_lr at k = 0."""
    if 0 <= k < w or (w == 1 and k == 1):
        return lo if k <= 1 else lo + (hi - lo) * (k - 1) / (w - 1)
    s, r = k - w, n - w
    if s >= r or s == -1 or r <= 0:
        return lo
    z = (r - s % r) / r
    return hi * (lo / hi + (1 - lo / hi) * z / (a + b * z))


def test_rex_values():
    got = curve(opts(lr_scheduler="rex"))
    assert got == pytest.approx([rex(k) for k in range(101)], rel=1e-12)
    # hand-checked points: full lr at 0, 0.01 + 0.99 * 0.5 / 0.55 at the middle, min lr at the end
    assert got[0] == pytest.approx(LR) and got[50] == pytest.approx(LR * (0.01 + 0.99 * 0.5 / 0.55))
    assert got[100] == pytest.approx(0.01 * LR)
    got = curve(opts(lr_scheduler="rex", lr_warmup_steps="10", lr_scheduler_min_lr_ratio=0.1,
                     lr_scheduler_args=["rex_alpha=0.2", "rex_beta=0.8"]))
    assert got == pytest.approx([rex(k, w=10, lo=0.1 * LR, a=0.2, b=0.8) for k in range(101)], rel=1e-12)
    assert got[:3] == pytest.approx([0.1 * LR, 0.1 * LR, 0.1 * LR + 0.9 * LR / 9]) and got[10] == pytest.approx(LR)
    # warmup of one step: min lr at k = 0 and 1 (the reference's formula)
    got = curve(opts(lr_scheduler="rex", lr_warmup_steps="1"), total_steps=10)
    assert got == pytest.approx([rex(k, n=10, w=1) for k in range(11)], rel=1e-12)
    assert got[:2] == pytest.approx([0.01 * LR] * 2)
    # initial_lr is set on every group (a resumed schedule can be rebuilt with last_epoch)
    o = opts(lr_scheduler="rex")
    c = make_optimizer(o, groups(), device=CPU, warn=print)
    s = make_scheduler(o, c, total_steps=100)
    assert isinstance(s, RexLR) and c.optimizer.param_groups[0]["initial_lr"] == LR
    with pytest.raises(ValueError, match="min_lr"):
        RexLR(c.optimizer, max_lr=1.0, min_lr=2.0)


def test_custom_scheduler_type():
    o = opts(lr_scheduler_type="CosineAnnealingLR", lr_scheduler_args=["T_max=50", "eta_min=1e-5"])
    got = curve(o, steps=51)
    expect = [1e-5 + (LR - 1e-5) * (1 + math.cos(math.pi * k / 50)) / 2 for k in range(51)]
    assert got == pytest.approx(expect, rel=1e-9)
    o = opts(lr_scheduler_type="torch.optim.lr_scheduler.StepLR", lr_scheduler_args=["step_size=3", "gamma=0.5"])
    assert curve(o, steps=7) == pytest.approx([LR] * 3 + [LR / 2] * 3 + [LR / 4])

    def sched_error(**kw) -> str:
        o = opts(**kw)
        c = make_optimizer(o, groups(), device=CPU, warn=print)
        return error(lambda: make_scheduler(o, c, total_steps=10))

    assert sched_error(lr_scheduler_type="CosineAnnealingLR") == (
        "--lr_scheduler_type CosineAnnealingLR needs --lr_scheduler_args T_max=<value>")
    assert sched_error(lr_scheduler_type="CosineAnnealingLR", lr_scheduler_args=["T_max=5", "foo=1"]) == (
        "--lr_scheduler_args: CosineAnnealingLR takes no argument 'foo' (it takes: T_max, eta_min, last_epoch)")
    assert sched_error(lr_scheduler_type="cosineannealinglr").startswith(
        "--lr_scheduler_type cosineannealinglr: torch.optim.lr_scheduler has no scheduler 'cosineannealinglr'; "
        "did you mean CosineAnnealingLR? (names are case-sensitive:")
    assert sched_error(lr_scheduler_type="ReduceLROnPlateau") == (
        "--lr_scheduler_type ReduceLROnPlateau: torch.optim.lr_scheduler.ReduceLROnPlateau steps on a loss value "
        "(step(metrics)), which the training loop does not give; choose a scheduler that steps on its own")
    assert sched_error(lr_scheduler_type="torch.nn.Linear") == (
        "--lr_scheduler_type torch.nn.Linear: torch.nn.Linear is not a learning-rate scheduler (it needs step, "
        "get_last_lr, state_dict and load_state_dict)")
    assert sched_error(lr_scheduler_type="nosuchpkg.Sched") == (
        "--lr_scheduler_type nosuchpkg.Sched: no module named 'nosuchpkg' (install the package that provides it, "
        "or check the spelling)")
    assert sched_error(lr_scheduler_type="LinearLR", lr_scheduler_args=["start_factor=2.0"]).startswith(
        "--lr_scheduler_type LinearLR: cannot create the scheduler with --lr_scheduler_args start_factor=2.0: "
        "Starting multiplicative factor expected")


def test_schedule_errors_are_one_line():
    def sched_error(total_steps: int = 100, **kw) -> str:
        o = opts(**kw)
        c = make_optimizer(o, groups(), device=CPU, warn=print)
        return error(lambda: make_scheduler(o, c, total_steps=total_steps))

    assert sched_error(lr_scheduler="cosine_with_restarts", lr_scheduler_args=["num_cycles=3"]) == (
        "--lr_scheduler_args: num_cycles cannot be given here; it is set by --lr_scheduler_num_cycles")
    assert sched_error(lr_scheduler="cosine", lr_scheduler_args=["foo=1"]) == (
        "--lr_scheduler_args: the cosine schedule takes no argument 'foo' (it takes: num_cycles, last_epoch)")
    assert sched_error(lr_scheduler="warmup_stable_decay", lr_warmup_steps="60", lr_decay_steps="50") == (
        "--lr_warmup_steps 60 / --lr_decay_steps 50: 60 warmup + 50 decay steps exceed the 100 training steps")
    assert sched_error(lr_scheduler="rex", lr_warmup_steps="200") == (
        "--lr_warmup_steps 200: 200 warmup steps exceed the 100 training steps")
    assert sched_error(lr_scheduler="piecewise_constant") == (
        "--lr_scheduler piecewise_constant needs --lr_scheduler_args step_rules='1:100,0.1:200,0.01' (multiplier 1 "
        "before step 100, 0.1 before step 200, then 0.01)")
    assert sched_error(lr_scheduler="piecewise_constant", lr_scheduler_args=["step_rules='1:a,0.1'"]).startswith(
        "--lr_scheduler_args: step_rules='1:a,0.1' is not like step_rules='1:100,")
    assert sched_error(lr_scheduler="polynomial", learning_rate=1e-8) == (
        "--lr_scheduler polynomial: cannot create the schedule: lr_end (1e-07) must be smaller than initial lr "
        "(1e-08)")


def test_options_without_effect_are_warned():
    warnings: list[str] = []
    o = opts(lr_scheduler="cosine", lr_decay_steps="10")
    c = make_optimizer(o, groups(), device=CPU, warn=print)
    make_scheduler(o, c, total_steps=100, warn=warnings.append)
    assert warnings == ["--lr_decay_steps 10: no effect with --lr_scheduler cosine (only warmup_stable_decay uses "
                        "it)"]
    warnings.clear()
    o = opts(lr_scheduler="linear", lr_warmup_steps="300")
    c = make_optimizer(o, groups(), device=CPU, warn=print)
    make_scheduler(o, c, total_steps=100, warn=warnings.append)
    assert warnings == ["--lr_warmup_steps 300: 300 warmup steps exceed the 100 training steps; the learning rate "
                        "never reaches --learning_rate"]


ROUND_TRIP = [
    *[dict(lr_scheduler=n, **FORMULAS[n][0]) for n in FORMULAS],
    dict(lr_scheduler="rex", lr_warmup_steps="10"),
    dict(lr_scheduler_type="CosineAnnealingLR", lr_scheduler_args=["T_max=30"]),
    dict(optimizer_type="Adafactor"),
    dict(optimizer_type="AdamWScheduleFree"),
]


@pytest.mark.parametrize("kw", ROUND_TRIP, ids=lambda kw: kw.get("lr_scheduler") or kw.get("lr_scheduler_type")
                         or kw.get("optimizer_type"))
def test_every_schedule_round_trips_its_state(kw, fake_packages):
    """Resume: a fresh optimizer + schedule loaded from saved states continues exactly where the first was."""

    def fresh(seed_params=None):
        o = opts(**kw)
        g = groups(n=2)
        if seed_params is not None:
            for grp, p in zip(g, seed_params, strict=True):
                grp["params"][0].data.copy_(p)
        c = make_optimizer(o, g, device=CPU, warn=lambda _: None)
        return c, make_scheduler(o, c, total_steps=40, warn=lambda _: None)

    def run(c, s, n):
        lrs = []
        for _ in range(n):
            for grp in c.optimizer.param_groups:
                grp["params"][0].grad = torch.full_like(grp["params"][0], 0.1)
            c.optimizer.step()
            s.step()
            lrs += [float(v) for v in s.get_last_lr()] + c.lr_for_logs()
        return lrs

    a_opt, a_sched = fresh()
    run(a_opt, a_sched, 13)
    buf = io.BytesIO()
    torch.save({"optimizer": a_opt.optimizer.state_dict(), "scheduler": a_sched.state_dict()}, buf)
    params = [g["params"][0].detach().clone() for g in a_opt.optimizer.param_groups]
    expect = run(a_opt, a_sched, 15)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b_opt, b_sched = fresh(params)
    b_opt.optimizer.load_state_dict(saved["optimizer"])
    b_sched.load_state_dict(saved["scheduler"])
    assert run(b_opt, b_sched, 15) == pytest.approx(expect, rel=1e-12)
