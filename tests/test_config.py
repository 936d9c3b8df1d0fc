"""Typed recipes: errors name the file and the key; every recipe in configs/ loads."""

import pytest

from conftest import REPO
from rsir.config import ConfigError, RecipeConfig, load_config, save_config


def write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "name: x\noptim:\n  lr: 0.1\n  lrr: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in str(err.value) and "optim.lrr: unknown key" in str(err.value)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "name: x\ntrain:\n  epochs: three\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:train.epochs: expected an integer"):
        load_config(p)


def test_bool_is_not_a_number_and_literals_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config(write(tmp_path, "name: x\noptim: {lr: true}\n"))
    with pytest.raises(ConfigError, match=r"data.task: expected one of \['single', 'pair'\]"):
        load_config(write(tmp_path, "name: x\ndata: {task: triple}\n"))


def test_missing_required_value(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe.yaml:name: missing required value"):
        load_config(write(tmp_path, "train: {epochs: 1}\n"))


def test_overrides_are_typed_and_checked(tmp_path):
    p = write(tmp_path, "name: x\n")
    cfg = load_config(p, ["train.epochs=7", "optim.lr=0.5", "data.bands=[R, G, B, NIR]"])
    assert cfg.train.epochs == 7 and cfg.optim.lr == 0.5 and cfg.data.bands[-1] == "NIR"
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(p, ["train.epochs=1.5"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml")
                 if not p.name.startswith(("tune_", "serve")))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RecipeConfig) and cfg.name
