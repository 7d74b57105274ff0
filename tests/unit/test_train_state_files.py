"""Training states (pickle-free save/load) and the names, ownership and retention of training outputs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from framepack_cli.engine.train_files import (
    epoch_stem,
    epoch_to_prune,
    existing_outputs,
    refuse_foreign_outputs,
    remove_own,
    step_stem,
    step_to_prune,
)
from framepack_cli.engine.train_state import TrainProgress, newest_state, read_state, save_state
from framepack_cli.errors import FramepackError


def _trained():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    for _ in range(3):
        net(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return net, opt, sched


def test_state_round_trip_continues_identically(tmp_path):
    net, opt, sched = _trained()
    progress = TrainProgress(step=3, epoch=1, position=2, micro_step=5, seed=9, session_id=11,
                             written=["x.safetensors"], options_digest='{"a": 1}')
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_state(tmp_path / "run-step00000003-state", progress, net, opt, sched)
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind
    expected = (random.random(), np.random.rand(), torch.rand(1))

    # continue the original for one step
    x = torch.randn(5, 4)
    net(x).square().mean().backward()
    opt.step()
    sched.step()
    want = [p.detach().clone() for p in net.parameters()]

    st = read_state(tmp_path / "run-step00000003-state")
    assert st.progress == progress
    net2, opt2, sched2 = _trained()
    net2.load_state_dict(st.network)
    opt2.load_state_dict(st.optimizer)
    sched2.load_state_dict(st.scheduler)
    from framepack_cli.engine.train_state import set_rng_states

    set_rng_states(st.rng)
    got_rng = (random.random(), np.random.rand(), torch.rand(1))
    assert got_rng[:2] == expected[:2] and torch.equal(got_rng[2], expected[2])
    net2(x).square().mean().backward()
    opt2.step()
    sched2.step()
    for a, b in zip(want, net2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()
    # nothing in the state is a pickle
    names = sorted(p.name for p in (tmp_path / "run-step00000003-state").iterdir())
    assert names == ["network.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    json.loads((tmp_path / "run-step00000003-state" / "state.json").read_text())


def test_read_state_refuses_other_folders(tmp_path):
    (tmp_path / "acc").mkdir()
    (tmp_path / "acc" / "random_states_0.pkl").write_bytes(b"x")
    with pytest.raises(FramepackError, match="is an accelerate state"):
        read_state(tmp_path / "acc")
    with pytest.raises(FramepackError, match="is not a framepack training state"):
        read_state(tmp_path)


def test_newest_state_by_step(tmp_path):
    net, opt, sched = _trained()
    for step in (2, 10, 4):
        save_state(tmp_path / f"{step_stem('run', step)}-state", TrainProgress(step=step), net, opt, sched)
    assert newest_state(tmp_path, "run").name == "run-step00000010-state"
    assert newest_state(tmp_path, "other") is None


def test_names_and_ownership(tmp_path):
    assert step_stem("a", 12) == "a-step00000012" and epoch_stem("a", 3) == "a-000003"
    for name in ("a.safetensors", "a-000001.safetensors", "a-step00000002.safetensors", "a-state",
                 "a-000001-state", "ab.safetensors", "a-x.safetensors", "notes.txt"):
        (tmp_path / name).mkdir() if name.endswith("state") else (tmp_path / name).write_text("x")
    assert existing_outputs(tmp_path, "a") == ["a-000001-state", "a-000001.safetensors", "a-state",
                                               "a-step00000002.safetensors", "a.safetensors"]
    with pytest.raises(FramepackError, match=r"^--output_name: .*a-000001-state already exists \(a-000001-state, "
                                             r"a-000001.safetensors, a-state and 2 more in "):
        refuse_foreign_outputs(tmp_path, "a", [])
    refuse_foreign_outputs(tmp_path, "a", existing_outputs(tmp_path, "a"))  # all ours: fine
    own = ["a.safetensors"]
    assert not remove_own(tmp_path, "a-000001.safetensors", own) and (tmp_path / "a-000001.safetensors").exists()
    assert remove_own(tmp_path, "a.safetensors", own) and not (tmp_path / "a.safetensors").exists() and own == []


def test_retention_rules():
    # --save_every_n_epochs 2 --save_last_n_epochs 2: after epoch 6 the file of epoch 2 goes
    assert epoch_to_prune(6, 2, 2) == 2 and epoch_to_prune(4, 2, 2) is None and epoch_to_prune(6, 2, None) is None
    # --save_every_n_steps 10 --save_last_n_steps 20: after step 40 the file of step 10 goes (19 -> 10)
    assert step_to_prune(40, 10, 20) == 10 and step_to_prune(20, 10, 20) is None
