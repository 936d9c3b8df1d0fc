"""Which model a run hands on (train.select), without training: the loop's choice of best.pt
and a train campaign's score of a trial."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import REPO
from rsir.config import load_config


def _history(*val: float) -> list[dict]:
    return [{"epoch": e, "val_mR": v} for e, v in enumerate(val)]


def test_best_pt_is_rewritten_only_at_a_strictly_better_validation_mR():
    from rsir.train.loop import _is_best

    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.select=best_val"])
    val = (10.0, 30.0, 20.0, 30.0, 31.0)
    # epochs 0 (the first), 1 (30 > 10) and 4 (31 > 30) write best.pt; 3 ties 30: the first wins
    assert [_is_best(cfg, _history(*val[: e + 1])) for e in range(5)] == [True, True, False, False, True]
    last = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, select="last"))
    assert not any(_is_best(last, _history(*val[: e + 1])) for e in range(5))


@pytest.mark.parametrize("select, expected", [("last", 20.0), ("best_val", 30.0)])
def test_a_train_trial_is_scored_on_the_model_its_recipe_selects(select, expected, tmp_path):
    from rsir.tune.campaign import trial_table
    from rsir.tune.space import TuneConfig

    cfg = load_config(REPO / "configs" / "tune_train.yaml", [f"recipe_overrides=[train.select={select}]"],
                      cls=TuneConfig)
    trial = SimpleNamespace(metrics={"val_mR": 20.0, "training_iteration": 3}, path=str(tmp_path),
                            config={}, error=None,
                            metrics_dataframe=pd.DataFrame({"val_mR": [10.0, 30.0, 20.0]}))
    assert trial_table(cfg, [trial])[0][cfg.metric] == expected
