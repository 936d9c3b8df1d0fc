"""Shuffling: the global per-epoch shuffle of ``training_dataset`` vs the local buffer it replaced.

Both read the same class-sorted training split (a head of class ``a`` rows, then a tail of
consecutive class ``b`` rows, as LEVIR-CC's training split ends in hundreds of no-change
pairs), in shards whose file order keeps that order, and run the same preprocessing:

* ``buffer`` (before): shards read in a random file order, preprocessed per shard, iterated
  through a local shuffle buffer of 4 batches (``local_shuffle_buffer_size``);
* ``global`` (now): ``rsir.data.pipeline.training_dataset``, a uniform random permutation of
  the whole split each epoch (Ray Data ``random_shuffle``), iterated as ``rsir.train.loop``
  iterates it.

Mixing: per batch, the count of tail rows; its variance over the batches of an epoch divided
by the variance a uniform draw gives (hypergeometric): 1.0 is uniform, larger is crowded.
Throughput: rows/s over the epochs after the first (the first, with Ray's start-up, is
printed beside it). One Ray instance of ``--cores`` CPUs runs both, one after the other.

    PYTHONPATH=platform python bench/shuffle.py                   # 4,000 rows, 1,000 in the tail
    PYTHONPATH=platform python bench/shuffle.py --rows 8000 --tail 2000 --epochs 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def sorted_split(out: Path, rows: int, tail: int, per_shard: int, size: int) -> Path:
    """``rows - tail`` rows of class ``a`` then ``tail`` of class ``b``, one caption each,
    random images of ``size`` px, in shards of ``per_shard`` rows named in that order."""
    from rsir.data.schema import encode_image, make_row, write_shards

    rng = np.random.default_rng(0)
    classes = ["a"] * (rows - tail) + ["b"] * tail
    for k in range(0, rows, per_shard):
        write_shards((make_row(id=f"{c}-{i:06d}", split="train",
                               image=encode_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                               captions=[{"text": f"a scene of class {c}", "lang": "en"}])
                      for i, c in enumerate(classes[k: k + per_shard], start=k)),
                     out, prefix=f"part{k // per_shard:04d}")
    return out


def buffer_dataset(cfg: Any, contract: Any) -> Any:
    """The pipeline before the global shuffle: shards in a random file order, each read and
    preprocessed by one task (its batches are shuffled only by the iteration's buffer)."""
    from rsir.data.pipeline import preprocess_counted, read_split

    ds = read_split(cfg.shards, cfg.train_split, contract.columns, shuffle_files=True)
    ds = ds.map_batches(preprocess_counted, batch_format="numpy", batch_size=None,
                        fn_kwargs={"cfg": cfg, "train": True, "fields": contract.fields})
    ds.context.op_resource_reservation_enabled = False
    return ds


def epoch(ds: Any, cfg: Any, buffer: int | None) -> tuple[list[int], int, float]:
    """One pass as a train worker makes it: tail rows per batch, rows, seconds."""
    t0, tails, n = time.perf_counter(), [], 0
    for batch in ds.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", drop_last=True,
                                 prefetch_batches=cfg.prefetch_batches,
                                 local_shuffle_buffer_size=buffer):
        tails.append(sum(str(i).startswith("b") for i in batch["id"]))
        n += len(batch["id"])
    return tails, n, time.perf_counter() - t0


def measure(ds: Any, cfg: Any, buffer: int | None, epochs: int, rows: int, tail: int) -> dict[str, float]:
    b = cfg.batch_size
    p = tail / rows
    uniform_var = b * p * (1 - p) * (rows - b) / (rows - 1)
    passes = [epoch(ds, cfg, buffer) for _ in range(epochs)]
    warm = passes[1:] or passes
    return {"first_rows_s": passes[0][1] / passes[0][2],
            "rows_s": sum(n for _, n, _ in warm) / sum(t for _, _, t in warm),
            "dispersion": float(np.mean([np.var(t, ddof=1) / uniform_var for t, _, _ in passes])),
            "max_tail": float(np.mean([max(t) for t, _, _ in passes]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--tail", type=int, default=1000)
    p.add_argument("--per-shard", type=int, default=500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()

    import ray

    from rsir.config import DataConfig
    from rsir.data.contract import InputContract
    from rsir.data.pipeline import training_dataset

    with tempfile.TemporaryDirectory(prefix="rsir-bench-shuffle-") as tmp:
        shards = sorted_split(Path(tmp) / "shards", args.rows, args.tail, args.per_shard,
                              args.image_size)
        cfg = dataclasses.replace(DataConfig(), shards=str(shards), image_size=args.image_size,
                                  batch_size=args.batch_size)
        contract = InputContract.of(cfg, "bench")
        ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
        try:
            results = {
                "buffer": measure(buffer_dataset(cfg, contract), cfg, 4 * cfg.batch_size,
                                  args.epochs, args.rows, args.tail),
                "global": measure(training_dataset(cfg, contract, seed=0), cfg, None,
                                  args.epochs, args.rows, args.tail),
            }
        finally:
            ray.shutdown()
    print(f"cores {args.cores}, load avg {os.getloadavg()[0]:.1f}; {args.rows} rows "
          f"({args.tail} in the tail) at {args.image_size} px, shards of {args.per_shard}, "
          f"batch {args.batch_size}, {args.epochs} epochs")
    print(f"{'pipeline':<9}{'rows/s':>8}{'1st pass':>10}{'dispersion':>12}{'max tail/batch':>16}")
    for name, r in results.items():
        print(f"{name:<9}{r['rows_s']:>8.0f}{r['first_rows_s']:>10.0f}{r['dispersion']:>12.2f}"
              f"{r['max_tail']:>16.1f}")
    g, b = results["global"], results["buffer"]
    print(f"global / buffer: {g['rows_s'] / b['rows_s']:.2f}x rows/s; per-batch tail-count "
          f"variance {b['dispersion']:.1f}x (buffer) vs {g['dispersion']:.2f}x (global) that of "
          f"uniform batches (expected tail per batch {args.batch_size * args.tail / args.rows:.0f})")


if __name__ == "__main__":
    main()
