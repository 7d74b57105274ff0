"""`framepack generate --from_file` under several processes: `accelerate launch --num_processes N`, `torchrun`,
`python -m torch.distributed.run` (and `accelerate launch --cpu`, relaunched by `framepack_cli.engine.launch`).

Each process (rank) takes its own device (cuda:LOCAL_RANK on CUDA, else the CPU), loads each model once and
runs its share of the jobs; the processes talk over a gloo process group (small Python objects only), at
three points:

1. after every rank has checked every line of the jobs file (options, images, memory), before any model
   loads: a line one rank refuses is refused for all, and an error before that point (a missing model file)
   stops every rank before any work starts;
2. rank 0's plan: each job's seed (a random one is drawn once), its output name (what a single process would
   name it: `--output_name`, `_1`, `_2`... in job order, or `<start time>_<seed>`), and its rank: the jobs
   are split by their cost (sections x steps x pixels, twice with real CFG), largest first onto the least
   loaded rank, so equal jobs go round-robin (job i to rank i % N);
3. the end: rank 0 prints every file written (stdout, `Wrote <path>`, in job order, once), which jobs ran
   where (stderr) and one error line for every failure on any rank; every rank then exits with the same code.

Before point 1 only rank 0 speaks (the others would say the same); after it each rank's messages carry
`[rank R]`. An error on one rank after point 1 (out of memory loading the DiT) fails that rank's jobs only;
the others finish theirs.
"""

from __future__ import annotations

import datetime
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_cli.engine.launch import Launched, cpu_processes_requested, launched, relaunch_on_cpus
from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError, Interrupted

# Rank 0 waits at the end for the slowest rank's jobs; gloo's 30-minute default would fail a long batch.
WAIT = datetime.timedelta(days=30)
BARRIER_WAIT = datetime.timedelta(minutes=2)  # the ranks' last meeting before they leave the group
ORDER = {0: 0, 2: 1, 3: 2, 1: 3}  # which exit code wins when ranks fail differently: a bug, then resources


class RankError(FramepackError):
    """The one line rank 0 prints for failures on any rank; `exit_code` is the worst rank's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def refuse_unsplittable(opts, n: int) -> None:
    """Only `--from_file` batches are split across processes; anything else is refused in one line (exit 2)."""
    if opts.interactive:
        raise FramepackError(f"--interactive: reads prompts from one console and cannot run in {n} processes "
                             "(accelerate launch / torchrun)", hint="run `framepack generate --interactive ...` "
                             "in one process, or put the prompts in a --from_file list")
    if not opts.from_file:
        what = ("--latent_path" if opts.latent_path else "--save_merged_model" if opts.save_merged_model
                else "a single --prompt")
        raise FramepackError(f"{n} processes (accelerate launch / torchrun) split the jobs of --from_file; "
                             f"{what} runs in one process", hint="run it without accelerate launch / torchrun, "
                             "or put the jobs in a --from_file list")


def join_processes(opts, sink: ProgressSink) -> ProcessGroup | None:
    """This run's process group, or None for a plain run.

    `accelerate launch --cpu --num_processes N` (one process) is run again as N processes here (SystemExit
    with their exit code). A run that cannot be split is refused: by rank 0 in one line; the other ranks exit
    with the same code silently.
    """
    where = launched()
    if where is None:
        n = cpu_processes_requested()
        if n is None:
            return None
        refuse_unsplittable(opts, n)
        raise SystemExit(relaunch_on_cpus(n, sink, "generate"))
    try:
        refuse_unsplittable(opts, where.world)
    except FramepackError as e:
        if where.rank == 0:
            raise
        raise SystemExit(e.exit_code) from None
    return ProcessGroup(where)


def device_for(requested: str | None, where: Launched) -> str:
    """This rank's `--device`: the CPU stays the CPU; CUDA (asked or by default) is cuda:LOCAL_RANK."""
    import torch

    if requested is not None and requested.startswith("cuda:"):
        raise FramepackError(f"--device {requested}: under {where.world} processes each process uses the GPU "
                             "of its LOCAL_RANK", hint="drop --device (or give --device cuda)")
    if requested is None and not torch.cuda.is_available():
        return "cpu"
    if requested is None or requested == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and where.local_rank >= count:
            raise FramepackError(f"{where.local_world} processes on this machine but {count} CUDA GPU(s): process "
                                 f"{where.local_rank} has no GPU of its own",
                                 hint=f"launch at most {count} processes per machine (--num_processes)")
        if not count:
            return requested or "cpu"
        torch.cuda.set_device(where.local_rank)  # what a library asking for "the" GPU gets
        return f"cuda:{where.local_rank}"
    return requested


class RankSink:
    """The sink of one rank: before the split only rank 0 speaks; after it, messages carry `[rank R]` and only
    rank 0 shows progress bars. Results are held back: rank 0 prints every rank's files at the end."""

    def __init__(self, inner: ProgressSink, group: ProcessGroup) -> None:
        self.inner, self.group = inner, group

    def message(self, text: str) -> None:
        if self.group.split:
            self.inner.message(f"[rank {self.group.rank}] {text}")
        elif self.group.main:
            self.inner.message(text)

    def result(self, text: str) -> None:
        # `Wrote <path>` lines are printed at the end by rank 0, from every rank's job results
        if self.group.done and self.group.main:
            self.inner.result(text)

    def __getattr__(self, name: str) -> Any:  # progress bars: rank 0's only
        attr = getattr(self.inner, name)
        return attr if self.group.main or name == "close" else (lambda *a, **k: None)


@dataclass
class Outcome:
    """What one rank sends at a meeting point: its failure, or its data."""

    rank: int
    device: str = ""
    failure: tuple[int, str] | None = None  # (exit code, one line)
    data: dict = field(default_factory=dict)


class ProcessGroup:
    def __init__(self, where: Launched) -> None:
        self.where = where
        self.rank, self.world = where.rank, where.world
        self.main = where.rank == 0
        self.split = False  # the jobs are planned (messages carry the rank from now on)
        self.done = False  # the last meeting happened: nothing more to exchange
        self.device = "cpu"
        self.meetings = 0
        self.refused: dict[str, tuple[int, list[str]]] = {}  # bad lines (label -> exit code, error lines)
        self.assigned: dict[str, int] = {}  # job label -> its rank, in job order

    # -- talking --------------------------------------------------------------------------------------------
    def _start(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=WAIT)

    def meet(self, failure: tuple[int, str] | None = None, **data) -> list[Outcome]:
        """Every rank's outcome at this point (all ranks call it the same number of times)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, Outcome(self.rank, self.device, failure, data))
        self.meetings += 1
        return out

    # -- the run --------------------------------------------------------------------------------------------
    def run(self, fn, opts, sink: ProgressSink):
        """`fn(opts, sink, group)` on this rank; any failure on any rank ends as one line on rank 0."""
        self._start()
        rsink = RankSink(sink, self)
        interrupted = False
        try:
            try:
                self.device = device_for(opts.device, self.where)
                return fn(opts.model_copy(update={"device": self.device}), rsink, self)
            except FramepackError as e:
                if self.done:
                    raise
                line = e.message.replace("\n", "; ") + (f"; {e.hint}" if e.hint else "")
                failure = (e.exit_code, line)
            except Interrupted:
                interrupted = True
                raise  # Ctrl-C reached every rank: each says how far it got; the launcher ends the group
            except Exception as e:  # a bug on this rank: the others still report theirs
                if self.done:
                    raise
                if "--debug" in sys.argv:
                    traceback.print_exc()
                failure = (1, f"Internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)")
            self.conclude(self.meet(failure), sink)
            raise AssertionError("conclude returns only by raising")  # pragma: no cover
        finally:
            self._stop(meet=not interrupted)  # a rank stopped by Ctrl-C may never reach the barrier

    def _stop(self, meet: bool = True) -> None:
        """Leave the group. All ranks first meet at a barrier: a rank that tears its gloo connections down while
        another still holds them can abort the other at exit ("terminate called without an active exception",
        exit 134), seen once in CI."""
        import torch.distributed as dist

        if dist.is_initialized():
            if meet:
                try:
                    dist.monitored_barrier(timeout=BARRIER_WAIT)
                except Exception:  # noqa: BLE001 - a rank that is gone: leave anyway
                    pass
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a group torn down by a failed rank: nothing left to free
                pass

    def run_batch(self, opts, device, precision, sink: ProgressSink, budget=None):
        """This rank's share of `--from_file` (see the module doc)."""
        from framepack_cli.engine.generate import parse_batch
        from framepack_cli.engine.models import Models
        from framepack_cli.engine.pipeline import run_jobs

        jobs, bad = parse_batch(opts, sink, budget, quiet=not self.main)
        # 1. every rank's verdict on every line, before any model loads
        met = self.meet(bad={k: (e.exit_code, e.message.splitlines()) for k, e in bad.items()})
        if any(o.failure for o in met):
            self.conclude(met, sink)
        refused: dict[str, tuple[int, list[str]]] = {}
        for o in met:
            for label, verdict in o.data["bad"].items():
                if label not in refused:
                    refused[label] = verdict
                    if self.main and label not in bad:
                        for msg in verdict[1]:
                            sink.message(f"Error: {msg} (rank {o.rank})")
        self.refused = refused
        jobs = [j for j in jobs if j.label not in refused]
        # 2. rank 0's plan: seeds, output names, ranks
        met = self.meet(plan=plan_jobs(jobs, self.world) if self.main else None)
        if any(o.failure for o in met):
            self.conclude(met, sink)
        plan = met[0].data["plan"]
        self.split = True
        mine = []
        for job, (seed, name, rank) in zip(jobs, plan, strict=True):
            job.seed = seed
            job.opts = job.opts.model_copy(update={"output_name": name})
            if rank == self.rank:
                mine.append(job)
        self.assigned = {j.label: rank for j, (_, _, rank) in zip(jobs, plan, strict=True)}
        if mine:
            sink.message(f"{len(mine)} job(s) on {self.device}: {', '.join(j.label for j in mine)}")
            results = run_jobs(mine, Models(mine[0].opts, device, precision, sink), sink)
        else:
            sink.message(f"no job for this process ({len(jobs)} job(s) for {self.world} processes)")
            results = []
        # 3. the end
        rows = [(r.label, [str(f) for f in r.files], r.exc.exit_code if r.exc else (1 if r.error else 0))
                for r in results]
        self.conclude(self.meet(results=rows), sink)
        return results

    def conclude(self, met: list[Outcome], sink: ProgressSink) -> None:
        """Rank 0 prints the files, where each job ran and one line for all failures; every rank then exits
        with the same code (rank 0 raises the error, the others leave silently)."""
        self.done, self.split = True, False
        rows = {label: (o.rank, files, code) for o in met for label, files, code in o.data.get("results", [])}
        failures = [(o.rank, o.device, *o.failure) for o in met if o.failure]
        down = {r for r, *_ in failures}
        codes = [c for _, _, c, _ in failures] + [c for _, _, c in rows.values()]
        codes += [c for c, _ in self.refused.values()]
        code = max(codes, key=lambda c: ORDER.get(c, 3), default=0)
        lines = []
        if failures:
            texts = list(dict.fromkeys(line for *_, line in failures))
            if len(texts) == 1 and len(failures) == self.world:
                lines.append(texts[0])  # the same on every rank: a problem of the run, not of one process
            else:
                lines += [f"rank {r} ({d}): {line}" for r, d, _, line in failures]
        if self.main and self.assigned:
            for label in self.assigned:
                for f in rows.get(label, (0, [], 0))[1]:
                    sink.result(f"Wrote {f}")
            where = "; ".join(f"rank {o.rank} on {o.device}: "
                              f"{', '.join(lb for lb, r in self.assigned.items() if r == o.rank) or 'no job'}"
                              for o in met)
            failed = list(self.refused) + [f"{lb} (rank {r})" for lb, r in self.assigned.items()
                                           if (lb in rows and rows[lb][2]) or (lb not in rows and r in down)]
            total = len(self.assigned) + len(self.refused)
            done = total - len(failed)
            sink.message(f"Batch: {done} of {total} job(s) done in {self.world} processes ({where})")
            if failed:
                lines.append(f"--from_file: {len(failed)} of {total} job(s) failed: {', '.join(failed)}")
        if code == 0:
            return
        if self.main:
            raise RankError("; ".join(lines), exit_code=code)
        raise SystemExit(code)


def job_cost(opts) -> int:
    """How long a job takes, roughly: sections x steps x pixels, twice with real CFG (two DiT calls a step)."""
    from framepack_cli.engine.generate import job_sections

    h, w = opts.video_size
    return job_sections(opts) * opts.infer_steps * h * w * (2 if opts.guidance_scale != 1.0 else 1)


def plan_jobs(jobs: list, world: int) -> list[tuple[int, str, int]]:
    """(seed, output name, rank) per job (rank 0 decides; see the module doc)."""
    from framepack_cli.engine.writing import output_suffixes, timestamp
    from framepack_cli.io.outputs import unique_base

    start = timestamp()
    taken: dict[Path, set[str]] = {}
    names = []
    for job in jobs:
        folder = Path(job.opts.save_path)
        suffixes = output_suffixes(job.opts, job.one_frame)
        used = taken.setdefault(folder, set())
        name = unique_base(folder, job.opts.output_name or f"{start}_{job.seed}", suffixes, taken=used)
        used |= {name + s for s in suffixes}
        names.append(name)
    load = [0] * world
    ranks = [0] * len(jobs)
    for i in sorted(range(len(jobs)), key=lambda i: -job_cost(jobs[i].opts)):
        r = min(range(world), key=lambda r: (load[r], r))
        ranks[i] = r
        load[r] += job_cost(jobs[i].opts)
    return [(job.seed, name, r) for job, name, r in zip(jobs, names, ranks, strict=True)]
