"""Ray Data glue: stream shards, filter, and preprocess with the library's one function.

Reads are lazy and streamed: memory stays bounded by the blocks in flight, not by the
archive size. Preprocessing runs in ``map_batches`` tasks beside the training workers.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np
import ray.data
from ray.data.expressions import col

from rsir.config import DataConfig
from rsir.data.transforms import preprocess_batch

log = logging.getLogger(__name__)

RAW_COLUMNS = ["id", "split", "image", "image_t2", "bands", "captions", "changed"]


def read_split(path: str, split: str, columns: list[str] | None = None) -> ray.data.Dataset:
    """The rows of one split of the shards under ``path`` (a local path or a URI)."""
    # The filter expression is pushed down into the Parquet read.
    return ray.data.read_parquet(path, columns=columns or RAW_COLUMNS).filter(
        expr=col("split") == split
    )


def _keep_no_change(batch: dict[str, np.ndarray], fraction: float, seed: int) -> dict[str, Any]:
    """Keep every changed pair and a fixed, seeded ``fraction`` of the no-change ones."""
    changed = batch["changed"]
    keep = np.array([
        bool(c) or (np.random.default_rng([seed, zlib.crc32(str(i).encode())]).random() < fraction)
        for c, i in zip(changed, batch["id"])
    ], dtype=bool)
    return {k: v[keep] for k, v in batch.items()}


def training_dataset(cfg: DataConfig, seed: int = 0) -> ray.data.Dataset:
    """Train split -> (LEVIR-CC no-change rule) -> augmented model inputs with a caption."""
    ds = read_split(cfg.shards, cfg.train_split)
    if cfg.task == "pair" and cfg.no_change_keep_fraction < 1.0:
        ds = ds.map_batches(_keep_no_change, batch_format="numpy",
                            fn_kwargs={"fraction": cfg.no_change_keep_fraction, "seed": seed})
    return ds.randomize_block_order().map_batches(
        preprocess_batch, batch_format="numpy", batch_size=cfg.batch_size,
        fn_kwargs={"cfg": cfg, "train": True},
    )
