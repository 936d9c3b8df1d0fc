"""Typed recipes: errors name the file and the key; every recipe in configs/ loads."""

import json
from pathlib import Path

import pytest

from conftest import REPO
from rsir.config import ConfigError, RecipeConfig, load_config, load_yaml, save_config


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


def archive_overrides(recipe: Path, root: Path) -> list[str]:
    """For a ``data.normalization: archive`` recipe, an archive at ``root`` holding only
    ``_meta/band_stats.json`` (band i: mean 0.1 * (i + 1), std 0.01 * (i + 1), bands in
    reverse order) and the override that points the recipe at it; else no override."""
    data = load_yaml(recipe).get("data", {})
    if data.get("normalization") != "archive":
        return []
    bands = list(reversed(data["bands"]))
    (root / "_meta").mkdir(parents=True, exist_ok=True)
    (root / "_meta/band_stats.json").write_text(json.dumps({
        "bands": bands, "mean": [0.1 * (i + 1) for i in range(len(bands))],
        "std": [0.01 * (i + 1) for i in range(len(bands))], "n_pixels": 100, "split": "train"}))
    return [f"data.shards={root}"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads(path, tmp_path):
    overrides = archive_overrides(path, tmp_path / "shards")
    cfg = load_config(path, overrides)
    assert isinstance(cfg, RecipeConfig) and cfg.name
    if overrides:  # the archive's statistics, reordered to the recipe's bands
        n = len(cfg.data.bands)
        assert cfg.data.mean == pytest.approx([0.1 * (n - i) for i in range(n)])
        assert cfg.data.std == pytest.approx([0.01 * (n - i) for i in range(n)])


def test_archive_normalization_errors_name_the_fix(tmp_path):
    recipe = REPO / "configs" / "dubaiccd_tff.yaml"
    with pytest.raises(ConfigError, match=r"dubaiccd_tff.yaml:data.normalization: 'archive' needs "
                       r".*nowhere/_meta/band_stats.json.*rsir convert dubai-ccd"):
        load_config(recipe, [f"data.shards={tmp_path / 'nowhere'}"])
    overrides = archive_overrides(recipe, tmp_path / "shards")
    with pytest.raises(ConfigError, match=r"data.bands: \['PAN'\] not in"):
        load_config(recipe, [*overrides, "data.bands=[R, PAN]"])
    with pytest.raises(ConfigError, match="statistics of split 'train', the recipe trains on 'val'"):
        load_config(recipe, [*overrides, "data.train_split=val"])
    cfg = load_config(recipe, [*overrides, "data.bands=[NIR, R]"])
    assert cfg.data.mean == pytest.approx([0.3, 0.6]) and cfg.data.std == pytest.approx([0.03, 0.06])
    # The resolved recipe written beside a run loads back to the same numbers.
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_evaluated_splits_are_test_and_for_pairs_under_the_caption_protocol_val_too():
    from rsir.config import evaluated_splits

    assert evaluated_splits(load_config(REPO / "configs" / "demo.yaml")) == ["test"]
    levir = load_config(REPO / "configs" / "levircc_tff.yaml")
    assert evaluated_splits(levir) == ["test", "val"]
    off = load_config(REPO / "configs" / "levircc_tff.yaml", ["eval.caption_protocol=false"])
    assert evaluated_splits(off) == ["test"]


def test_train_select_defaults_to_last_and_best_val_is_refused_on_an_evaluated_split():
    assert load_config(REPO / "configs" / "levircc_tff.yaml").train.select == "last"
    # the caption protocol merges val + test: choosing the epoch on val chooses on the pool
    with pytest.raises(ConfigError, match=r"levircc_tff.yaml:train.select: 'best_val'.*'val'.*caption"):
        load_config(REPO / "configs" / "levircc_tff.yaml", ["train.select=best_val"])
    # RSITMD has no validation split: the test split stands in
    with pytest.raises(ConfigError, match=r"train.select: 'best_val'.*'test'.*it is the test split"):
        load_config(REPO / "configs" / "rsitmd_multilingual.yaml", ["train.select=best_val"])
    with pytest.raises(ConfigError, match=r"train.select: 'best_val' needs a validation split"):
        load_config(REPO / "configs" / "demo.yaml", ["train.select=best_val", "data.val_split=''"])
    # allowed where val is held out of the evaluation
    assert load_config(REPO / "configs" / "demo.yaml", ["train.select=best_val"]).train.select == "best_val"
    assert load_config(REPO / "configs" / "levircc_tff.yaml", [
        "train.select=best_val", "eval.caption_protocol=false"]).train.select == "best_val"
    with pytest.raises(ConfigError, match=r"train.select: expected one of \['last', 'best_val'\]"):
        load_config(REPO / "configs" / "demo.yaml", ["train.select=best"])
    with pytest.raises(ConfigError, match=r"data.captions: expected one of \['all', 'one_random'\]"):
        load_config(REPO / "configs" / "demo.yaml", ["data.captions=every"])


@pytest.mark.parametrize("recipe, captions", [
    # the time-series paper (IV-B) and GaLR's code (one sample per caption) train on every caption
    ("levircc_tff", "all"), ("levircc_gff_sub", "all"), ("dubaiccd_gff_concat", "all"),
    ("rsitmd_galr", "all"), ("demo", "all"),
    # the multilanguage paper draws one of an image's sentences (IV-B)
    ("rsicd_multilingual", "one_random"), ("rsitmd_multilingual", "one_random"),
    ("ucm_multilingual", "one_random"),
])
def test_training_rows_per_caption_follow_each_paper(recipe, captions, tmp_path):
    overrides = []
    if load_yaml(REPO / "configs" / f"{recipe}.yaml").get("data", {}).get("normalization") == "archive":
        overrides = ["data.normalization=recipe"]  # no converted archive here
    assert load_config(REPO / "configs" / f"{recipe}.yaml", overrides).data.captions == captions
