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


def test_query_check_precision_of_class_and_colour_by_hand() -> None:
    """Scores are set per image (identity image vectors), so each top-4 is known by hand."""
    import numpy as np

    from rsir.report import markdown, query_check_section

    classes = ["res", "res", "forest", "res", "forest", "parking"]
    attrs = [{"color": c} for c in ("red", "blue", "red", "red", "yellow", "red")]
    scores = {"a1": [0.9, 0.8, 0.7, 0.1, 0.6, 0.0],  # top 4: 0 1 2 4 -> class 2/4, red 2/4
              "a2": [0.1, 0.2, 0.3, 0.9, 0.0, 0.8],  # top 4: 3 5 2 1 -> class 2/4, red 3/4
              "b": [0.01, 0.02, 0.5, 0.03, 1.0, 0.2]}  # top 4: 4 2 5 3 -> forest 2/4, yellow 1/4
    queries = [{"class_name": "res", "color": "red", "text": "a1"},
               {"class_name": "res", "color": "red", "text": "a2"},
               {"class_name": "forest", "color": "yellow", "text": "b"}]
    check = query_check_section(np.eye(6), classes, attrs, {"en": queries, "fr": queries[2:]},
                                lambda ts: np.array([scores[t] for t in ts]), k=4)
    en = check["languages"]["en"]
    assert [(r["class_name"], r["color"], r["class_P@4"], r["color_P@4"]) for r in en["rows"]] == [
        ("res", "red", 0.5, 0.625), ("forest", "yellow", 0.5, 0.25)]
    assert en["rows"][0]["n_relevant"] == {"class": 3, "color": 4}
    assert (en["class_P@4"], en["color_P@4"], en["min_class_P@4"], en["min_color_P@4"]) == (
        0.5, 0.4375, 0.5, 0.25)
    assert check["languages"]["fr"]["color_P@4"] == 0.25
    md = markdown({"name": "t", "query_check": check}).splitlines()
    assert "| res | red | 0.50 | 0.62 | “a1”; “a2” |" in md
    assert "| **mean** | | **0.50** | **0.44** | |" in md
    assert "| fr | 0.50 (0.50) | 0.25 (0.25) |" in md


def test_query_check_and_galr_ablation_tables() -> None:
    from rsir.demo import format_galr_ablation_table, format_query_check_table

    rec = {"R@1": 2.0, "R@5": 10.0, "R@10": 18.0}
    q = {"k": 10, "language": "en", "class_P@10": 0.95, "color_P@10": 0.961, "min_class_P@10": 0.7,
         "min_color_P@10": 0.65}
    report = {"single": {"query_check": q},
              "galr": {"local_branch": True, "epochs": 6, "i2t": rec, "t2i": rec, "mR": 10.0,
                       "chance_mR": 0.71},
              "galr_global": {"local_branch": False, "epochs": 6, "i2t": rec, "t2i": rec, "mR": 8.0,
                              "chance_mR": 0.71}}
    assert format_query_check_table(report).splitlines()[2] == "| single | en | 0.95 | 0.96 | 0.70 | 0.65 |"
    lines = format_galr_ablation_table(report).splitlines()
    assert lines[2:] == ["| galr | global + local (objects, MIDF) | 6 | 2.0/10.0/18.0 | 2.0/10.0/18.0 | 10.0 | 0.71 |",
                         "| galr_global | global only | 6 | 2.0/10.0/18.0 | 2.0/10.0/18.0 | 8.0 | 0.71 |"]


def test_demo_recipe_has_the_query_check_and_the_galr_ablation() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.eval.query_check and cfg.data.languages == ["en", "ar", "fr", "it"]
    full, glob = (task_config(cfg, t, Path("/w/shards"), Path("/w/runs")) for t in ("galr", "galr_global"))
    assert full.model.name == glob.model.name == "galr"
    assert full.model.options.get("local_branch", True) and glob.model.options["local_branch"] is False
    # the same model, data and schedule but for the branch
    assert {**full.model.options, "local_branch": False} == glob.model.options
    assert (full.data, full.loss, full.optim, full.train) == (glob.data, glob.loss, glob.optim, glob.train)
    assert full.data.shards == "/w/shards/single"
