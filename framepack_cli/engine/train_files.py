"""Names, retention and ownership of the files `framepack train` writes in `--output_dir`.

Names (the reference's): step checkpoints `<name>-step00000100.safetensors`, epoch checkpoints
`<name>-000002.safetensors`, the final `<name>.safetensors`; states `<name>-step00000100-state`,
`<name>-000002-state`, `<name>-state`. A run only replaces or prunes files it wrote itself (recorded in its
progress, carried across a resume); any other file under one of these names stops the run before it starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from framepack_cli.errors import FramepackError

LORA_SUFFIX = ".safetensors"
STATE_SUFFIX = "-state"


def step_stem(name: str, step: int) -> str:
    return f"{name}-step{step:08d}"


def epoch_stem(name: str, epoch: int) -> str:
    return f"{name}-{epoch:06d}"


def output_pattern(name: str) -> re.Pattern[str]:
    """Every name a run with `--output_name name` may write (checkpoints, final file, states)."""
    n = re.escape(name)
    return re.compile(rf"^{n}(-step\d{{8}}|-\d{{6}})?({re.escape(LORA_SUFFIX)}|{STATE_SUFFIX})$")


def existing_outputs(output_dir: Path, name: str) -> list[str]:
    """Names in `output_dir` that this run could write (sorted)."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    pat = output_pattern(name)
    return sorted(p.name for p in d.iterdir() if pat.match(p.name))


def refuse_foreign_outputs(output_dir: Path, name: str, own: list[str]) -> None:
    """Stop before training when `output_dir` holds files under this run's names that it did not write.

    Raises:
        FramepackError: naming the files and what to do.
    """
    foreign = [n for n in existing_outputs(output_dir, name) if n not in set(own)]
    if not foreign:
        return
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise FramepackError(
        f"--output_name: {Path(output_dir) / foreign[0]} already exists ({shown} in {output_dir}, from another "
        "run); framepack never overwrites them",
        hint="choose another --output_name or --output_dir, move those files, or continue that run with "
             "--resume <its state folder>")


def remove_own(output_dir: Path, entry: str, own: list[str]) -> bool:
    """Delete a checkpoint file or state folder this run wrote (True when removed); anything else stays."""
    if entry not in own:
        return False
    p = Path(output_dir) / entry
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()
    own.remove(entry)
    return True


def epoch_to_prune(epoch: int, every: int, keep: int | None) -> int | None:
    """The epoch checkpoint that `--save_last_n_epochs keep` removes after saving epoch `epoch` (1-based), or
    None: the one `every * keep` epochs back."""
    if not keep:
        return None
    old = epoch - every * keep
    return old if old > 0 else None


def step_to_prune(step: int, every: int, keep: int | None) -> int | None:
    """The step checkpoint that `--save_last_n_steps keep` removes after saving at `step` (the reference's rule:
    `step - keep - 1` rounded down to a multiple of `every`), or None."""
    if not keep:
        return None
    old = step - keep - 1
    old -= old % every
    return old if old > 0 else None
