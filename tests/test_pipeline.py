"""Corrupt rows at read time: preprocessing skips and counts them, in the library and in Ray Data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rsir.config import DataConfig
from rsir.data.contract import InputContract
from rsir.data.demo_world import pair_row, scene_row
from rsir.data.schema import make_row, write_shards
from rsir.data.transforms import preprocess_rows

CFG = DataConfig(image_size=32, batch_size=4)


def _corrupt_rows() -> list[dict]:
    """Three rows whose image cannot be decoded and one with no caption to train on."""
    good = scene_row(0, 1, "train", 32)
    caps = good["captions"]
    return [
        make_row(id="bad-garbage", split="train", image=b"certainly not an image", captions=caps),
        make_row(id="bad-truncated", split="train", image=good["image"][: len(good["image"]) // 2],
                 captions=caps),
        make_row(id="bad-empty", split="train", image=b"", captions=caps),
        make_row(id="bad-no-captions", split="train", image=good["image"], captions=[]),
    ]


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for k in ("id", "image", "image_t2", "bands", "captions"):
        col = np.empty(len(rows), dtype=object)
        col[:] = [r[k] for r in rows]
        out[k] = col
    return out


def test_preprocess_rows_returns_good_rows_and_lists_each_dropped_row():
    good = [scene_row(i, 0, "train", 32) for i in range(5)]
    bad = _corrupt_rows()
    rows = good[:2] + bad[:2] + good[2:] + bad[2:]
    out, dropped = preprocess_rows(_columns(rows), CFG, train=True, seed=0)
    assert list(out["id"]) == [r["id"] for r in good]
    assert out["image"].shape == (5, 3, 32, 32) and out["image"].dtype == np.float32
    assert len(out["text"]) == 5
    assert [d.id for d in dropped] == ["bad-garbage", "bad-truncated", "bad-empty", "bad-no-captions"]
    assert dropped[0].reason.startswith("undecodable image")
    assert dropped[2].reason == "empty image bytes"
    assert dropped[3].reason == "the row has no captions"


def test_pair_with_a_corrupt_second_date_is_dropped():
    rows = [pair_row(i, 0, "train", 32) for i in range(3)]
    rows[1] = {**rows[1], "image_t2": b"\x89PNG\r\n\x1a\n broken"}
    cfg = dataclasses.replace(CFG, task="pair")
    out, dropped = preprocess_rows(_columns(rows), cfg, train=False, with_captions=False)
    assert list(out["id"]) == [rows[0]["id"], rows[2]["id"]]
    assert out["image_pair"].shape == (2, 2, 3, 32, 32)
    assert [d.id for d in dropped] == [rows[1]["id"]]


@pytest.mark.ray
def test_training_dataset_skips_and_counts_corrupt_rows(ray_session, tmp_path):
    from rsir.data.pipeline import DropCounter, training_dataset

    good = [scene_row(i, 0, "train", 32) for i in range(20)]
    bad = _corrupt_rows()
    # one shard with good and corrupt rows interleaved, another with good rows only
    write_shards(good[:6] + bad[:2] + good[6:10] + bad[2:], tmp_path / "a")
    write_shards(good[10:], tmp_path / "b")
    for p in (tmp_path / "b").glob("*.parquet"):
        p.rename(tmp_path / "a" / f"b-{p.name}")
    counter = DropCounter.remote()
    ds = training_dataset(dataclasses.replace(CFG, shards=str(tmp_path / "a")), InputContract.of(CFG, "test"),
                          counter=counter)
    for epoch in (1, 2):
        ids = [i for b in ds.iter_batches(batch_size=8, batch_format="numpy") for i in b["id"]]
        assert sorted(ids) == sorted(r["id"] for r in good)  # every good row, once per pass
        summary = ray_session.get(counter.summary.remote())
        assert summary["rows"] == 4
        assert summary["reads"] == 4 * epoch
    assert sorted(summary["examples"]) == sorted(r["id"] for r in bad)


def test_levir_cc_rule_keeps_every_changed_pair_and_the_same_share_of_unchanged_ones(ray_session, tmp_path):
    from rsir.data.pipeline import training_dataset

    rows = [pair_row(i, 0, "train", 32) for i in range(80)]
    write_shards(rows, tmp_path / "pairs")
    changed = {r["id"] for r in rows if r["changed"]}
    unchanged = {r["id"] for r in rows if not r["changed"]}
    assert len(changed) > 20 and len(unchanged) > 20
    cfg = dataclasses.replace(CFG, shards=str(tmp_path / "pairs"), task="pair",
                              no_change_keep_fraction=0.25)
    ds = training_dataset(cfg, InputContract.of(cfg, "test"))
    passes = [sorted(i for b in ds.iter_batches(batch_size=8, batch_format="numpy") for i in b["id"])
              for _ in range(2)]
    assert passes[0] == passes[1]  # the same pairs every epoch
    kept = set(passes[0])
    assert changed <= kept
    # A 0.25 share of the unchanged pairs, drawn per id: binomial, mean 0.25 n, sd ~0.07 n.
    share = len(kept & unchanged) / len(unchanged)
    assert 0.05 < share < 0.5, share
