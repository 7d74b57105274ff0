"""The split of a `--from_file` batch across processes (no process group needed): the plan, the launch
environment, the per-rank device and rank 0's one line for every failure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from framepack_cli.engine.launch import Launched, launched, rank_env
from framepack_cli.engine.processes import Outcome, ProcessGroup, RankError, device_for, plan_jobs
from framepack_cli.errors import FramepackError


def job(seed, folder, sections=1, steps=2, name=None, size=(32, 48)):
    opts = SimpleNamespace(one_frame_inference=None, video_seconds=5.0, latent_window_size=9,
                           video_sections=sections, video_size=size, infer_steps=steps, guidance_scale=1.0,
                           output_type="both", save_path=str(folder), output_name=name)
    return SimpleNamespace(opts=opts, seed=seed, one_frame=False, label=f"line {seed}")


def test_equal_jobs_go_round_robin_and_the_largest_first(tmp_path):
    plan = plan_jobs([job(i, tmp_path) for i in range(5)], 2)
    assert [r for *_, r in plan] == [0, 1, 0, 1, 0]
    plan = plan_jobs([job(1, tmp_path), job(2, tmp_path), job(3, tmp_path, sections=2)], 2)
    assert [r for *_, r in plan] == [1, 1, 0]


def test_names_are_the_single_process_ones(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")  # a user's file: never taken
    plan = plan_jobs([job(1, tmp_path, name="clip"), job(2, tmp_path, name="clip"), job(3, tmp_path, name="clip")], 2)
    assert [n for _, n, _ in plan] == ["clip_1", "clip_2", "clip_3"]
    plan = plan_jobs([job(7, tmp_path), job(7, tmp_path), job(8, tmp_path)], 2)
    start = plan[0][1].rsplit("_", 1)[0]
    assert [n for _, n, _ in plan] == [f"{start}_7", f"{start}_7_1", f"{start}_8"]
    assert [s for s, _, _ in plan] == [7, 7, 8]


def test_launch_environment_round_trip():
    env = rank_env({}, 2, 1, "29555")
    assert launched(env) == Launched(world=2, rank=1, local_rank=1, local_world=2)
    assert env["MASTER_PORT"] == "29555" and env["MASTER_ADDR"] == "127.0.0.1"
    assert launched({}) is None and launched({"WORLD_SIZE": "1", "RANK": "0"}) is None


def test_device_per_rank():
    where = Launched(world=2, rank=1, local_rank=1, local_world=2)
    assert device_for("cpu", where) == "cpu"
    with pytest.raises(FramepackError, match=r"^--device cuda:0: under 2 processes each process uses the GPU"):
        device_for("cuda:0", where)


def group(rank=0, world=2):
    g = ProcessGroup(Launched(world=world, rank=rank, local_rank=rank, local_world=world))
    g.assigned = {"jobs.txt line 1": 0, "jobs.txt line 2": 1, "jobs.txt line 3": 0}
    return g


def test_a_failed_rank_is_one_line_with_the_worst_exit_code(capsys):
    from framepack_cli.engine.progress import NullProgress

    met = [Outcome(0, "cuda:0", None, {"results": [("jobs.txt line 1", ["a.mp4"], 0), ("jobs.txt line 3", [], 2)]}),
           Outcome(1, "cuda:1", (3, "out of GPU memory loading the DiT; use --fp8_scaled"))]
    sink = NullProgress()
    with pytest.raises(RankError) as e:
        group().conclude(met, sink)
    assert e.value.exit_code == 3
    assert e.value.message == ("rank 1 (cuda:1): out of GPU memory loading the DiT; use --fp8_scaled; --from_file: "
                               "2 of 3 job(s) failed: jobs.txt line 2 (rank 1), jobs.txt line 3 (rank 0)")
    assert sink.results == ["Wrote a.mp4"]
    assert sink.messages == ["Batch: 1 of 3 job(s) done in 2 processes (rank 0 on cuda:0: jobs.txt line 1, "
                             "jobs.txt line 3; rank 1 on cuda:1: jobs.txt line 2)"]
    with pytest.raises(SystemExit) as x:  # the other ranks leave with the same code, silently
        group(rank=1).conclude(met, sink := NullProgress())
    assert x.value.code == 3 and sink.messages == sink.results == []


def test_the_same_error_on_every_rank_is_said_once():
    met = [Outcome(r, "cpu", (2, "--dit: x.safetensors does not exist")) for r in range(2)]
    g = ProcessGroup(Launched(world=2, rank=0, local_rank=0, local_world=2))
    from framepack_cli.engine.progress import NullProgress

    with pytest.raises(RankError) as e:
        g.conclude(met, NullProgress())
    assert e.value.message == "--dit: x.safetensors does not exist" and e.value.exit_code == 2


def solo_group(monkeypatch, rank=0):
    """A group of 2 whose meetings are recorded (the other rank is played by the test)."""
    g = ProcessGroup(Launched(world=2, rank=rank, local_rank=rank, local_world=2))
    met = []
    monkeypatch.setattr(g, "_start", lambda: None)
    g.stops = []  # the `meet` flag of each leave: the ranks meet at a barrier before leaving, unless Ctrl-C
    monkeypatch.setattr(g, "_stop", lambda meet=True: g.stops.append(meet))

    def meet(failure=None, **data):
        met.append(failure)
        return [Outcome(0, "cpu", failure, data), Outcome(1, "cpu", failure, data)]

    monkeypatch.setattr(g, "meet", meet)
    return g, met


def test_an_error_before_the_split_meets_the_other_ranks_and_is_said_once(monkeypatch):
    from framepack_cli.engine.progress import NullProgress

    def fn(opts, sink, group):
        raise FramepackError("--vae: v.safetensors does not exist", hint="check the path")

    g, met = solo_group(monkeypatch)
    with pytest.raises(RankError) as e:
        g.run(fn, SimpleNamespace(device="cpu", model_copy=lambda update: None), NullProgress())
    assert met == [(2, "--vae: v.safetensors does not exist; check the path")]
    assert e.value.message == "--vae: v.safetensors does not exist; check the path" and e.value.exit_code == 2
    assert g.stops == [True]


def test_ctrl_c_is_not_turned_into_a_failure(monkeypatch):
    from framepack_cli.engine.progress import NullProgress
    from framepack_cli.errors import Interrupted

    def fn(opts, sink, group):
        raise Interrupted("Interrupted in section 1/2; nothing written")

    g, met = solo_group(monkeypatch)
    with pytest.raises(Interrupted):
        g.run(fn, SimpleNamespace(device="cpu", model_copy=lambda update: None), NullProgress())
    assert met == []
    assert g.stops == [False]  # a rank stopped by Ctrl-C leaves without waiting for the others
