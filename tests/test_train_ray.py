"""A short Ray Train run on the demo world: DDP over 2 CPU workers, the loss falls."""

import json

import pytest

from conftest import REPO
from rsir.config import load_config
from rsir.data.demo_world import generate

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
    assert result.checkpoint and result.checkpoint.stat().st_size > 0
    run = result.run_dir
    assert (run / "config.yaml").exists() and (run / "curves.png").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    # keep_checkpoints: 2 best by val mR, and Ray always keeps the newest as well
    kept = sorted(p.name for p in run.glob("checkpoint_epoch_*"))
    assert 2 <= len(kept) <= 3 and kept[-1] == "checkpoint_epoch_0002"
