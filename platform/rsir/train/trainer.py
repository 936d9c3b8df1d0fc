"""``build_trainer``: a Ray Train ``TorchTrainer`` for a recipe, and ``fit`` with a run directory.

A run directory holds: ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (one line
per epoch), ``tensorboard/``, Ray Train's ``checkpoint_epoch_*`` folders (the newest
``train.keep_checkpoints``, to resume from), ``last.pt`` (the last epoch's model), ``best.pt``
(under ``train.select: best_val``: the epoch of the best validation mR) and ``curves.png``
(loss and validation mR). Fitting again with the same run directory resumes from its latest
checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.actor import ActorHandle
from ray.train.torch import TorchTrainer

from rsir.config import RecipeConfig, check_selection, save_config, to_dict
from rsir.data.pipeline import DropCounter, read_split, training_dataset
from rsir.models import input_contract
from rsir.train.loop import BEST_FILE, LAST_FILE, METRICS_FILE, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    # the model the run hands on, as train.select says: last.pt or best.pt
    checkpoint: Path | None
    history: list[dict[str, Any]]
    # rows of the train split preprocessing dropped (corrupt images, bad rows), distinct ids
    dropped_rows: int = 0


def build_trainer(
    cfg: RecipeConfig, run_dir: str | Path, drop_counter: ActorHandle | None = None
) -> TorchTrainer:
    """The TorchTrainer of ``cfg`` writing into ``run_dir`` (resumes when it has checkpoints).

    With a ``DropCounter``, the training rows preprocessing drops are counted there.
    """
    check_selection(cfg, f"recipe {cfg.name}: ")
    run_dir = Path(run_dir).resolve()
    contract = input_contract(cfg)
    datasets = {"train": training_dataset(cfg.data, contract, seed=cfg.train.seed,
                                          counter=drop_counter)}
    if cfg.data.val_split:
        datasets["val"] = read_split(cfg.data.shards, cfg.data.val_split, contract.columns)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker or 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": to_dict(cfg), "run_dir": str(run_dir)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            # The newest checkpoints, to resume from; the selected model is written by
            # the loop itself (last.pt / best.pt).
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def fit(cfg: RecipeConfig, run_dir: str | Path) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; write the resolved config and the plot. The result's
    ``checkpoint`` is ``last.pt`` or, under ``train.select: best_val``, ``best.pt``."""
    run_dir = Path(run_dir).resolve()
    if cfg.train.init_from:  # the workers' working directory is not the driver's
        init_from = Path(cfg.train.init_from).resolve()
        if not init_from.is_file():
            raise FileNotFoundError(f"train.init_from: {init_from}: no such file")
        cfg = replace(cfg, train=replace(cfg.train, init_from=str(init_from)))
    counter = DropCounter.remote()
    trainer = build_trainer(cfg, run_dir, counter)  # refuses a train.select it cannot honour
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    trainer.fit()
    drops = ray.get(counter.summary.remote())
    if drops["rows"]:
        log.warning("training skipped %d corrupt or invalid rows of %s (%d times over all epochs),"
                    " e.g. %s", drops["rows"], cfg.data.shards, drops["reads"], drops["examples"])
    selected = run_dir / (BEST_FILE if cfg.train.select == "best_val" else LAST_FILE)
    history = read_history(run_dir)
    plot_curves(history, run_dir / "curves.png")
    return TrainResult(run_dir=run_dir, checkpoint=selected if selected.is_file() else None,
                       history=history, dropped_rows=drops["rows"])


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation mR per epoch, side by side."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["loss"] for h in history], marker="o")
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    if "val_mR" in history[0]:
        b.plot(epochs, [h["val_mR"] for h in history], marker="o", color="tab:green")
    b.set(xlabel="epoch", ylabel="validation mR (%)", title="validation mR")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
