"""Ray Data glue: stream shards, filter, and preprocess with the library's one function.

Reads are lazy and streamed: memory stays bounded by the blocks in flight, not by the
archive size, except in training, whose global shuffle holds the training split's encoded
rows (one per caption) in the object store (spilled to disk beyond it). Preprocessing runs
in ``map_batches`` tasks beside the training workers; the rows it drops (corrupt images,
bad rows) are tallied by a :class:`DropCounter`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import ray.data
from ray.actor import ActorHandle
from ray.data import RandomSeedConfig
from ray.data.expressions import col

from rsir.config import DataConfig
from rsir.data.contract import InputContract
from rsir.data.transforms import DroppedRow, caption_groups, log_dropped, preprocess_rows

log = logging.getLogger(__name__)


def read_split(
    path: str, split: str | Sequence[str], columns: Sequence[str], shuffle_files: bool = False,
) -> ray.data.Dataset:
    """The rows of one split (or of several) of the shards under ``path`` (a local path or
    a URI), with ``columns`` (a recipe's ``InputContract.columns``).

    One read task per shard; ``shuffle_files`` reads the shards in a new random order
    each time the dataset is executed (each epoch).
    """
    ctx = ray.data.DataContext.get_current()
    # Ray's Parquet reader V2 lists files with 32 footer-reading actors on every execution:
    # seconds of actor start-up per epoch on a small node. A dataset keeps the reader it
    # was created with, so V1 is switched on for this call only.
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(
            path, columns=list(columns), shuffle="files" if shuffle_files else None,
            override_num_blocks=len(pads.dataset(path, format="parquet").files))
    finally:
        ctx.use_datasource_v2 = v2
    # The filter expression is pushed down into the Parquet read.
    splits = [split] if isinstance(split, str) else list(split)
    return ds.filter(expr=col("split").is_in(splits))


def _keep_no_change(table: pa.Table, fraction: float, seed: int) -> pa.Table:
    """Keep every changed pair and a fixed, seeded ``fraction`` of the no-change ones (the
    same ones every epoch: the draw is seeded by the id). Arrow in and out, so every column
    keeps its type (a numpy batch turned ``bands`` into objects Arrow could not convert)."""
    keep = [
        bool(c) or (np.random.default_rng([seed, zlib.crc32(str(i).encode())]).random() < fraction)
        for c, i in zip(table.column("changed").to_pylist(), table.column("id").to_pylist())
    ]
    return table.filter(pa.array(keep, type=pa.bool_()))


def _one_row_per_caption(table: pa.Table, language: str, languages: Sequence[str]) -> pa.Table:
    """Each row repeated once per caption group (:func:`caption_groups`), each copy with
    only its group's captions. Arrow in and out, like :func:`_keep_no_change`."""
    groups = [caption_groups(c, language, languages) for c in table.column("captions").to_pylist()]
    out = table.take(pa.array([i for i, g in enumerate(groups) for _ in g], type=pa.int64()))
    captions = pa.array([c for g in groups for c in g], type=table.schema.field("captions").type)
    return out.set_column(out.schema.get_field_index("captions"), "captions", captions)


@ray.remote(num_cpus=0)
class DropCounter:
    """The rows preprocessing dropped from a dataset, by id, over all its map tasks and epochs."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self.reads = 0

    def add(self, dropped: list[DroppedRow]) -> None:
        self.reads += len(dropped)
        for d in dropped:
            self.reasons.setdefault(d.id, d.reason)

    def summary(self) -> dict[str, Any]:
        """``rows``: distinct rows dropped; ``reads``: drops over every pass (epoch) of the
        dataset; ``examples``: up to 10 ``id -> reason``."""
        return {"rows": len(self.reasons), "reads": self.reads,
                "examples": dict(list(self.reasons.items())[:10])}


def preprocess_counted(
    block: dict[str, np.ndarray], cfg: DataConfig, train: bool, fields: Sequence[str] = (),
    counter: ActorHandle | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` function: the library's preprocessing, ``cfg.batch_size`` rows at a time
    (the rows of a whole read block come in), the model's ``fields`` carried along, with what
    it drops logged and counted."""
    for start in range(0, len(block["id"]), cfg.batch_size):
        batch = {k: v[start: start + cfg.batch_size] for k, v in block.items()}
        out, dropped = preprocess_rows(batch, cfg, train, fields=fields)
        log_dropped(dropped, len(batch["id"]))
        if dropped and counter is not None:
            # Wait for the count to land (only when a batch had bad rows): a total read
            # after the last batch was consumed then includes every batch.
            ray.get(counter.add.remote(dropped))
        yield out


def training_dataset(cfg: DataConfig, contract: InputContract, seed: int = 0,
                     counter: ActorHandle | None = None) -> ray.data.Dataset:
    """Train split -> (LEVIR-CC no-change rule) -> one row per caption (``data.captions``)
    -> a global random shuffle -> augmented model inputs with a caption and the model's
    fields: the batches hold ``contract.batch_keys``.

    The shuffle is a uniform permutation of the whole split, a new one each time the dataset
    is executed (each epoch), seeded by ``seed`` and the execution count (Ray Data's
    ``RandomSeedConfig(reseed_after_execution=True)``; the count starts again when a
    run resumes, so a resumed run replays the first epochs' orders). A local buffer over shards read in
    file order could not mix a split that is sorted (LEVIR-CC's ends in hundreds of
    consecutive no-change pairs); the cost is a barrier: the first batch waits for the
    whole split's reads (its encoded bytes, not its tensors: preprocessing comes after).
    With a :class:`DropCounter`, every row preprocessing drops is counted there.
    """
    ds = read_split(cfg.shards, cfg.train_split, contract.columns)
    if cfg.task == "pair" and cfg.no_change_keep_fraction < 1.0:
        ds = ds.map_batches(_keep_no_change, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"fraction": cfg.no_change_keep_fraction, "seed": seed})
    if cfg.captions == "all":
        ds = ds.map_batches(_one_row_per_caption, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"language": cfg.language, "languages": cfg.languages})
    ds = ds.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    # batch_size=None: one task per shuffled block, yielding batch by batch (the first
    # batch does not wait for the whole block).
    ds = ds.map_batches(preprocess_counted, batch_format="numpy", batch_size=None,
                        fn_kwargs={"cfg": cfg, "train": True, "fields": contract.fields,
                                   "counter": counter})
    # Ray Data reserves a share of the CPUs per operator; with reservation on, this one-operator
    # pipeline ran a single preprocessing task at a time on a 2-CPU node.
    ds.context.op_resource_reservation_enabled = False
    return ds
