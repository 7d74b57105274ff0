"""`--seed 1 2 3`, `--seed 10-13`, `--count N`: one job per seed, run as a batch (models loaded once).

Each job is the command line's options with its own seed; with `--output_name NAME` its outputs are named
`NAME_<seed>` (the default `<timestamp>_<seed>` carries the seed already). A failed job is reported and the
others still run; the run then fails with one line naming the failed seeds (exit 3 when one ran short of memory
or disk).
"""

from __future__ import annotations

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError, ResourceError
from framepack_cli.options.seeds import job_seeds


def several_seeds(opts) -> bool:
    """Whether the command line asks for several jobs (`--seed` with several values, or `--count`)."""
    return isinstance(opts.seed, list) or opts.count is not None


def seed_options(opts) -> list:
    """The options of each job: `seed` set to one value, `count` cleared, the output name carrying the seed."""
    out = []
    for seed in job_seeds(opts.seed, opts.count):
        update: dict = {"seed": seed, "count": None}
        if opts.output_name:
            update["output_name"] = f"{opts.output_name}_{seed}"
        out.append(opts.model_copy(update=update))
    return out


def run_seeds(opts, models, sink: ProgressSink, run_jobs, make_job) -> list:
    """Run every seed's job through `run_jobs` with one `Models`; raise one line naming the failed seeds."""
    jobs = [make_job(o, label=f"seed {o.seed}") for o in seed_options(opts)]
    sink.message(f"{len(jobs)} job(s), seeds {', '.join(str(j.seed) for j in jobs)}")
    results = run_jobs(jobs, models, sink)
    failed = [r for r in results if r.error]
    if failed:
        short = any(isinstance(r.exc, ResourceError) for r in failed)
        error = ResourceError if short else FramepackError
        raise error(f"--seed: {len(failed)} of {len(results)} job(s) failed: "
                    f"{', '.join(r.label for r in failed)} (the others were written)")
    return results
