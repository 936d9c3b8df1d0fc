"""A short Ray Train run on the demo world: DDP over 2 CPU workers, the loss falls."""

import json

import pytest
import torch

from conftest import REPO
from rsir.config import load_config
from rsir.data.demo_world import generate
from rsir.data.schema import read_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate(out, n_scenes=256, n_pairs=0, seed=1, val_fraction=0.125, test_fraction=0.0)
    return out / "single"


def test_short_ray_train_run_loss_falls_and_checkpoints(ray_session, world, tmp_path):
    from rsir.train.trainer import fit

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.shards={world}", "data.batch_size=32", "train.epochs=3",
        "optim.schedule=constant", "optim.lr=0.002", "train.max_failures=0",
    ])
    result = fit(cfg, tmp_path / "run")
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert all(0 <= h["val_mR"] <= 100 for h in history)
    # One row per English caption: each of the 2 workers gets half the rows, in whole
    # batches of 32 (5 captions per scene: 5x the steps of one caption per scene).
    rows = sum(sum(c["lang"] == "en" for c in caps) for caps in
               read_table(world, columns=["captions"], split="train").column("captions").to_pylist())
    assert rows == 5 * 224
    assert [h["step"] for h in history] == [(rows // 2 // 32) * (e + 1) for e in range(3)] == [17, 34, 51]
    run = result.run_dir
    # train.select: last (the default): last.pt, the last epoch's model, and no best.pt
    assert result.checkpoint == run / "last.pt" and not (run / "best.pt").exists()
    last = torch.load(result.checkpoint, weights_only=True)
    assert last["epoch"] == 2 and last["val_mR"] == history[-1]["val_mR"]
    _assert_same_weights(last["model"], run / "checkpoint_epoch_0002")
    assert (run / "config.yaml").exists() and (run / "curves.png").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    # keep_checkpoints: the 2 newest, to resume from
    assert sorted(p.name for p in run.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0001", "checkpoint_epoch_0002"]


def _assert_same_weights(state: dict, ray_checkpoint) -> None:
    ref = torch.load(ray_checkpoint / "checkpoint.pt", weights_only=False)["model"]
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in ref)


def test_best_val_hands_on_the_epoch_of_the_best_validation_mR(ray_session, world, tmp_path):
    from rsir.train.trainer import fit

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.shards={world}", "data.batch_size=32", "train.epochs=3", "train.keep_checkpoints=3",
        "optim.schedule=constant", "optim.lr=0.002", "train.max_failures=0", "train.select=best_val",
        "data.captions=one_random",
    ])
    result = fit(cfg, tmp_path / "run")
    history, run = result.history, result.run_dir
    assert [h["step"] for h in history] == [3, 6, 9]  # one caption per scene: 224 // 2 // 32
    val = [h["val_mR"] for h in history]
    chosen = val.index(max(val))  # the first of equal bests
    assert result.checkpoint == run / "best.pt"
    best, last = (torch.load(run / f, weights_only=True) for f in ("best.pt", "last.pt"))
    assert (best["epoch"], best["val_mR"]) == (chosen, max(val))
    assert last["epoch"] == 2
    _assert_same_weights(best["model"], run / f"checkpoint_epoch_{chosen:04d}")
    _assert_same_weights(last["model"], run / "checkpoint_epoch_0002")
