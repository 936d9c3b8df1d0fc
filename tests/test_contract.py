"""The data -> model contract: what each model reads, an archive measured against it, and the
path a GaLR recipe's objects take from a converted shard through Ray Train to the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO
from rsir.config import load_config
from rsir.data.contract import archive_problems, inspect_archive
from rsir.data.demo_world import generate
from rsir.data.schema import SHARD_SCHEMA, read_table
from rsir.data.transforms import Augment, augment_objects, preprocess_rows
from rsir.models import create_model, input_contract
from rsir.models.registry import MODEL_FIELDS, MODELS

# A GaLR small enough for a 1-epoch run on 2 CPUs; hashed vocabulary (no vocab file).
GALR = ("model={name: galr, embed_dim: 32, options: {backbone: tiny, widths: [8, 16, 32, 64], "
        "image_size: 32, node_dim: 16, max_objects: 8, heads: 4, ff_dim: 64, dynamic_dim: 32, "
        "word_dim: 32, text_hidden: 32, max_words: 16, vocab: null, vocab_buckets: 2048}}")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contract_world")
    generate(out, n_scenes=128, n_pairs=0, seed=1, val_fraction=0.125, test_fraction=0.0, size=32)
    return out / "single"


def _rewrite(src: Path, dst: Path, column: str, fn) -> Path:
    """A copy of the archive with ``column`` replaced row by row by ``fn(value)``."""
    dst.mkdir(parents=True)
    for p in sorted(src.glob("*.parquet")):
        t = pq.read_table(p, schema=SHARD_SCHEMA)
        values = pa.array([fn(v) for v in t.column(column).to_pylist()], type=SHARD_SCHEMA.field(column).type)
        pq.write_table(t.set_column(t.schema.get_field_index(column), column, values), dst / p.name)
    return dst


def _column(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_every_registered_model_declares_its_inputs():
    assert MODEL_FIELDS.names() == MODELS.names()


def test_contracts_by_model_and_task():
    demo = load_config(REPO / "configs" / "demo.yaml")
    c = input_contract(demo)
    assert c.columns == ["id", "split", "image", "bands", "captions", "changed"]
    assert c.batch_keys == ["id", "image", "text", "lang"]
    assert c.languages == ("en", "ar", "fr", "it")
    pair = input_contract(load_config(REPO / "configs" / "demo.yaml", ["data.task=pair"]))
    assert pair.columns == ["id", "split", "image", "image_t2", "bands", "captions", "changed"]
    assert pair.image_key == "image_pair"
    galr = input_contract(load_config(REPO / "configs" / "rsitmd_galr.yaml"))
    assert galr.fields == ("objects",) and galr.columns[-1] == "objects"
    assert galr.batch_keys == ["id", "image", "text", "lang", "objects"]
    off = load_config(REPO / "configs" / "rsitmd_galr.yaml", ["model.options.local_branch=false"])
    assert input_contract(off).fields == ()
    with pytest.raises(ValueError, match="data.language 'de' is not in data.languages"):
        input_contract(load_config(REPO / "configs" / "demo.yaml", ["data.language=de"]))


def test_inspect_archive_counts_what_the_rows_hold(world):
    summary = inspect_archive(world)
    rows = read_table(world).to_pylist()
    assert summary.rows == {s: sum(r["split"] == s for r in rows) for s in ("train", "val")}
    for lang in ("en", "ar", "fr", "it"):
        caps = [c for r in rows for c in r["captions"] if c["lang"] == lang]
        owners = {r["id"] for r in rows for c in r["captions"] if c["lang"] == lang}
        assert summary.captions[lang] == {"captions": len(caps), "rows": len(owners)}
    n_obj = sum(len(r["objects"]) for r in rows)
    assert summary.objects["objects"] == n_obj > 0
    assert summary.objects["rows_with_objects"] == sum(bool(r["objects"]) for r in rows)
    assert summary.bands == {"R,G,B": len(rows)}


def test_archive_problems_name_recipe_column_archive_and_fix(world, tmp_path):
    galr = input_contract(load_config(REPO / "configs" / "rsitmd_galr.yaml"))
    galr = dataclasses.replace(galr, languages=("en", "ar", "fr", "it"))
    assert archive_problems(galr, inspect_archive(world), ["train", "val"]) == []

    english = _rewrite(world, tmp_path / "en_only", "captions",
                       lambda caps: [c for c in caps if c["lang"] == "en"])
    (problem,) = archive_problems(galr, inspect_archive(english), ["train"])
    assert "recipe rsitmd_galr" in problem and str(english) in problem
    assert "no captions in ar, fr, it" in problem and "rsir translate" in problem

    no_objects = _rewrite(world, tmp_path / "no_objects", "objects", lambda objs: [])
    (problem,) = archive_problems(galr, inspect_archive(no_objects), ["train"])
    assert "'objects' is empty on every row" in problem and "rsir detect" in problem
    assert "local_branch=false" in problem

    dual = input_contract(load_config(REPO / "configs" / "demo.yaml"))
    (problem,) = archive_problems(dual, inspect_archive(world), ["test"])
    assert "no rows in split 'test'" in problem and "train, val" in problem
    nir = dataclasses.replace(dual, bands=("R", "G", "B", "NIR"))
    assert "without NIR" in archive_problems(nir, inspect_archive(world), [])[0]


def test_augment_objects_moves_boxes_with_the_crop_and_flips():
    objs = [{"box": [0.2, 0.3, 0.4, 0.5], "category": "car", "score": 0.9},
            {"box": [0.0, 0.0, 0.05, 0.05], "category": "tree", "score": None}]
    crop = Augment(crop=(0.1, 0.1, 0.8, 0.8), hflip=True, vflip=False, brightness=1, contrast=1)
    (car,) = augment_objects(objs, crop)  # the tree lies outside the crop
    # x: (0.2-0.1)/0.8 = 0.125, (0.4-0.1)/0.8 = 0.375, flipped: 0.625..0.875
    # y: (0.3-0.1)/0.8 = 0.25, (0.5-0.1)/0.8 = 0.5
    np.testing.assert_allclose(car["box"], [0.625, 0.25, 0.875, 0.5])
    assert car["category"] == "car" and car["score"] == pytest.approx(0.9)
    assert augment_objects(objs, None)[1]["score"] == 1.0  # ground truth, unchanged box
    # 90° counter-clockwise (torchvision's rotate): (x, y) -> (y, 1 - x) in fractions
    turn = Augment(crop=(0.0, 0.0, 1.0, 1.0), hflip=False, vflip=False, brightness=1, contrast=1,
                   rotation=90.0)
    np.testing.assert_allclose(augment_objects(objs[:1], turn)[0]["box"], [0.3, 0.6, 0.5, 0.8],
                               atol=1e-12)


def test_rotated_boxes_follow_the_rotated_pixels():
    """The box of a lit square, rotated with the image by torchvision, bounds the lit pixels."""
    from rsir.data.transforms import apply_augment

    image = torch.zeros(1, 40, 40)
    image[0, 4:12, 24:36] = 1.0  # rows 4-11, columns 24-35: box x 0.6-0.9, y 0.1-0.3
    turn = Augment(crop=(0.0, 0.0, 1.0, 1.0), hflip=False, vflip=False, brightness=1, contrast=1,
                   rotation=90.0)
    lit = (apply_augment(image, turn, 40)[0] > 0.5).nonzero()
    (obj,) = augment_objects([{"box": [0.6, 0.1, 0.9, 0.3], "category": "car"}], turn)
    rows, cols = lit[:, 0], lit[:, 1]
    np.testing.assert_allclose(obj["box"], [cols.min() / 40, rows.min() / 40, (cols.max() + 1) / 40,
                                     (rows.max() + 1) / 40], atol=1e-9)
    assert augment_objects(None, turn) == []


def test_preprocess_rows_carries_the_model_fields_of_kept_rows(world):
    rows = read_table(world).slice(0, 6).to_pylist()
    rows[2]["image"] = b"not an image"
    batch = {k: _column([r[k] for r in rows]) for k in rows[0]}
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.image_size=32"]).data
    out, dropped = preprocess_rows(batch, cfg, train=False, fields=("objects",))
    assert [d.id for d in dropped] == [rows[2]["id"]]
    kept = [r for i, r in enumerate(rows) if i != 2]
    assert [len(o) for o in out["objects"]] == [len(r["objects"]) for r in kept]
    assert out["objects"][0][0]["category"] == kept[0]["objects"][0]["category"]


@pytest.mark.ray
@pytest.mark.slow
def test_galr_local_branch_learns_from_the_shards_objects(ray_session, world, tmp_path):
    """One epoch of GaLR through Ray Data and Ray Train: the local branch's weights move (they
    did not when the pipeline dropped ``objects``); without the branch they do not exist."""
    from rsir.train.trainer import fit

    base = [f"data.shards={world}", GALR, "loss.name=triplet", "data.image_size=32",
            "train.epochs=1", "train.max_failures=0", "data.batch_size=16", "scaling.num_workers=1",
            "data.captions=one_random"]
    cfg = load_config(REPO / "configs" / "demo_tiny.yaml", base)
    torch.manual_seed(cfg.train.seed)  # rank 0 builds its model right after this seed
    initial = create_model(cfg.model, cfg.loss).state_dict()
    trained = torch.load(fit(cfg, tmp_path / "full").checkpoint, weights_only=True)["model"]
    local = [k for k in initial if k.startswith("local_branch.")]
    assert len(local) >= 8
    moved = [k for k in local if not torch.equal(initial[k], trained[k])]
    assert moved == local
    # the seeded initial model is rank 0's: the hashed word buckets no caption uses are untouched
    emb = next(k for k in initial if k.endswith("embedding.weight") and k.startswith("text_encoder"))
    untouched = (initial[emb] == trained[emb]).all(dim=1).float().mean()
    assert untouched > 0.5

    off = load_config(REPO / "configs" / "demo_tiny.yaml", [*base, "model.options.local_branch=false"])
    state = torch.load(fit(off, tmp_path / "global").checkpoint, weights_only=True)["model"]
    assert not [k for k in state if k.startswith(("local_branch.", "fusion."))]
