"""Corrupt rows at read time: preprocessing skips and counts them, in the library and in Ray Data."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from rsir.config import DataConfig
from rsir.data.contract import InputContract
from rsir.data.demo_world import pair_row, scene_row
from rsir.data.schema import encode_image, make_row, write_shards
from rsir.data.transforms import caption_groups, preprocess_rows

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
        # every good row once per English caption (5 each) per pass
        assert Counter(ids) == {r["id"]: 5 for r in good}
        summary = ray_session.get(counter.summary.remote())
        assert summary["rows"] == 4
        # the three undecodable rows are read once per caption, the caption-less one once
        assert summary["reads"] == (3 * 5 + 1) * epoch
    assert sorted(summary["examples"]) == sorted(r["id"] for r in bad)


def test_levir_cc_rule_keeps_every_changed_pair_and_the_same_share_of_unchanged_ones(ray_session, tmp_path):
    from rsir.data.pipeline import training_dataset

    rows = [pair_row(i, 0, "train", 32) for i in range(80)]
    write_shards(rows, tmp_path / "pairs")
    changed = {r["id"] for r in rows if r["changed"]}
    unchanged = {r["id"] for r in rows if not r["changed"]}
    assert len(changed) > 20 and len(unchanged) > 20
    cfg = dataclasses.replace(CFG, shards=str(tmp_path / "pairs"), task="pair",
                              no_change_keep_fraction=0.25, captions="one_random")
    ds = training_dataset(cfg, InputContract.of(cfg, "test"))
    passes = [sorted(i for b in ds.iter_batches(batch_size=8, batch_format="numpy") for i in b["id"])
              for _ in range(2)]
    assert passes[0] == passes[1]  # the same pairs every epoch
    kept = set(passes[0])
    assert changed <= kept
    # A 0.25 share of the unchanged pairs, drawn per id: binomial, mean 0.25 n, sd ~0.07 n.
    share = len(kept & unchanged) / len(unchanged)
    assert 0.05 < share < 0.5, share

    # One row per caption (the paper's samples), after the rule: the kept pairs each as many
    # times as they have English captions (5 in the demo world), every epoch.
    every = dataclasses.replace(cfg, captions="all")
    ds = training_dataset(every, InputContract.of(every, "test"))
    rows_by_id = {r["id"]: r for r in rows}
    expected = {i: sum(c["lang"] == "en" for c in rows_by_id[i]["captions"]) for i in kept}
    assert set(expected.values()) == {5}
    for _ in range(2):
        batches = list(ds.iter_batches(batch_size=8, batch_format="numpy"))
        assert Counter(i for b in batches for i in b["id"]) == expected
        # each copy of a pair trains on a different one of its captions
        texts = Counter((i, t) for b in batches for i, t in zip(b["id"], b["text"]))
        assert max(texts.values()) == 1 and len(texts) == 5 * len(kept)


def _caps(**per_lang: list[str]) -> list[dict[str, str]]:
    return [{"text": t, "lang": lang} for lang, texts in per_lang.items() for t in texts]


def test_caption_groups_one_row_per_caption_or_per_caption_index():
    caps = _caps(en=["e0", "e1", "", "e3"], fr=["f0", "f1"], ar=["a0", "a1", "a2"])
    # one language: one row per non-empty caption of it
    assert caption_groups(caps, "en", ["en", "fr"]) == [_caps(en=[t]) for t in ("e0", "e1", "e3")]
    # random over the declared languages: the i-th caption of each (ar is not declared)
    assert caption_groups(caps, "random", ["en", "fr"]) == [
        _caps(en=["e0"], fr=["f0"]), _caps(en=["e1"], fr=["f1"]), _caps(en=["e3"])]
    # nothing to train on: the row stays as it is, for preprocessing to drop and count
    assert caption_groups(_caps(fr=["f0"]), "en", ["en"]) == [_caps(fr=["f0"])]
    assert caption_groups(None, "en", ["en"]) == [None]
    assert caption_groups([], "random", ["en"]) == [[]]


@pytest.mark.ray
def test_multilingual_rows_are_caption_indices_with_a_language_drawn_each(ray_session, tmp_path):
    from rsir.data.pipeline import training_dataset

    image = scene_row(0, 0, "train", 32)["image"]
    rows = [make_row(id=f"r{i}", split="train", image=image,
                     captions=_caps(en=[f"e{i}-{j}" for j in range(n)], fr=[f"f{i}-{j}" for j in range(n)]))
            for i, n in enumerate((1, 2, 3))]
    write_shards(rows, tmp_path / "m")
    cfg = dataclasses.replace(CFG, shards=str(tmp_path / "m"), languages=["en", "fr"], language="random",
                              augment=False)
    ds = training_dataset(cfg, InputContract.of(cfg, "test"))
    seen = Counter()
    for _ in range(8):
        out = [(i, t) for b in ds.iter_batches(batch_size=6, batch_format="numpy")
               for i, t in zip(b["id"], b["text"])]
        assert Counter(i for i, _ in out) == {"r0": 1, "r1": 2, "r2": 3}  # 6 rows: 1 + 2 + 3 indices
        # each row holds one caption index: its two texts (en / fr) are that index's
        assert sorted(t.split("-")[1] for i, t in out if i == "r2") == ["0", "1", "2"]
        seen.update(t[0] for _, t in out)
    assert seen["e"] > 10 and seen["f"] > 10  # both languages drawn (48 draws, p = 1/2)


def _sorted_split(root, n_a: int, n_b: int, per_shard: int):
    """A class-sorted training split: ``n_a`` rows of class a, then ``n_b`` of class b (a
    tail of consecutive rows, as LEVIR-CC's no-change pairs), in shards of ``per_shard``
    rows whose file names keep that order."""
    image = encode_image(np.zeros((8, 8, 3), np.uint8))
    rows = [make_row(id=f"{c}-{i:05d}", split="train", image=image, captions=_caps(en=[f"{c} {i}"]))
            for c, n in (("a", n_a), ("b", n_b)) for i in range(n)]
    for k in range(0, len(rows), per_shard):
        write_shards(rows[k: k + per_shard], root, prefix=f"part{k // per_shard:03d}")
    return root


@pytest.mark.ray
def test_each_epoch_is_a_uniform_shuffle_of_a_sorted_split(ray_session, tmp_path):
    """Per batch of 32, the count of tail rows (192 of 768) is hypergeometric under a
    uniform draw: mean 8, variance 32 (1/4)(3/4)(736/767) = 5.76. Shards of 128 rows read in
    file order through a 128-row buffer put the tail in a few batches (variance ~ 100)."""
    from rsir.data.pipeline import training_dataset

    cfg = dataclasses.replace(CFG, shards=str(_sorted_split(tmp_path / "s", 576, 192, 128)),
                              image_size=8, augment=False)
    ds = training_dataset(cfg, InputContract.of(cfg, "test"), seed=3)
    uniform_var = 32 * 0.25 * 0.75 * (768 - 32) / (768 - 1)
    orders = []
    for _ in range(2):
        ids = [list(b["id"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy", drop_last=True)]
        assert len(ids) == 24 and sorted(sum(ids, [])) == sorted(
            [f"a-{i:05d}" for i in range(576)] + [f"b-{i:05d}" for i in range(192)])
        tail = np.array([sum(i.startswith("b") for i in batch) for batch in ids])
        # 23 degrees of freedom: the ratio is 1 +- 0.3; 2.5 has p < 1e-4 under a uniform draw
        assert tail.var(ddof=1) / uniform_var < 2.5, tail
        assert tail.max() <= 18, tail  # P(X >= 19) ~ 1e-6 per batch
        orders.append(sum(ids, []))
    assert orders[0] != orders[1]  # a new permutation each epoch
