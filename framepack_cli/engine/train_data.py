"""The training data of `framepack train`: the dataset config read like `framepack cache` reads it, its caches
found, checked and batched by `io.train_data` (which does not import options: it reads datasets through
their attributes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from framepack_cli.io.train_data import EpochSampler, TrainData, TrainItem, make_loader, train_data_from_config
from framepack_cli.options.dataset import DatasetConfig, dataset_identity, load_dataset_config

__all__ = ["EpochSampler", "TrainData", "TrainItem", "build_train_data", "make_loader"]


def build_train_data(dataset_config: str | Path | DatasetConfig, *, seed: int, video_mode: str = "vanilla",
                     num_timestep_buckets: int | None = None, warn: Callable[[str], None] = print) -> TrainData:
    """Read the dataset config (the parser of `framepack cache`), find every latent cache
    (`<cache_directory>/*_fp.safetensors`) and its text cache (`<cache_directory>/<item key>_fp_te.safetensors`),
    check them and group them into buckets and batches.

    Args:
        dataset_config: the `.toml` / `.json` file (or an already loaded config).
        seed: the data order's seed.
        video_mode: `"vanilla"`, or `"f1"` when training FramePack-F1 (`--f1`): what video datasets must hold.
        num_timestep_buckets: `--num_timestep_buckets` (None or <= 1: no timestep pool).
        warn: takes warning lines (the config's harmless oddities, caches made for another dataset or with
            other bucket settings).

    Raises:
        FramepackError: the config's problems, or every cache problem at once (see
            `io.train_data.train_data_from_config`).
    """
    cfg = dataset_config if isinstance(dataset_config, DatasetConfig) else load_dataset_config(dataset_config)
    for line in cfg.warnings:
        warn(f"Warning: {line}")
    return train_data_from_config(cfg, seed=seed, video_mode=video_mode, num_timestep_buckets=num_timestep_buckets,
                                  warn=warn, identity=dataset_identity)
