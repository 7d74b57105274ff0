"""Resume after a crash: a checkpoint after each section of a video job, and `--resume` continuing from it.

After each section a video job writes `<save_path>/.<output_name>.resume.safetensors` (temp file, then rename):
tensors `history` (the latents so far: the context of the next sections and, at the end, the video), `rng_state`
(the CPU generator that draws each section's noise: `torch.Generator.get_state()`), `position` (next section
in generation order, latent frames so far, sections); metadata: the job's validated options as JSON, the flags it
was given, the model files' size + header hash (`framepack_cli.options.resume`). No pickle anywhere. The file
is removed once the job's outputs are written; `--no_resume_file` writes none. One-frame jobs (one section) and
`--interactive` prompts write none.

A `--from_file` batch also keeps `<save_path>/.<from_file name>.batch.resume.json`: the run's settings, the
prompt file's hash, and per job (`FILE line N`) its checkpoint's name and, once written, its files. `--resume`
on it skips the jobs that were written, continues the one that was interrupted (a job sampled to the end but not
yet decoded goes straight to decoding) and runs the rest; the file is removed when the batch finishes.

Resuming restores the history and the generator state, so on CPU the remaining sections draw the same noise
from the same context: the latents are bit-identical to an uninterrupted run (the tests check it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.errors import FramepackError
from framepack_cli.options.resume import (
    BATCH_SUFFIX,
    CHECKPOINT_SUFFIX,
    FORMAT_VERSION,
    MODEL_FIELDS,
    find_checkpoint,
    model_fingerprints,
)

RUN_ONLY = ("resume", "no_resume_file", "from_file", "interactive", "keep_models")  # not a job's settings
ABSOLUTE = (*MODEL_FIELDS, "tokenizer1", "tokenizer2", "end_image_path", "save_path")


def _absolute(name: str, v):
    if v is None:
        return v
    if isinstance(v, list):
        return [str(Path(x).resolve()) for x in v]
    return str(Path(v).resolve())


def run_settings(opts, drop=("resume", "no_resume_file")) -> tuple[dict, list[str]]:
    """All options as JSON (paths made absolute, so a resume from another folder finds the files) and the names
    of those the run was given."""
    values = opts.model_dump(mode="json")
    for name in ABSOLUTE:
        if name in values:
            values[name] = _absolute(name, values[name])
    for name in drop:
        values.pop(name, None)
    return values, sorted(set(opts.model_fields_set) - set(drop))


def job_settings(opts, seed: int, output_name: str) -> tuple[dict, list[str]]:
    """The options a job checkpoint records: the job's, with its seed (also a random one) and output name."""
    values, given = run_settings(opts, RUN_ONLY)
    values.update(seed=seed, output_name=output_name)
    return values, sorted({*given, "seed", "output_name"})


_KEPT: dict[Path, None] = {}  # checkpoints this process wrote and has not removed (for the Ctrl-C line)


def kept_line(path: Path | None = None) -> str | None:
    """After Ctrl-C or a failed job: where the checkpoint is and the command that continues (None when none was
    written). `path`: that job's checkpoint (default: the newest this process wrote and still has)."""
    live = [p for p in ([path] if path is not None else _KEPT) if p.exists()]
    if not live:
        return None
    return (f"Checkpoint kept: {live[-1]}; continue with `framepack generate --resume {live[-1]}` "
            f"(or --resume {live[-1].parent} for the newest there)")


class SectionCheckpoint:
    """The checkpoint of one video job: `restore` before the section loop, `save` after each section."""

    def __init__(self, path: Path, settings: dict, given: list[str], sink: ProgressSink, *, write: bool = True,
                 state: dict[str, torch.Tensor] | None = None) -> None:
        self.path, self.settings, self.given, self.sink = path, settings, given, sink
        self.write, self.state = write, state
        self.models = json.dumps(model_fingerprints(settings), sort_keys=True)
        self.images = json.dumps(input_images(settings), sort_keys=True)
        self.on_removed = None  # batch: called with the files once the job's outputs are written

    def restore(self, history: torch.Tensor, total: int, generator: torch.Generator, n: int):
        """(history, total, first section to sample): the checkpoint's, or the fresh run's (first = 0)."""
        if self.state is None:
            return history, total, 0
        first, done_total, sections = (int(x) for x in self.state["position"].tolist())
        saved = self.state["history"]
        if sections != n or saved.shape[:2] != history.shape[:2] or saved.shape[3:] != history.shape[3:]:
            raise FramepackError(f"--resume: {self.path} holds {sections} section(s) of latents "
                                 f"{list(saved.shape)}, this job plans {n} of {list(history.shape[3:])}; "
                                 "it belongs to another run")
        generator.set_state(self.state["rng_state"])
        left = f"continuing with section {first + 1}" if first < n else "all sampled, decoding"
        self.sink.message(f"Resuming {self.path}: {first} of {n} section(s) done, {left}")
        return saved.clone(), done_total, first

    def save(self, next_section: int, n: int, history: torch.Tensor, total: int, generator: torch.Generator) -> None:
        """Write the state after a section (temp file, then rename); a failed write warns once and stops them."""
        if not self.write:
            return
        from safetensors.torch import save_file

        tensors = {"history": history.contiguous(), "rng_state": generator.get_state(),
                   "position": torch.tensor([next_section, total, n], dtype=torch.int64)}
        meta = {"framepack_resume": FORMAT_VERSION, "settings": json.dumps(self.settings, sort_keys=True),
                "given": json.dumps(self.given), "models": self.models, "images": self.images,
                "next_section": str(next_section), "sections": str(n)}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, self.path)
            _KEPT[self.path] = None
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.write = False
            self.sink.message(f"Warning: could not write the resume checkpoint {self.path} ({e.strerror or e}); "
                              "the run goes on without one (free some space in --save_path to have it again)")

    def done(self, files) -> None:
        """The job's outputs are written: the checkpoint goes."""
        self.path.unlink(missing_ok=True)
        _KEPT.pop(self.path, None)
        if self.on_removed is not None:
            self.on_removed(files)


class NoCheckpoint:
    """No checkpoint (`--no_resume_file`, one-frame, interactive): nothing restored, nothing written."""

    def restore(self, history, total, generator, n):
        return history, total, 0

    def save(self, *args) -> None:
        pass


def input_images(settings: dict) -> dict[str, str]:
    """sha256 of each input image file a job reads (absolute path -> digest)."""
    from framepack_cli.io.hashing import sha256_file
    from framepack_cli.options.sections import parse_section_values

    paths = set(parse_section_values(settings["image_path"]).values()) if settings.get("image_path") else set()
    paths |= {settings["end_image_path"]} if settings.get("end_image_path") else set()
    found = {str(Path(p).resolve()) for p in paths if p and Path(p).is_file()}
    return {p: sha256_file(p) for p in sorted(found)}


def section_checkpoint(job) -> SectionCheckpoint | NoCheckpoint:
    """The checkpoint a job's section loop uses (`attach` sets it)."""
    return getattr(job, "checkpoint", None) or NoCheckpoint()


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise FramepackError(f"--resume: {path} cannot be read ({e}); it is damaged, start a new run without "
                             "--resume") from None
    missing = {"history", "rng_state", "position"} - set(state)
    if missing:
        raise FramepackError(f"--resume: {path} lacks {', '.join(sorted(missing))}; it is not a complete "
                             "checkpoint, start a new run without --resume")
    return state


def fresh_path(save_dir: Path, base: str, taken: set[str], sink: ProgressSink) -> tuple[Path, str]:
    """A checkpoint path for a new job: `.<base>.resume.safetensors`, or `<base>_N` when another run's
    interrupted checkpoint is there (it is kept, and said)."""
    name, k = base, 0
    while (save_dir / f".{name}{CHECKPOINT_SUFFIX}").exists() or name in taken:
        if name not in taken:
            old = save_dir / f".{name}{CHECKPOINT_SUFFIX}"
            sink.message(f"Warning: {old} holds an interrupted run (continue it with --resume {old}); this run "
                         "keeps it and checkpoints under another name")
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return save_dir / f".{name}{CHECKPOINT_SUFFIX}", name


def attach(job, opts, sink: ProgressSink, *, taken: set[str] | None = None, resume_from: Path | None = None,
           batch: BatchRecord | None = None) -> None:
    """Give a video job its checkpoint: a fresh one, or `resume_from`'s state (read before any model loads)."""
    if job.one_frame or (opts.no_resume_file and resume_from is None):
        if batch is not None:
            batch.track(job, None)
        return
    from framepack_cli.engine.writing import timestamp

    taken = set() if taken is None else taken
    if resume_from is not None:
        from framepack_cli.options.resume import image_mismatch

        state = load_state(resume_from)
        if (changed := image_mismatch(json.loads(_meta(resume_from).get("images", "{}")))) is not None:
            raise FramepackError(changed)  # a batch job's images (a single run's were checked with the options)
        settings = json.loads(_meta(resume_from)["settings"])
        given = json.loads(_meta(resume_from)["given"])
        ck = SectionCheckpoint(resume_from, settings, given, sink, write=not opts.no_resume_file, state=state)
        job.seed = int(settings["seed"])  # a batch line without --d drew a random seed: the checkpoint's
        taken.add(resume_from.name[1:].removesuffix(CHECKPOINT_SUFFIX))
    else:
        base = opts.output_name or f"{timestamp()}_{job.seed}"
        path, name = fresh_path(Path(opts.save_path), base, taken, sink)
        settings, given = job_settings(job.opts, job.seed, opts.output_name or name)
        ck = SectionCheckpoint(path, settings, given, sink)
    job.checkpoint = ck
    job.on_written = ck.done
    if batch is not None:
        batch.track(job, ck)


def _meta(path: Path) -> dict[str, str]:
    from framepack_cli.options.resume import header_metadata

    return header_metadata(path)


def resume_file(opts, sink: ProgressSink) -> Path | None:
    """The checkpoint `--resume` names (saying which one when the folder held several), or None."""
    if not opts.resume:
        return None
    try:
        path, note = find_checkpoint(opts.resume)
    except ValueError as e:
        raise FramepackError(str(e)) from None
    if note:
        sink.message(note)
    return path


def attach_single(job, opts, sink: ProgressSink) -> None:
    """The checkpoint of a plain (one-job) run."""
    path = resume_file(opts, sink)
    if path is not None and path.name.endswith(BATCH_SUFFIX):
        raise FramepackError(f"--resume: {path} is a --from_file batch checkpoint; pass --from_file too, or a job "
                             f"checkpoint (.NAME{CHECKPOINT_SUFFIX})")
    attach(job, opts, sink, resume_from=path)


def sha256_text(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class BatchRecord:
    """`.<from_file name>.batch.resume.json`: which jobs of a batch are written and where the others stand."""

    def __init__(self, opts, sink: ProgressSink) -> None:
        self.sink = sink
        self.opts = opts
        src = Path(opts.from_file)
        self.path = Path(opts.save_path) / f".{src.name}{BATCH_SUFFIX}"
        self.resumed = resume_file(opts, sink)
        if self.resumed is not None and not self.resumed.name.endswith(BATCH_SUFFIX):
            raise FramepackError(f"--resume: {self.resumed} is the checkpoint of one job; resume it without "
                                 "--from_file, or pass the batch's .NAME" + BATCH_SUFFIX)
        self.data = {"version": 1, "from_file": str(src.resolve()), "from_file_sha256": sha256_text(src),
                     "jobs": {}}
        if self.resumed is not None:
            old = json.loads(self.resumed.read_text(encoding="utf-8"))
            if old["from_file_sha256"] != self.data["from_file_sha256"]:
                raise FramepackError(f"--resume: {src} changed since the batch in {self.resumed} was interrupted "
                                     "(its lines name the jobs); restore it, or start a new batch without --resume")
            self.path = self.resumed
            self.data["jobs"] = old["jobs"]
        values, given = run_settings(opts)
        self.data.update(settings=values, given=given, models=model_fingerprints(values))

    def prepare(self, jobs: list) -> list:
        """Attach every job's checkpoint; returns the jobs still to run (written ones are said and skipped)."""
        todo, taken = [], {rec["checkpoint"][1:].removesuffix(CHECKPOINT_SUFFIX)
                           for rec in self.data["jobs"].values() if rec.get("checkpoint")}
        for job in jobs:
            rec = self.data["jobs"].get(job.label)
            if rec and rec.get("files") is not None:
                self.sink.message(f"{job.label}: done before the interruption ({', '.join(rec['files']) or 'no files'}"
                                  "), skipped")
                continue
            todo.append(job)
            ck_path = Path(self.opts.save_path) / rec["checkpoint"] if rec and rec.get("checkpoint") else None
            if ck_path is not None and ck_path.is_file():
                attach(job, self.opts, self.sink, taken=taken, resume_from=ck_path, batch=self)
            else:
                attach(job, self.opts, self.sink, taken=taken, batch=self)
        self._write()
        return todo

    def track(self, job, ck: SectionCheckpoint | None) -> None:
        """Record the job's checkpoint now and its files once written (a one-frame job has no checkpoint)."""
        self.data["jobs"][job.label] = {"checkpoint": ck.path.name if ck else None, "files": None}

        def written(files) -> None:
            self.data["jobs"][job.label]["files"] = [str(f) for f in files]
            self._write()

        if ck is None:
            job.on_written = written
        else:
            ck.on_removed = written

    def _write(self) -> None:
        if self.opts.no_resume_file and self.resumed is None:
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.sink.message(f"Warning: could not write the batch checkpoint {self.path} ({e.strerror or e})")

    def finish(self) -> None:
        """The batch ran to its end: its record goes (failed jobs keep their own checkpoints)."""
        self.path.unlink(missing_ok=True)
