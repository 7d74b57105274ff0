"""`framepack generate ...` as a whole command, plus one `REFSHIM_TIMING name seconds` line per stage on stderr.

    PYTHONPATH=$PWD python bench/framepack_timed.py generate <options>

The stages are those bench/reference_shim.py reports for the reference (a stage's time includes the stages
it calls): load_dit, prepare_inputs (image/text encoders' loads and encodings, the VAE encode), dit_sampling
(every sampler call), vae_decode, write (decode + files), total (from the interpreter's start of this file).
Nothing is changed: the functions are only wrapped with a timer.
"""

from __future__ import annotations

import sys
import time

T0 = time.perf_counter()


def main(argv: list[str]) -> int:
    from framepack_cli.engine import generate, models, one_frame, pipeline, writing

    totals: dict[str, float] = {}

    def wrap(owner, name: str, stage: str) -> None:
        fn = getattr(owner, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    wrap(models.Models, "dit", "load_dit")
    wrap(pipeline, "condition_jobs", "prepare_inputs")
    wrap(generate, "sample_unipc", "dit_sampling")
    wrap(one_frame, "sample_unipc", "dit_sampling")
    wrap(writing, "decode_to", "vae_decode")
    wrap(pipeline, "write_outputs", "write")
    sys.stderr.write(f"REFSHIM_TIMING import {time.perf_counter() - T0:.4f}\n")
    from framepack_cli.cli.app import main as cli_main

    code = 0
    try:
        cli_main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for k, v in totals.items():
            sys.stderr.write(f"REFSHIM_TIMING {k} {v:.4f}\n")
        sys.stderr.write(f"REFSHIM_TIMING total {time.perf_counter() - T0:.4f}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
