"""Ingest throughput: rsir's Ray Data training pipeline vs a plain PyArrow + PIL loop.

Both read the same demo-world shards and run the same preprocessing
(``rsir.data.transforms.preprocess_rows``: PNG decode, training augmentations, resize,
normalisation, caption sampling):

* ``ray``: ``rsir.data.pipeline.training_dataset`` (the split read, one row per caption,
  a global random shuffle, then one preprocessing task per shuffled block), iterated with
  ``iter_batches`` as a train worker does (batch size, ``drop_last`` and prefetch of
  ``rsir.train.loop``); it is run with ``data.captions: one_random`` so both loops
  preprocess one row per image;
* ``plain``: one process, ``pq.ParquetFile(...).iter_batches`` shard by shard, the split
  filter, then the preprocessing inline.

Rows/s is the mean over the passes (epochs) after the first; the first pass (Ray worker
start-up, first torch calls) is printed beside it. Each measurement runs in a fresh
process (Ray: a fresh Ray instance of ``--cores`` CPUs) whose peak memory is sampled
every 0.1 s: RSS of the driver and, for Ray, the summed RSS of its worker processes
(``ray::*`` tasks and actors, not the node's agents); in brackets the private part
(RSS - shared: heap and stacks). RSS also counts the shared-memory object-store pages a
process has touched, once per process that maps them, which grows with use until the
store's arena is warm. Both loops run on an archive of N rows and of ``--scale`` x N
rows (the global shuffle holds the split's encoded rows in the object store, spilled to
disk beyond it; the tensors are still made block by block after it).

    PYTHONPATH=platform python bench/ingest.py                  # 2,000 and 8,000 scenes at 64 px
    PYTHONPATH=platform python bench/ingest.py --rows 10000     # 10,000 and 40,000
    PYTHONPATH=platform python bench/ingest.py --task pair      # bitemporal pairs
    PYTHONPATH=platform python bench/ingest.py --shards DIR     # existing shards (and DIR x scale)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

MIB = 2**20


class PeakMemory:
    """Samples RSS of this process and of the Ray workers below it; keeps the peaks (MiB)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.driver = self.workers = self.driver_private = self.workers_private = 0.0
        self.n_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        workers = private = 0
        n = 0
        # our own Ray instance (address="local") is a child tree of this process; its task
        # and actor workers are named ray::<task>, its per-node agents ray::<Name>Agent
        for p in me.children(recursive=True):
            try:
                name = (p.cmdline() or [""])[0]
                if name.startswith("ray::") and not name.endswith("Agent"):
                    info = p.memory_info()
                    workers += info.rss
                    private += info.rss - info.shared
                    n += 1
            except psutil.Error:  # a worker that exited between listing and reading
                continue
        info = me.memory_info()
        self.driver = max(self.driver, info.rss / MIB)
        self.driver_private = max(self.driver_private, (info.rss - info.shared) / MIB)
        self.workers = max(self.workers, workers / MIB)
        self.workers_private = max(self.workers_private, private / MIB)
        self.n_workers = max(self.n_workers, n)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def plain_pass(cfg, batch_size: int) -> int:
    """One epoch of the plain loop; returns the rows preprocessed."""
    from rsir.data.contract import InputContract
    from rsir.data.schema import shard_paths
    from rsir.data.transforms import preprocess_rows

    columns = InputContract.of(cfg, "bench").columns
    n = 0
    for path in shard_paths(cfg.shards):
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            cols = {name: rb.column(name).to_numpy(zero_copy_only=False) for name in columns}
            keep = cols["split"] == cfg.train_split
            out, _ = preprocess_rows({k: v[keep] for k, v in cols.items()}, cfg, train=True)
            n += len(out["id"])
    return n


def ray_pass(ds, cfg) -> int:
    """One epoch of the training dataset, consumed as ``rsir.train.loop`` consumes it."""
    n = 0
    for batch in ds.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", drop_last=True,
                                 prefetch_batches=cfg.prefetch_batches):
        n += len(batch["id"])
    return n


def measure(run_pass, epochs: int) -> dict[str, Any]:
    """Rows/s of each pass, and the peak memory over all of them."""
    per_pass = []
    with PeakMemory() as mem:
        for _ in range(epochs):
            t0 = time.perf_counter()
            rows = run_pass()
            per_pass.append((rows, time.perf_counter() - t0))
    warm = per_pass[1:] or per_pass
    return {"first": per_pass[0][0] / per_pass[0][1],
            "rows_s": sum(r for r, _ in warm) / sum(t for _, t in warm), "rows": per_pass[-1][0],
            "driver_mib": mem.driver, "workers_mib": mem.workers, "n_workers": mem.n_workers,
            "driver_private_mib": mem.driver_private, "workers_private_mib": mem.workers_private}


def link_archive(paths: list[Path], out: Path) -> Path:
    """A directory of symlinks to ``paths`` (a path may repeat): an archive both loops read."""
    out.mkdir(parents=True)
    for i, path in enumerate(paths):
        (out / f"part-{i:05d}.parquet").symlink_to(path.resolve())
    return out


def archives(args: argparse.Namespace, work: Path) -> dict[int, Path]:
    """{rows: directory} of the small and the big archive."""
    from rsir.data.demo_world import generate
    from rsir.data.schema import shard_paths

    def rows(paths: list[Path]) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)

    if args.shards:
        small = shard_paths(args.shards)
        # an existing archive read scale times over: the same files, scale x the rows
        return {rows(small): link_archive(small, work / "small"),
                rows(small) * args.scale: link_archive(small * args.scale, work / "big")}
    pair = args.task == "pair"
    n_big = args.rows * args.scale
    t0 = time.perf_counter()
    # ~250 rows per shard at 64 px: many read tasks, as a real archive has
    paths = generate(work / "world", n_scenes=0 if pair else n_big, n_pairs=n_big if pair else 0,
                     seed=0, size=args.image_size, val_fraction=0.0, test_fraction=0.0,
                     max_bytes=(4 if pair else 2) * MIB)["pairs" if pair else "single"]
    print(f"world: {n_big} {args.task} rows at {args.image_size} px in {len(paths)} shards, "
          f"{time.perf_counter() - t0:.1f} s -> {work}")
    small, total = [], 0
    for p in paths:  # the first shards holding about N rows
        if total >= args.rows:
            break
        small.append(p)
        total += pq.ParquetFile(p).metadata.num_rows
    return {total: link_archive(small, work / "small"), rows(paths): link_archive(paths, work / "big")}


def data_config(args: argparse.Namespace, shards: str):
    """The recipe's data section both loops run: the training augmentations on."""
    from rsir.config import DataConfig

    return DataConfig(shards=shards, task=args.task, image_size=args.image_size,
                      batch_size=args.batch_size, random_crop_scale=0.9, hflip=True, vflip=True,
                      color_jitter=0.1, captions="one_random")


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """One loop on one archive, in this (fresh) process, so its peak memory is its own."""
    import torch

    cfg = data_config(args, args.archive)
    # Same per-process compute as a Ray worker (OMP_NUM_THREADS=1); a second torch thread
    # does not speed up per-image ops at this size.
    torch.set_num_threads(1)
    if args.one == "plain":
        return measure(lambda: plain_pass(cfg, args.batch_size), args.epochs)
    import ray

    # address="local": its own instance (a child tree of this process), never someone else's
    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = False  # a quiet console
    from rsir.data.contract import InputContract
    from rsir.data.pipeline import training_dataset

    try:
        # built once and executed once per epoch, as Ray Train does
        ds = training_dataset(cfg, InputContract.of(cfg, "bench"))
        return measure(lambda: ray_pass(ds, cfg), args.epochs)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000, help="rows of the small archive (N)")
    p.add_argument("--scale", type=int, default=4, help="the big archive has scale x N rows")
    p.add_argument("--task", choices=["single", "pair"], default="single")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="the recipe's data.batch_size")
    p.add_argument("--epochs", type=int, default=5, help="passes per measurement (first = warm-up)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPUs of the Ray instance")
    p.add_argument("--shards", default=None, help="existing shards instead of a generated world")
    p.add_argument("--work-dir", default=None, help="where the world is generated (default: temp)")
    p.add_argument("--one", choices=["plain", "ray"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--archive", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure_one(args)), flush=True)
        return

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rsir-bench-ingest-"))
    sizes = archives(args, work)
    print(f"cores {args.cores}, load avg {os.getloadavg()[0]:.1f}, task {args.task}, "
          f"{args.image_size} px, batch {args.batch_size}, {args.epochs} passes per measurement, "
          f"each in a fresh process", flush=True)
    forward = ["--task", args.task, "--image-size", str(args.image_size), "--batch-size",
               str(args.batch_size), "--epochs", str(args.epochs), "--cores", str(args.cores)]
    results: dict[str, dict[int, dict[str, Any]]] = {"plain": {}, "ray": {}}
    for n, shards in sizes.items():
        for name in results:
            child = subprocess.run([sys.executable, __file__, "--one", name, "--archive", str(shards),
                                    *forward], capture_output=True, text=True)
            lines = [ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")]
            if child.returncode or not lines:
                raise SystemExit(f"{name} on {n} rows failed:\n{child.stderr[-4000:]}")
            results[name][n] = json.loads(lines[-1][len("RESULT "):])
            print(f"{name:<6}{n:>7} rows: {results[name][n]['rows_s']:.0f} rows/s", flush=True)

    print(f"\n{'run':<6}{'rows':>7}{'rows/s':>8}{'1st pass':>10}{'driver MiB':>16}{'workers MiB':>17}"
          f"{'workers':>9}\n{'':<31}{'RSS (private)':>16}{'RSS (private)':>17}")
    for name, by_n in results.items():
        for n, r in by_n.items():
            driver = f"{r['driver_mib']:.0f} ({r['driver_private_mib']:.0f})"
            workers, n_workers = "-", "-"
            if name == "ray":
                workers = f"{r['workers_mib']:.0f} ({r['workers_private_mib']:.0f})"
                n_workers = str(r["n_workers"])
            print(f"{name:<6}{n:>7}{r['rows_s']:>8.0f}{r['first']:>10.0f}{driver:>16}{workers:>17}"
                  f"{n_workers:>9}")
    small, big = sorted(sizes)
    for n in (small, big):
        ratio = results["ray"][n]["rows_s"] / results["plain"][n]["rows_s"]
        print(f"Ray / plain at {n} rows: {ratio:.2f}x rows/s (target >= 1.5x)")
    for name in results:
        a, b = results[name][small], results[name][big]
        line = (f"{name} peak memory, {big} vs {small} rows: driver {b['driver_mib']:.0f} vs "
                f"{a['driver_mib']:.0f} MiB RSS, {b['driver_private_mib']:.0f} vs "
                f"{a['driver_private_mib']:.0f} MiB private")
        if name == "ray":
            line += (f"; workers {b['workers_mib']:.0f} vs {a['workers_mib']:.0f} MiB RSS, "
                     f"{b['workers_private_mib']:.0f} vs {a['workers_private_mib']:.0f} MiB private")
        print(line)
    print(f"load avg at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
