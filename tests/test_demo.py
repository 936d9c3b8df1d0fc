"""The demo's per-task recipes and its printed table (pure: no Ray, no training)."""

from pathlib import Path

import pytest

from conftest import REPO
from rsir.config import ConfigError, load_config
from rsir.demo import format_language_table, format_table, task_config


def test_every_demo_task_is_a_valid_recipe_on_its_shards() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    root = Path("/w/shards")
    tasks = {t: task_config(cfg, t, root, Path("/w/runs")) for t in cfg.demo.tasks}
    assert {"single", "pair"} <= set(tasks)
    for name, task_cfg in tasks.items():
        assert task_cfg.name == f"demo-{name}"
        folder = "pairs" if task_cfg.data.task == "pair" else "single"
        assert task_cfg.data.shards == str(root / folder)
    # the pair model starts from the single-image run's towers
    assert tasks["pair"].train.init_from == "/w/runs/single/last.pt"


def test_a_bad_task_override_names_the_task() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", ["demo.tasks={pair: [data.task=pair, train.epochz=3]}"])
    with pytest.raises(ConfigError, match=r"demo.tasks.pair.*epochz"):
        task_config(cfg, "pair", Path("/w"), Path("/w/runs"))


def test_table_puts_each_recall_beside_chance() -> None:
    rec = {"R@1": 2.0, "R@5": 10.0, "R@10": 18.0}
    chance = {"R@1": 0.1, "R@5": 0.5, "R@10": 1.0}
    report = {"pair": {"kind": "pair", "i2t": rec, "t2i": rec, "mR": 10.0, "chance_i2t": chance,
                       "chance_t2i": chance, "chance_mR": 0.5333}}
    table = format_table(report).splitlines()
    assert table[2] == "| pair | text → pair | 2.0 (0.1) | 10.0 (0.5) | 18.0 (1.0) | 10.0 | 0.53 | 19× |"
    assert table[4] == "| pair | **mR** | | | | **10.0** | 0.53 | 19× |"


def test_language_table_has_a_column_per_task() -> None:
    report = {"single": {"per_language_mR": {"en": 12.0, "fr": 0.7}, "chance_mR": 0.71},
              "muse_en": {"per_language_mR": {"en": 10.0, "fr": 8.25}, "chance_mR": 0.71}}
    lines = format_language_table(report).splitlines()
    assert lines[0] == "| language | single | muse_en | chance |"
    assert lines[2:] == ["| en | 12.0 | 10.0 | 0.71 |", "| fr | 0.7 | 8.2 | 0.71 |"]
