"""Training data: the cached latents and texts of every dataset, checked, bucketed and batched (training.md §1.8).

For each dataset of a (validated) dataset config, every latent cache `<cache_directory>/*_fp.safetensors`
is paired with its text cache `<cache_directory>/<item key>_fp_te.safetensors` (the item key is the file
name taken apart from the right, `plan.cache_names.parse_cache_name`), checked against what training
expects, and put into a bucket: the reference trainer's bucket key plus the names, shapes and dtypes of
every tensor the item loads, so the items of one batch always stack (the reference's key alone would mix
shapes: with `enable_bucket = false` every video maps to the configured resolution although its latents
were cached at an aspect bucket). Each item is put `num_repeats` times into its bucket; each bucket makes
`ceil(n / batch_size)` batches (the dataset's batch size; batches never mix datasets).

The order of an epoch is a pure function of `(seed, epoch)`: items are shuffled inside each bucket, then
the list of all batches is shuffled, with a private `random.Random` (never the global RNG), so worker
processes, ranks and resumed runs agree. A batch is addressed by `(epoch, position)`; `epoch_keys` says
which keys a process loads (ranks take every `world`-th position, padded by wrapping to equal counts).

Loading a batch reads both caches of every item with safetensors, normalises the keys like the reference
(`_mask` kept; the trailing `_<dtype>` removed, longest dtype name first; `latents_*` also lose their
`_FxHxW`) and stacks each along a new dim 0, in the cached dtype on the CPU.

Caches made by `framepack cache latents|text` and by musubi-tuner both load: settings are read from our
`framepack_cli.*` metadata or inferred from the stored indices (`io.cache_format.cache_settings`).

The datasets are read through their attributes only (`options.dataset.ImageDataset` / `VideoDataset` fit
`TrainDataset`); `engine.train_data.build_train_data` reads the config file and calls `train_data_from_config`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from framepack_cli.errors import FramepackError
from framepack_cli.io.cache_format import DATASET_KEY, cache_mismatches, cache_settings, read_cache_header
from framepack_cli.plan.cache_names import LATENT_SUFFIX, TEXT_SUFFIX, parse_cache_name, text_cache_name
from framepack_cli.plan.frames import select_bucket

VIDEO_MODES = ("vanilla", "f1")
LISTED = 3  # files named in one problem line before "and N more"
LATENT_CMD = "framepack cache latents --dataset_config {config} --vae <vae> --image_encoder <image_encoder>{flag}"
TEXT_CMD = "framepack cache text --dataset_config {config} --text_encoder1 <text_encoder1> " \
           "--text_encoder2 <text_encoder2>"


class TrainDataset(Protocol):
    """What training reads of a dataset (`options.dataset.ImageDataset` / `VideoDataset` fit)."""

    @property
    def index(self) -> int: ...
    @property
    def label(self) -> str: ...
    @property
    def kind(self) -> str: ...  # "image" or "video"
    @property
    def cache_directory(self) -> Path: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def num_repeats(self) -> int: ...
    @property
    def resolution(self) -> tuple[int, int]: ...
    @property
    def enable_bucket(self) -> bool: ...
    @property
    def bucket_no_upscale(self) -> bool: ...
    @property
    def fp_latent_window_size(self) -> int: ...
    @property
    def caption_extension(self) -> str | None: ...
    @property
    def control_directory(self) -> Path | None: ...
    @property
    def items(self) -> tuple[Any, ...]: ...


class TrainConfig(Protocol):
    """A loaded dataset config (`options.dataset.DatasetConfig` fits)."""

    @property
    def path(self) -> Path: ...
    @property
    def datasets(self) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class TrainItem:
    """One training sample: a latent cache and its text cache.

    Attributes:
        latent_path: the `*_fp.safetensors` latent cache.
        text_path: its `<item key>_fp_te.safetensors` text cache.
        dataset_index: the dataset's position in the config.
        bucket: the bucket key (reference key, then `(key, shape, dtype)` of every tensor loaded); the items
            of one batch share it.
    """

    latent_path: Path
    text_path: Path
    dataset_index: int
    bucket: tuple


# --------------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------------


def _dtype_names() -> tuple[str, ...]:
    names = {str(v).removeprefix("torch.") for v in vars(torch).values() if isinstance(v, torch.dtype)}
    return tuple(sorted(names, key=len, reverse=True))  # longest first: float8_e4m3fn before a shorter match


DTYPE_NAMES = _dtype_names()


def batch_key(key: str) -> str:
    """The name a cache tensor has in a training batch (the reference's normalisation, training.md §1.8).

    `*_mask` stays as it is; otherwise a trailing `_<dtype>` is removed (longest dtype name first, so
    `_float8_e4m3fn` goes whole), and `latents_*` keys also lose their trailing `_FxHxW` token.
    """
    if key.endswith("_mask"):
        return key
    for name in DTYPE_NAMES:
        if key.endswith("_" + name):
            key = key[: -len(name) - 1]
            break
    if key.startswith("latents_"):
        key = key.rsplit("_", 1)[0]
    return key


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _are(names: Sequence) -> str:
    return "is" if len(names) == 1 else "are"


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown if len(names) <= LISTED else f"{shown} and {len(names) - LISTED} more"


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """What the checks of one dataset found, problem lines grouped by kind."""

    items: list[TrainItem]
    modes: set[str]
    problems: list[str]
    warnings: list[str]


def _mode_flag(mode: str) -> str:
    return {"f1": " --f1", "one_frame": " --one_frame"}.get(mode, "")


def _reference_key(ds: Any, name: Any, video: bool) -> tuple:
    """The reference trainer's bucket key of a cache (training.md §1.8)."""
    size = (name.width, name.height)
    bucket = select_bucket(size, tuple(ds.resolution), ds.enable_bucket, ds.bucket_no_upscale)
    if video:
        return (*bucket, name.length)
    key = [*bucket, ds.fp_latent_window_size]
    clean = getattr(ds, "fp_1f_clean_indices", None)
    if clean is not None:
        key += [len(clean), bool(getattr(ds, "fp_1f_no_post", False))]
    return tuple(key)


def _signature(infos: dict, into: dict[str, str], where: Path, clashes: list[str]) -> list[tuple]:
    """`(batch key, shape, dtype)` of every tensor of a cache header; notes keys loading under one name."""
    out = []
    for raw in sorted(infos):
        key = batch_key(raw)
        if key in into:
            clashes.append(f"{where.name} ({into[key]} and {raw})")
        into[key] = raw
        out.append((key, tuple(infos[raw].shape), infos[raw].dtype))
    return out


def _scan_dataset(cfg: Any, ds: Any, video_mode: str, identity: str | None) -> _Scan:
    config = cfg.path
    where = f"{config}: {ds.label}: cache_directory"
    video = ds.kind == "video"
    mode = video_mode if video else "one_frame"
    latent_cmd = LATENT_CMD.format(config=config, flag=_mode_flag(mode))
    text_cmd = TEXT_CMD.format(config=config)
    directory = Path(ds.cache_directory)
    scan = _Scan([], set(), [], [])
    files = sorted(p for p in directory.glob(f"*{LATENT_SUFFIX}") if p.is_file()) if directory.is_dir() else []
    if not files:
        has_text = directory.is_dir() and any(directory.glob(f"*{TEXT_SUFFIX}"))
        then = "" if has_text else f", then the text caches: {text_cmd}"
        scan.problems.append(f"{where}: no latent caches (*{LATENT_SUFFIX}) in {directory}; create them first: "
                             f"{latent_cmd}{then}")
        return scan
    bad_names: list[str] = []
    unreadable: list[str] = []
    missing_text: dict[Path, list[str]] = {}
    mismatched: dict[tuple[str, str, str], list[str]] = {}
    clashes: list[str] = []
    foreign: list[str] = []
    changed: dict[str, list[str]] = {}
    expected = {"mode": mode, "latent_window_size": ds.fp_latent_window_size}
    # settings our caches record that training does not need to agree with (the caches are used as they are)
    recorded = {"resolution": tuple(ds.resolution), "enable_bucket": ds.enable_bucket,
                "bucket_no_upscale": ds.bucket_no_upscale}
    for path in files:
        try:
            name = parse_cache_name(path.name, video)
        except FramepackError:
            bad_names.append(path.name)
            continue
        text_path = directory / text_cache_name(name.item_key)
        try:
            infos, meta = read_cache_header(path)
            lines = cache_mismatches(path, expected)
            settings = cache_settings(path)
            drift = cache_mismatches(path, recorded)
        except FramepackError as e:
            unreadable.append(f"{path.name} ({str(e).removeprefix(f'{path}: ')})")
            continue
        # cache_mismatches gives one line per mismatching setting, in the order of `expected`
        wrong = [k for k, v in expected.items() if settings.get(k) not in (None, str(v))]
        for key, line in zip(wrong, lines, strict=True):
            mismatched.setdefault((key, settings[key], line.removeprefix(f"{path}: ")), []).append(path.name)
        if not text_path.is_file():
            missing_text.setdefault(text_path, []).append(path.name)
            continue
        try:
            text_infos, text_meta = read_cache_header(text_path)
        except FramepackError as e:
            line = f"{text_path.name} ({str(e).removeprefix(f'{text_path}: ')})"
            if line not in unreadable:  # shared by the sections of a clip: named once
                unreadable.append(line)
            continue
        if lines:
            continue
        for line in drift:
            changed.setdefault(line.removeprefix(f"{path}: "), []).append(path.name)
        scan.modes.add(settings.get("mode", mode))
        for f, m in ((path, meta), (text_path, text_meta)):
            if identity is not None and m.get(DATASET_KEY) not in (None, identity) and f.name not in foreign:
                foreign.append(f.name)  # a text cache is shared by the sections of a clip: named once
        seen: dict[str, str] = {}
        sig = _signature(infos, seen, path, clashes) + _signature(text_infos, seen, text_path, clashes)
        bucket = (*_reference_key(ds, name, video), tuple(sig))
        scan.items.append(TrainItem(path, text_path, ds.index, bucket))
    kind = "video" if video else "image"
    pattern = "<clip>_<start>-<length>-<section>_<W>x<H>" if video else "<image>_<W>x<H>"
    if bad_names:
        scan.problems.append(
            f"{where}: {_plural(len(bad_names), 'file')} in {directory} {_are(bad_names)} not named like a FramePack "
            f"{kind} latent cache ({pattern}{LATENT_SUFFIX}): {_listing(bad_names)}; move them out of the "
            f"cache_directory, or re-create the caches: {latent_cmd}")
    if unreadable:
        scan.problems.append(
            f"{where}: {_plural(len(unreadable), 'cache file')} in {directory} {_are(unreadable)} incomplete or "
            f"unreadable: {_listing(unreadable)}; re-create them: {latent_cmd} --skip_existing (text caches: "
            f"{text_cmd} --skip_existing)")
    for (setting, got, what), names in mismatched.items():
        other = ""
        if setting == "mode" and got == "f1" and video_mode == "vanilla":
            other = "; or train FramePack-F1 on them with --f1"
        elif setting == "mode" and got == "vanilla" and video_mode == "f1":
            other = "; or train without --f1"
        elif setting == "latent_window_size":
            other = f"; or set fp_latent_window_size = {got} in this dataset"
        scan.problems.append(
            f"{where}: {_plural(len(names), 'latent cache')} in {directory} {_are(names)} {what}: "
            f"{_listing(names)}; re-cache: {latent_cmd}{other}")
    if missing_text:
        texts = [p.name for p in missing_text]
        needed = sum(len(v) for v in missing_text.values())
        scan.problems.append(
            f"{where}: {_plural(len(texts), 'text cache')} missing in {directory}: {_listing(texts)} (needed by "
            f"{_plural(needed, 'latent cache')}); create them: {text_cmd}")
    if clashes:
        scan.problems.append(
            f"{where}: {_plural(len(clashes), 'cache file')} in {directory} {'holds' if len(clashes) == 1 else 'hold'} "
            f"two tensors that load under one name: {_listing(clashes)}; re-create them: {latent_cmd} (text caches: "
            f"{text_cmd})")
    for what, names in changed.items():
        scan.warnings.append(
            f"Warning: {where}: {_plural(len(names), 'latent cache')} in {directory} {_are(names)} {what} (the "
            f"dataset config changed since): {_listing(names)}; training uses them as cached; to apply the config, "
            f"re-cache: {latent_cmd}")
    if foreign:
        scan.warnings.append(
            f"Warning: {where}: {_plural(len(foreign), 'cache file')} in {directory} "
            f"{'was' if len(foreign) == 1 else 'were'} made by framepack for another dataset: {_listing(foreign)}; "
            f"training uses them; if they are outdated, re-create them: {latent_cmd} (text caches: {text_cmd})")
    return scan


def train_data_from_config(
    dataset_config: TrainConfig, *, seed: int, video_mode: str = "vanilla", num_timestep_buckets: int | None = None,
    warn: Callable[[str], None] = print, identity: Callable[[Any], str] | None = None,
) -> TrainData:
    """Find, check and bucket the caches of every dataset of a loaded dataset config.

    Args:
        dataset_config: the loaded config (its `path` names the file in messages and commands).
        seed: the data order's seed (`TrainData.epoch_keys`).
        video_mode: what video datasets must hold, `"vanilla"` or `"f1"` (training with `--f1`); image
            datasets always hold one-frame caches.
        num_timestep_buckets: with K > 1, per-sample timesteps from K strata of [0, 1) (training.md §1.8).
        warn: takes warning lines (`Warning: ...`): caches made for another dataset.
        identity: the dataset identity our caches record (`options.dataset.dataset_identity`); None skips
            that check.

    Raises:
        FramepackError: every problem of every dataset at once, one line each, naming the files and the
            command that fixes them: no latent caches, latent caches without their text cache, caches of
            another mode or window size, unreadable caches, different window sizes across datasets.
        ValueError: `video_mode` is not `"vanilla"` or `"f1"` (a programming error).
    """
    if video_mode not in VIDEO_MODES:
        raise ValueError(f"video_mode must be one of {VIDEO_MODES}, got {video_mode!r}")
    problems: list[str] = []
    items: list[TrainItem] = []
    modes: set[str] = set()
    for ds in dataset_config.datasets:
        scan = _scan_dataset(dataset_config, ds, video_mode, identity(ds) if identity is not None else None)
        problems += scan.problems
        items += scan.items
        modes |= scan.modes
        for line in scan.warnings:
            warn(line)
    windows = {ds.fp_latent_window_size for ds in dataset_config.datasets}
    if len(windows) > 1:
        each = ", ".join(f"{ds.label}: {ds.fp_latent_window_size}" for ds in dataset_config.datasets)
        problems.append(
            f"{dataset_config.path}: fp_latent_window_size: the datasets use different window sizes ({each}); one "
            "training run uses one: set the same fp_latent_window_size in every [[datasets]] entry and re-cache: "
            + LATENT_CMD.format(config=dataset_config.path, flag=_mode_flag(video_mode)))
    if problems:
        raise FramepackError("\n".join(problems))
    return TrainData(list(dataset_config.datasets), items, seed=seed, modes=modes, window=windows.pop(),
                     num_timestep_buckets=num_timestep_buckets)


# --------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    group: int  # index into TrainData._groups
    index: int  # batch number inside the group


def _epoch_rng(seed: int, epoch: int, stream: str) -> random.Random:
    # a str seed is hashed with SHA-512 by random.Random: stable across processes and Python runs
    return random.Random(f"framepack-train-data:{stream}:{seed}:{epoch}")


class TrainData(Dataset):
    """The batches of a training run: `__getitem__((epoch, position))` loads one (see the module docstring).

    Attributes:
        num_items: items including num_repeats.
        modes: cache modes present (`"vanilla"`, `"f1"`, `"one_frame"`).
        latent_window_size: the window size of every cache.
        seed: the data order's seed.
        num_timestep_buckets: the timestep pool's strata (None or <= 1: no pool, `timesteps` is None).
    """

    def __init__(self, datasets: list, items: list[TrainItem], *, seed: int, modes: set[str], window: int,
                 num_timestep_buckets: int | None = None) -> None:
        self.seed = int(seed)
        self.modes = set(modes)
        self.latent_window_size = int(window)
        self.num_timestep_buckets = num_timestep_buckets
        self._metadata = [_dataset_metadata(ds) for ds in datasets]
        by_group: dict[tuple[int, tuple], list[TrainItem]] = {}
        repeats = {ds.index: ds.num_repeats for ds in datasets}
        self._batch_sizes = {ds.index: ds.batch_size for ds in datasets}
        for it in items:
            by_group.setdefault((it.dataset_index, it.bucket), []).extend([it] * repeats[it.dataset_index])
        # datasets in config order, buckets sorted by key (the reference's order before shuffling)
        keys = sorted(by_group, key=lambda k: (k[0], k[1]))
        self._groups: list[tuple[int, list[TrainItem]]] = [(k[0], by_group[k]) for k in keys]
        self._batches = [_Batch(g, i) for g, (ds_index, its) in enumerate(self._groups)
                         for i in range(math.ceil(len(its) / self._batch_sizes[ds_index]))]
        self.num_items = sum(len(its) for _, its in self._groups)
        self._epoch_cache: dict[int, tuple[list[list[TrainItem]], list[list[float]] | None]] = {}

    # --- order

    def __len__(self) -> int:
        """Batches per epoch (all processes together)."""
        return len(self._batches)

    def num_batches(self, world: int = 1) -> int:
        """Batches each of `world` processes loads per epoch: `ceil(len / world)` (padded by wrapping)."""
        return math.ceil(len(self) / world) if len(self) else 0

    def _epoch(self, epoch: int) -> tuple[list[list[TrainItem]], list[list[float]] | None]:
        """The epoch's batches in order (each a list of items) and their timestep lists (or None)."""
        cached = self._epoch_cache.get(epoch)
        if cached is not None:
            return cached
        rng = _epoch_rng(self.seed, epoch, "order")
        shuffled = []
        for _, its in self._groups:
            its = list(its)
            rng.shuffle(its)
            shuffled.append(its)
        order = list(self._batches)
        rng.shuffle(order)
        batches = []
        for b in order:
            ds_index = self._groups[b.group][0]
            size = self._batch_sizes[ds_index]
            batches.append(shuffled[b.group][b.index * size : (b.index + 1) * size])
        timesteps = self._timestep_pool(epoch, batches)
        if len(self._epoch_cache) > 2:
            self._epoch_cache.clear()
        self._epoch_cache[epoch] = (batches, timesteps)
        return batches, timesteps

    def _timestep_pool(self, epoch: int, batches: list[list[TrainItem]]) -> list[list[float]] | None:
        """Stratified timesteps in [0, 1) for every sample of the epoch (training.md §1.8), or None.

        K strata `[i/K, (i+1)/K)` each give `ceil(n/K)` uniforms, with `n` = batches x batch size; the
        pool is shuffled, cut to `n` and handed out batch after batch (a short batch takes the first values
        of its share).
        """
        k = self.num_timestep_buckets
        if k is None or k <= 1:
            return None
        sizes = [self._batch_sizes[b[0].dataset_index] for b in batches]
        n = sum(sizes)
        rng = _epoch_rng(self.seed, epoch, "timesteps")
        per = math.ceil(n / k)
        pool = []
        for i in range(k):
            top = math.nextafter((i + 1) / k, 0.0)
            pool += [min((i + rng.random()) / k, top) for _ in range(per)]
        rng.shuffle(pool)
        pool = pool[:n]
        out, at = [], 0
        for batch, size in zip(batches, sizes, strict=True):
            out.append(pool[at : at + len(batch)])
            at += size
        return out

    def epoch_keys(self, epoch: int, *, rank: int = 0, world: int = 1, start: int = 0) -> list[tuple[int, int]]:
        """Keys `(epoch, position)` this process loads in `epoch`, from its `start`-th batch on.

        Rank `rank` of `world` takes positions `rank, rank + world, ...`, wrapping around past the end so
        every rank gets `ceil(len / world)` batches (DDP needs equal step counts).
        """
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}")
        total = len(self)
        if total == 0:
            return []
        positions = [(rank + i * world) % total for i in range(self.num_batches(world))]
        return [(epoch, p) for p in positions[start:]]

    # --- loading

    def items(self, key: tuple[int, int]) -> list[TrainItem]:
        """The items of the batch at `key` `(epoch, position)`."""
        epoch, position = key
        return list(self._epoch(epoch)[0][position])

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """Load the batch at `key` `(epoch, position)`: stacked tensors (CPU, cached dtype) under the
        reference's batch keys, `timesteps` (list of floats or None) and `item_keys` (stable sample ids:
        `<dataset index>/<latent cache file name>`)."""
        from safetensors.torch import load_file

        epoch, position = key
        batches, timesteps = self._epoch(epoch)
        batch = batches[position]
        stacks: dict[str, list[torch.Tensor]] = {}
        for it in batch:
            for path in (it.latent_path, it.text_path):
                try:
                    tensors = load_file(str(path))
                except (OSError, RuntimeError) as e:
                    raise FramepackError(f"{path}: cannot read cache file ({e}); re-create it with framepack cache "
                                         "latents / framepack cache text --skip_existing") from None
                for raw in sorted(tensors):  # the reference's key order (sorted, latent cache first)
                    stacks.setdefault(batch_key(raw), []).append(tensors[raw])
        out: dict[str, Any] = {k: torch.stack(v) for k, v in stacks.items()}
        out["timesteps"] = timesteps[position] if timesteps is not None else None
        out["item_keys"] = [f"{it.dataset_index}/{it.latent_path.name}" for it in batch]
        return out

    def datasets_metadata(self) -> list[dict]:
        """The reference's `ss_datasets` entries, one per dataset (training.md §4.14)."""
        return [dict(m) for m in self._metadata]


def _dataset_metadata(ds: Any) -> dict:
    meta: dict[str, Any] = {
        "resolution": list(ds.resolution), "caption_extension": ds.caption_extension,
        "batch_size_per_device": ds.batch_size, "num_repeats": ds.num_repeats,
        "enable_bucket": bool(ds.enable_bucket), "bucket_no_upscale": bool(ds.bucket_no_upscale),
    }
    keys = ("image_directory", "image_jsonl_file") if ds.kind == "image" else ("video_directory", "video_jsonl_file")
    for key in (*keys, "control_directory"):
        value = getattr(ds, key, None)
        if value is not None:
            meta[key] = os.path.basename(os.path.normpath(str(value)))
    if ds.kind == "video":
        meta.update(frame_extraction=ds.frame_extraction, frame_stride=ds.frame_stride, frame_sample=ds.frame_sample,
                    target_frames=list(ds.target_frames), max_frames=ds.max_frames, source_fps=ds.source_fps)
    items = getattr(ds, "items", ())
    meta["has_control"] = ds.control_directory is not None or any(
        getattr(it, "controls", None) or getattr(it, "control", None) for it in items)
    return meta


# --------------------------------------------------------------------------------------------------
# Sampler and loader
# --------------------------------------------------------------------------------------------------


class EpochSampler(Sampler):
    """Yields `data.epoch_keys(epoch, rank, world, start)` for the epoch `set_epoch` chose (epoch 0 at first).

    For `DataLoader(data, sampler=s, batch_size=None, ...)`: each key is one whole batch.
    """

    def __init__(self, data: TrainData, rank: int = 0, world: int = 1) -> None:
        self.data, self.rank, self.world = data, rank, world
        self.epoch, self.start = 0, 0
        data.epoch_keys(0, rank=rank, world=world)  # checks rank / world

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields `epoch`'s keys from this rank's `start`-th batch on."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.data.epoch_keys(self.epoch, rank=self.rank, world=self.world, start=self.start))

    def __len__(self) -> int:
        return max(0, self.data.num_batches(self.world) - self.start)


def _whole_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def make_loader(data: TrainData, sampler: EpochSampler, *, workers: int, persistent: bool) -> DataLoader:
    """A DataLoader over whole batches; `workers` is capped at the CPU count, `persistent` only applies
    with workers (without any it is a silent no-op). The loader has its own RNG (fixed seed: the order comes
    from the sampler, and batches draw nothing), so starting an epoch never consumes torch's global RNG,
    which dropout uses and a resumed run restores."""
    n = max(0, min(int(workers), os.cpu_count() or 1))
    return DataLoader(data, sampler=sampler, batch_size=None, num_workers=n, collate_fn=_whole_batch,
                      persistent_workers=bool(persistent) and n > 0,
                      generator=torch.Generator().manual_seed(0))
