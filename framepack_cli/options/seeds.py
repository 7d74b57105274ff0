"""`--seed` lists and ranges and `--count`: several jobs of one command line (torch-free).

`--seed 42` stays one integer; `--seed 1 2 3` and `--seed 10-13` (inclusive) become a list of seeds, and
`--count N` makes N seeds: `SEED, SEED+1, ...` from a single `--seed`, or N random ones without it (each drawn
once, printed and stored in its outputs). Every seed is one job; the engine runs them as a batch (models loaded
once), and each output name carries its seed.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pydantic_core import PydanticCustomError

SEED_LIMIT = 2**64
RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
MAX_SEEDS = 10_000  # a range this long is a typo (`--seed 1-100000`), not a plan


def _one(text: Any) -> list[int]:
    if isinstance(text, bool):
        raise PydanticCustomError("int_type", "not an integer")
    if isinstance(text, int):
        values = [text]
    elif isinstance(text, str) and (m := RANGE.match(text)):
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise PydanticCustomError("seed_range", "a range goes up: FIRST-LAST with FIRST <= LAST, like 10-13")
        if b - a + 1 > MAX_SEEDS:
            raise PydanticCustomError("seed_range", f"at most {MAX_SEEDS} seeds in one range")
        values = list(range(a, b + 1))
    else:
        try:
            values = [int(str(text).strip())]
        except ValueError:
            raise PydanticCustomError("int_parsing", "not an integer") from None
    for v in values:
        if v < 0:
            raise PydanticCustomError("greater_than_equal", "too small", {"ge": 0})
        if v >= SEED_LIMIT:
            raise PydanticCustomError("less_than", "too large", {"lt": SEED_LIMIT})
    return values


def parse_seeds(value: Any) -> int | list[int] | None:
    """The `--seed` value: None, one int (`42`, `["42"]`), or a list of ints (`["1", "2"]`, `["10-13"]`).

    Raises:
        PydanticCustomError: a value that is not a seed; rendered `--seed: 'abc' is not an integer`.
    """
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    seeds = [s for item in items for s in _one(item)]
    if not seeds:
        return None
    if len(seeds) == 1 and not (isinstance(items[0], str) and RANGE.match(items[0])):
        return seeds[0]
    return seeds


def seed_errors(o) -> list[str]:
    """Cross-field problems of `--seed` lists and `--count` (one line each, naming the flags)."""
    errs: list[str] = []
    several = isinstance(o.seed, list) and len(o.seed) > 1
    if o.count is not None and several:
        errs.append(f"--count {o.count} with {len(o.seed)} seeds in --seed: give --count with one seed (the first "
                    "of a run of consecutive seeds) or list the seeds without --count")
    if o.count is not None and isinstance(o.seed, int) and o.seed + o.count > SEED_LIMIT:
        errs.append(f"--count {o.count} from --seed {o.seed} runs past the largest seed ({SEED_LIMIT - 1}); "
                    "start from a smaller --seed")
    if several or o.count is not None:
        flag = "--count" if o.count is not None else "--seed with several values"
        for other, given in (("--from_file", o.from_file), ("--interactive", o.interactive),
                             ("--latent_path", o.latent_path), ("--save_merged_model", o.save_merged_model)):
            if given:
                fix = "put one seed per line (--d SEED)" if other in ("--from_file", "--interactive") else \
                    "nothing is sampled there"
                errs.append(f"{flag} cannot be combined with {other}; {fix}")
    return errs


def job_seeds(seed: int | list[int] | None, count: int | None, rng: random.Random | None = None) -> list[int | None]:
    """The seed of each job: one entry (`None` = random, drawn by the job) for a plain run."""
    if isinstance(seed, list):
        return list(seed)
    if count is None:
        return [seed]
    if seed is not None:
        return [seed + i for i in range(count)]
    rng = rng or random.Random()
    seeds: list[int] = []
    while len(seeds) < count:  # distinct: N random videos, not two of the same
        s = rng.randint(0, 2**32 - 1)
        if s not in seeds:
            seeds.append(s)
    return seeds
