"""The per-worker training loop (Ray Train glue around the pure library).

Each epoch: stream this worker's shard, contrastive step(s), then rank 0 validates on the
validation split, writes the metrics history, ``last.pt`` (and ``best.pt`` under
``train.select: best_val`` when validation mR is the best so far) and a checkpoint, and
every worker calls ``ray.train.report``. A restarted worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from rsir.config import RecipeConfig, from_dict
from rsir.data.contract import InputContract
from rsir.losses import create_loss
from rsir.models import create_model, input_contract, load_weights
from rsir.optim import create_optimizer, create_scheduler
from rsir.retrieval.embed import evaluate_rows, unwrap
from rsir.training_step import batch_inputs, contrastive_loss, optimizer_step

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
# What a run hands on (train.select): the last epoch's model, or the best on validation.
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _val_rows(contract: InputContract) -> dict[str, list[Any]] | None:
    """The validation split, read whole (it is small) by rank 0: the contract's columns."""
    shard = ray.train.get_dataset_shard("val")
    if shard is None:
        return None
    cols: dict[str, list[Any]] = {}
    for batch in shard.iter_batches(batch_size=512, batch_format="numpy"):
        for k in contract.columns:
            cols.setdefault(k, []).extend(batch[k])
    return cols or None


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the metrics history atomically (a reader never sees half a file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{METRICS_FILE}.tmp"
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
    os.replace(tmp, run_dir / METRICS_FILE)


def _log_worker_start(run_dir: Path, rank: int, world: int, start_epoch: int) -> None:
    """Append where and from which epoch this worker (re)started to ``workers/<rank>.jsonl``.

    One line per start: a restarted worker group shows up as a second line with the epoch it
    resumed from. Best effort: a run directory another node cannot write is no error.
    """
    entry = {"rank": rank, "world_size": world, "start_epoch": start_epoch, "pid": os.getpid(),
             "node_id": ray.get_runtime_context().get_node_id(), "time": time.time()}
    try:
        (run_dir / "workers").mkdir(parents=True, exist_ok=True)
        with open(run_dir / "workers" / f"{rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as err:
        log.warning("could not record worker start in %s: %s", run_dir, err)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg: RecipeConfig = from_dict(RecipeConfig, config["recipe"], "recipe")
    contract = input_contract(cfg)
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)
    random.seed(cfg.train.seed + rank)

    model = create_model(cfg.model, cfg.loss)
    if cfg.train.init_from:  # a resumed run's checkpoint below overrides these weights
        load_weights(model, cfg.train.init_from, strict=False)
    # A dual encoder trained on one task leaves the other task's head unused.
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    loss_fn = create_loss(cfg.loss, rank=rank, world_size=world)
    optimizer = create_optimizer(cfg.optim, model.parameters())
    scheduler = create_scheduler(cfg.optim, optimizer, cfg.train.epochs)
    use_bf16 = cfg.train.precision == "bf16" and device.type == "cuda"

    start_epoch, step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        _set_rng_state(state["rng"])
        log.info("rank %d resumed from epoch %d", rank, state["epoch"])

    _log_worker_start(run_dir, rank, world, start_epoch)
    train_shard = ray.train.get_dataset_shard("train")
    val_rows = _val_rows(contract) if rank == 0 else None
    image_key = contract.image_key
    tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(run_dir / "tensorboard"))
    accum = max(1, cfg.optim.grad_accum_steps)

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        t0, n_samples, loss_sum, n_batches = time.perf_counter(), 0, 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_shard.iter_batches(
                batch_size=cfg.data.batch_size, batch_format="numpy", drop_last=True,
                prefetch_batches=cfg.data.prefetch_batches)):  # shuffled: training_dataset
            inputs = batch_inputs(model, batch, image_key, device, contract.fields)
            losses = contrastive_loss(model, loss_fn, inputs, bf16=use_bf16)
            (losses["loss"] / accum).backward()
            if (i + 1) % accum == 0:
                optimizer_step(model, optimizer, cfg.optim.grad_clip_norm)
                step += 1
            n_samples += len(batch["text"])
            loss_sum += float(losses["loss"])
            n_batches += 1
        elapsed = time.perf_counter() - t0
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "loss": loss_sum / max(1, n_batches),
            "lr": lr,
            "temperature": float(1.0 / unwrap(model).logit_scale.exp()),
            # samples/s of the whole group: every worker sees the same number of rows
            "samples_per_s": n_samples * world / max(elapsed, 1e-9),
        }
        ckpt = None
        if rank == 0:
            if val_rows:
                rec = evaluate_rows(model, val_rows, cfg.data, language=_eval_lang(cfg),
                                    ks=cfg.eval.ks, fields=contract.fields)
                metrics.update({f"val_i2t_R@{k}": v for k, v in rec["i2t"].items()})
                metrics.update({f"val_t2i_R@{k}": v for k, v in rec["t2i"].items()})
                metrics["val_mR"] = rec["mR"]
            history.append(metrics)
            _write_history(run_dir, history)
            for k, v in metrics.items():
                if k not in ("epoch", "step"):
                    tb.add_scalar(k, v, epoch)
            tb.flush()
            _write_selected(run_dir, unwrap(model).state_dict(), config["recipe"], epoch,
                            metrics.get("val_mR"), best=_is_best(cfg, history))
            tmp = tempfile.mkdtemp(prefix="rsir-ckpt-")
            torch.save({
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                "rng": _rng_state(), "history": history, "config": config["recipe"],
            }, Path(tmp) / CHECKPOINT_FILE)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v
                                             for k, v in metrics.items()})
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
    if tb is not None:
        tb.close()


def _is_best(cfg: RecipeConfig, history: list[dict[str, Any]]) -> bool:
    """Under ``train.select: best_val``: the newest epoch has the highest validation mR so
    far (the first of equals wins). ``history`` survives a resume, so does the choice."""
    if cfg.train.select != "best_val" or "val_mR" not in history[-1]:
        return False
    return all(h["val_mR"] < history[-1]["val_mR"] for h in history[:-1])


def _write_selected(run_dir: Path, model_state: dict[str, Any], recipe: dict[str, Any],
                    epoch: int, val_mR: float | None, best: bool) -> None:
    """``last.pt`` after every epoch, and ``best.pt`` when ``best``: the weights and recipe
    a reader needs (loadable with ``weights_only=True``), replaced atomically."""
    state = {"model": model_state, "config": recipe, "epoch": epoch, "val_mR": val_mR}
    for name in (LAST_FILE, BEST_FILE) if best else (LAST_FILE,):
        tmp = run_dir / f".{name}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, run_dir / name)


def _eval_lang(cfg: RecipeConfig) -> str:
    """Validation queries: the training language; under ``random``, the first declared one."""
    return cfg.data.languages[0] if cfg.data.language == "random" else cfg.data.language
