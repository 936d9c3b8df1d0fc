"""Training throughput: rsir's Ray Train loop (1 and 2 workers) vs a plain PyTorch loop.

All three train the same model on the same generated world with the same preprocessing
(``rsir.data.transforms.preprocess_batch``), the same per-worker batch size and the same
number of epochs. Two numbers per run:

* ``samples/s``: the epoch loop only (data wait + step), averaged over the epochs after the
  first (warm-up); for Ray it is the ``samples_per_s`` the loop reports (whole group).
* ``wall``: the whole call (Ray: ``fit`` incl. worker start, Ray Data, validation and
  checkpoints; plain: model build + all epochs).

Ratios from one run: Ray 1 worker / plain (target >= 0.9x) and the 2-worker scaling
efficiency (2 workers / (2 x 1 worker)). The plain loop uses as many torch threads as
there are cores; Ray workers get cores // workers each. With a per-worker batch B, the
2-worker run has a global batch of 2B.

CPU (the demo model):
    PYTHONPATH=platform python bench/train_throughput.py
GPU, ViT-B/16 at 224 px in bf16:
    python bench/train_throughput.py --gpu --model-name ViT-B-16 --image-size 224 \
        --precision bf16 --batch-size 64 --scenes 2048
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["id", "split", "image", "bands", "captions"]


def recipe(args: argparse.Namespace, shards: Path, workers: int, cores: int):
    from rsir.config import load_config

    overrides = [
        f"data.shards={shards}", f"data.batch_size={args.batch_size}",
        f"data.image_size={args.image_size}", f"train.epochs={args.epochs}",
        f"train.precision={args.precision}", "train.max_failures=0",
        f"train.torch_threads={max(1, cores // workers)}",
        f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={args.cpus_per_worker}",
        # one caption per scene per epoch, as the plain loop draws it: the same rows per epoch
        "optim.schedule=constant", "data.captions=one_random",
    ]
    if args.model_name:
        overrides += [f"model.image_tower.options.model_name={args.model_name}",
                      f"model.text_tower.options.model_name={args.model_name}"]
    if args.gpu:
        overrides += ["scaling.use_gpu=true", "scaling.gpus_per_worker=1"]
    return load_config(args.config, overrides)


def train_rows(shards: Path, split: str) -> dict[str, np.ndarray]:
    """The split's raw rows as numpy object columns (what Ray Data hands map_batches)."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(shards), format="parquet").to_table(
        columns=COLUMNS, filter=pads.field("split") == split)
    cols = table.to_pydict()
    out = {}
    for k, v in cols.items():
        arr = np.empty(len(v), dtype=object)
        arr[:] = v
        out[k] = arr
    return out


def plain_loop(cfg, rows: dict[str, np.ndarray], threads: int, gpu: bool) -> dict[str, Any]:
    """rsir's loop body in one process, no Ray: preprocess inline, step, repeat."""
    import torch

    from rsir.data.transforms import preprocess_batch
    from rsir.losses import create_loss
    from rsir.models import create_model
    from rsir.optim import create_optimizer
    from rsir.training_step import batch_inputs, contrastive_loss, optimizer_step

    t_wall = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cuda" if gpu else "cpu")
    model = create_model(cfg.model, cfg.loss).to(device)
    loss_fn = create_loss(cfg.loss, rank=0, world_size=1)
    optimizer = create_optimizer(cfg.optim, model.parameters())
    use_bf16 = cfg.train.precision == "bf16" and device.type == "cuda"
    image_key = "image_pair" if cfg.data.task == "pair" else "image"
    n, bs = len(rows["id"]), cfg.data.batch_size
    rng = np.random.default_rng(cfg.train.seed)
    per_epoch = []
    for epoch in range(cfg.train.epochs):
        model.train()
        order = rng.permutation(n)
        t0, n_samples = time.perf_counter(), 0
        for b in range(n // bs):  # drop_last, as the Ray loop
            idx = order[b * bs:(b + 1) * bs]
            raw = {k: v[idx] for k, v in rows.items()}
            batch = preprocess_batch(raw, cfg.data, train=True,
                                     seed=cfg.train.seed * 100003 + epoch * 1009 + b)
            losses = contrastive_loss(model, loss_fn, batch_inputs(model, batch, image_key, device),
                                      bf16=use_bf16)
            losses["loss"].backward()
            optimizer_step(model, optimizer, cfg.optim.grad_clip_norm)
            n_samples += len(batch["text"])
        if gpu:
            torch.cuda.synchronize()
        per_epoch.append(n_samples / (time.perf_counter() - t0))
    return {"per_epoch": per_epoch, "wall_s": time.perf_counter() - t_wall}


def ray_fit(cfg, run_dir: Path) -> dict[str, Any]:
    from rsir.train.trainer import fit

    t0 = time.perf_counter()
    result = fit(cfg, run_dir)
    wall = time.perf_counter() - t0
    return {"per_epoch": [h["samples_per_s"] for h in result.history], "wall_s": wall}


def steady(per_epoch: list[float]) -> float:
    """Mean samples/s over the epochs after the first (the first warms up)."""
    rest = per_epoch[1:] or per_epoch
    return statistics.fmean(rest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--model-name", default=None, help="open_clip model of both towers "
                   "(default: the config's, rsir-tiny); e.g. ViT-B-16")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--gpu", action="store_true", help="train on CUDA (1 GPU per worker)")
    p.add_argument("--scenes", type=int, default=1024, help="rows of the generated world")
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    p.add_argument("--cpus-per-worker", type=float, default=0.5,
                   help="logical CPUs per Ray worker (leave some for Ray Data)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--work-dir", default=None, help="world + runs (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    import torch

    from rsir.data.demo_world import generate

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rsir-bench-train-"))
    shards = work / "world" / "single"
    if not shards.exists():
        t0 = time.perf_counter()
        generate(work / "world", n_scenes=args.scenes, n_pairs=0, seed=0,
                 size=args.image_size, val_fraction=0.05, test_fraction=0.0)
        print(f"world: {args.scenes} scenes at {args.image_size}px in "
              f"{time.perf_counter() - t0:.1f}s -> {shards}")
    n_gpus = torch.cuda.device_count() if args.gpu else 0
    workers = [int(w) for w in args.workers.split(",") if w]
    print(f"cores {args.cores}, gpus {n_gpus}, model "
          f"{args.model_name or 'config default'}, {args.image_size}px, {args.precision}, "
          f"batch {args.batch_size}/worker, {args.epochs} epochs, load avg "
          f"{os.getloadavg()[0]:.1f}")

    results: dict[str, Any] = {}
    cfg1 = recipe(args, shards, 1, args.cores)
    rows = train_rows(shards, cfg1.data.train_split)
    print(f"plain: {len(rows['id'])} training rows, {args.cores} torch threads ...",
          flush=True)
    results["plain"] = plain_loop(cfg1, rows, args.cores, args.gpu)

    # A Cluster (not a plain ray.init) so that the workers' RAY_ADDRESS can name it: Ray
    # Train V2's PlacementGroupCleaner otherwise resolves the state API through the Ray
    # instance started last on this host, and with another one running it can decide the
    # controller is gone and remove a live run's placement group.
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.cores, "num_gpus": n_gpus, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {
        "OMP_NUM_THREADS": "1", "RAY_ADDRESS": cluster.address}})
    try:
        for w in workers:
            if args.gpu and w > n_gpus:
                print(f"ray x{w}: skipped ({n_gpus} GPU(s); DDP needs one per worker)")
                continue
            cfg = recipe(args, shards, w, args.cores)
            print(f"ray x{w}: {cfg.train.torch_threads} torch threads/worker ...", flush=True)
            results[f"ray{w}"] = ray_fit(cfg, work / "runs" / f"ray{w}-{int(time.time())}")
    finally:
        ray.shutdown()
        cluster.shutdown()

    print(f"\n{'run':<10}{'samples/s (steady)':>20}{'per epoch':>34}{'wall s':>10}")
    for name, r in results.items():
        r["steady"] = steady(r["per_epoch"])
        per = ", ".join(f"{x:.0f}" for x in r["per_epoch"])
        print(f"{name:<10}{r['steady']:>20.1f}{per:>34}{r['wall_s']:>10.1f}")
    plain = results["plain"]
    if "ray1" in results:
        r1 = results["ray1"]
        print(f"\nRay 1 worker / plain: {r1['steady'] / plain['steady']:.2f}x samples/s "
              f"(target >= 0.9x), {plain['wall_s'] / r1['wall_s']:.2f}x wall "
              f"(plain wall / Ray wall)")
        if "ray2" in results:
            r2 = results["ray2"]
            print(f"2 workers / 1 worker: {r2['steady'] / r1['steady']:.2f}x samples/s "
                  f"= {r2['steady'] / (2 * r1['steady']):.0%} scaling efficiency; "
                  f"wall {r1['wall_s'] / r2['wall_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
