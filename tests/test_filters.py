"""Filtered search (rsir.retrieval.filters), the shard merge (rsir.retrieval.shards) and
WEICOM standardised over shards: against brute force on small generated archives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from rsir.retrieval.composed import similarity_stats, weicom, weicom_from_stats
from rsir.retrieval.filters import (
    FilterError,
    MetadataTable,
    Oversampling,
    SearchFilter,
    StackedMetadata,
    exact_top_k,
    filtered_top_k,
    has_saved_metadata,
    parse_datetime,
    parse_filter,
    save_metadata,
)
from rsir.retrieval.shards import merge_top_k, shard_range
from rsir.retrieval.topk import ExactSearcher

UTC = timezone.utc


def unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def archive(n: int = 300, seed: int = 0) -> dict:
    """Tiles on a lon/lat grid (0.1 deg), dates 2018..2024, some pairs, some rows with no
    geography (like a benchmark's)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("bbox", "acquired", "acquired_t2", "class_name",
                                            "changed", "sensor")}
    for i in range(n):
        if i % 17 == 0:  # no geography, no date
            cols["bbox"].append(None)
            cols["acquired"].append(None)
        else:
            lon, lat = -10 + 0.1 * (i % 40), 40 + 0.1 * (i // 40)
            cols["bbox"].append([lon, lat, lon + 0.1, lat + 0.1])
            cols["acquired"].append(datetime(2018, 1, 1, tzinfo=UTC)
                                    + timedelta(days=int(rng.integers(0, 6 * 365))))
        pair = i % 3 == 0 and cols["acquired"][-1] is not None
        cols["acquired_t2"].append(cols["acquired"][-1] + timedelta(days=400) if pair else None)
        cols["changed"].append(bool(rng.integers(0, 2)) if pair else None)
        cols["class_name"].append(["forest", "urban", "water", None][i % 4])
        cols["sensor"].append(["landsat-8", "sentinel-2a"][i % 2] if i % 5 else None)
    return cols


def brute(cols: dict, f: dict) -> np.ndarray:
    """An independent reading of the filter rules, row by row in Python."""
    keep = []
    for i in range(len(cols["bbox"])):
        ok = True
        if "bbox" in f:
            b, (w, s, e, n) = cols["bbox"][i], f["bbox"]
            ok &= b is not None and b[0] <= e and b[2] >= w and b[1] <= n and b[3] >= s
        if "datetime" in f:
            t1, t2 = cols["acquired"][i], cols["acquired_t2"][i]
            lo, hi = f["datetime"].split("/")
            if t1 is None:
                ok = False
            else:
                end = t2 or t1
                if lo != "..":
                    ok &= end >= datetime.fromisoformat(lo.replace("Z", "+00:00"))
                if hi != "..":
                    ok &= t1 <= datetime.fromisoformat(hi.replace("Z", "+00:00"))
        if "class_name" in f:
            names = [f["class_name"]] if isinstance(f["class_name"], str) else f["class_name"]
            ok &= cols["class_name"][i] in names
        if "changed" in f:
            ok &= cols["changed"][i] is f["changed"]
        if "sensor" in f:
            ok &= cols["sensor"][i] == f["sensor"]
        keep.append(ok)
    return np.flatnonzero(keep)


FILTERS = [
    {"bbox": [-9.55, 40.25, -8.95, 40.75]},
    {"datetime": "2019-01-01T00:00:00Z/2020-06-30T23:59:59Z"},
    {"datetime": "../2018-06-01T00:00:00Z"},
    {"datetime": "2023-01-01T00:00:00+02:00/.."},
    {"class_name": ["urban", "water"], "sensor": "sentinel-2a"},
    {"changed": True},
    {"changed": False, "bbox": [-10, 40, -7, 41], "datetime": "2019-01-01T00:00:00Z/.."},
    {"class_name": "forest", "bbox": [-9.0, 40.0, -8.0, 40.5]},
    {"bbox": [50, 10, 51, 11]},  # nothing there
]


@pytest.mark.parametrize("f", FILTERS, ids=[str(f) for f in FILTERS])
def test_mask_matches_row_by_row_reading(f):
    cols = archive()
    table = MetadataTable(cols, 300)
    np.testing.assert_array_equal(table.candidates(parse_filter(f)), brute(cols, f))
    # In blocks (a shard's millions of rows), the last one short.
    np.testing.assert_array_equal(np.flatnonzero(table.mask(parse_filter(f), block=7)), brute(cols, f))


@pytest.mark.parametrize("f", FILTERS, ids=[str(f) for f in FILTERS])
def test_mask_of_arrow_columns_read_from_parquet_matches_row_by_row_reading(f, tmp_path):
    """A search shard's table: the columns as an archive's Parquet reads them back (bbox
    list<double>, timestamp[us, UTC], strings, bools, nulls), not Python lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = archive()
    pq.write_table(pa.table({k: pa.array(v) for k, v in cols.items()}), tmp_path / "rows.parquet",
                   row_group_size=64)  # several chunks
    read = pq.read_table(tmp_path / "rows.parquet")
    assert read.column("bbox").num_chunks > 1
    table = MetadataTable({name: read.column(name) for name in read.column_names}, 300)
    np.testing.assert_array_equal(table.candidates(parse_filter(f)), brute(cols, f))


@pytest.mark.parametrize("f", FILTERS, ids=[str(f) for f in FILTERS])
def test_saved_tables_stacked_with_tombstones_match_row_by_row_reading(f, tmp_path):
    """A search shard's table of an indexed version: each piece's table saved (its own
    category codes renumbered over all its batches), loaded memory-mapped, the pieces
    stacked and their tombstones left out."""
    import pyarrow as pa

    cols = archive()
    bounds = [0, 70, 70, 190, 300]  # an empty piece too
    tables, codings = [], set()
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        # Batches as a piece's writer sees them: Arrow columns, each batch coding its
        # categories in the order they first appear in it.
        batches = [MetadataTable({k: pa.array(v[lo:min(lo + 50, b)]) for k, v in cols.items()}, min(50, b - lo))
                   for lo in range(a, b, 50)]
        codings.update(tuple(t.class_names) for t in batches)
        save_metadata(batches, b - a, tmp_path / f"piece-{p}")
        tables.append(MetadataTable.load(tmp_path / f"piece-{p}"))
    assert len(codings) > 1  # the codes were renumbered
    assert isinstance(tables[0].bbox, np.memmap) and len(tables[1].class_names) == 0
    deleted = np.array([0, 5, 69, 70, 150, 299])
    live = np.setdiff1d(np.arange(300), deleted)
    stacked = StackedMetadata(tables, deleted)
    assert stacked.n == len(live)
    np.testing.assert_array_equal(stacked.candidates(parse_filter(f)),
                                  brute({k: [v[i] for i in live] for k, v in cols.items()}, f))


def test_saving_fewer_or_more_rows_than_announced_is_refused(tmp_path):
    cols = archive()
    table = MetadataTable(cols, 300)
    with pytest.raises(ValueError, match="300 rows, 301 expected"):
        save_metadata([table], 301, tmp_path / "short")
    with pytest.raises(ValueError, match="more than the 299 rows"):
        save_metadata([table], 299, tmp_path / "long")
    assert not has_saved_metadata(tmp_path / "short") and not has_saved_metadata(tmp_path / "long")


def test_arrow_boxes_without_four_numbers_are_refused():
    import pyarrow as pa

    with pytest.raises(ValueError, match="bbox"):
        MetadataTable({"bbox": pa.array([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0]])}, 2)


def test_filters_restrict_as_counted_by_hand():
    cols = archive()
    table = MetadataTable(cols, 300)
    # Rows 0..39 form the first grid line at lat 40.0..40.1; the box [-10, 40, -9.65, 40.05]
    # meets cells i with -10 + 0.1 i <= -9.65: i = 0..3, less row 0 (no bbox); the next
    # grid line starts at lat 40.1 > 40.05.
    got = table.candidates(parse_filter({"bbox": [-10, 40, -9.65, 40.05]}))
    assert got.tolist() == [1, 2, 3]
    assert table.candidates(parse_filter({})) is None
    assert table.candidates(None) is None
    # changed is only ever set on pairs (i % 3 == 0 and dated)
    assert all(i % 3 == 0 for i in table.candidates(parse_filter({"changed": True})))


def test_antimeridian_boxes():
    cols = {"bbox": [[179.5, 0, -179.5, 1],  # a row across the antimeridian
                     [170, 0, 171, 1], [-171, 0, -170, 1], [10, 0, 11, 1]]}
    table = MetadataTable(cols, 4)
    assert table.candidates(parse_filter({"bbox": [179, 0, 180, 1]})).tolist() == [0]
    assert table.candidates(parse_filter({"bbox": [-180, 0, -179.8, 1]})).tolist() == [0]
    # a query across the antimeridian: 170 .. 180 and -180 .. -170
    assert table.candidates(parse_filter({"bbox": [170.5, 0, -170.5, 1]})).tolist() == [0, 1, 2]


def test_pair_interval_intersects():
    t = datetime(2019, 5, 1, tzinfo=UTC)
    cols = {"acquired": [t, t], "acquired_t2": [t + timedelta(days=730), None]}
    table = MetadataTable(cols, 2)
    # 2020 lies between a pair's two dates: the pair passes, the single image does not.
    f = parse_filter({"datetime": "2020-01-01T00:00:00Z/2020-12-31T00:00:00Z"})
    assert table.candidates(f).tolist() == [0]
    assert table.candidates(parse_filter({"datetime": "2019-05-01T00:00:00Z"})).tolist() == [0, 1]


BAD = [
    ([1, 2], "filter"),
    ({"box": [0, 0, 1, 1]}, "filter.box"),
    ({"bbox": [0, 0, 1]}, "filter.bbox"),
    ({"bbox": [0, 0, 1, "x"]}, "filter.bbox"),
    ({"bbox": [0, 50, 1, 40]}, "filter.bbox"),
    ({"bbox": [0, 0, 200, 1]}, "filter.bbox"),
    ({"bbox": [0, 0, float("nan"), 1]}, "filter.bbox"),
    ({"datetime": "2020-01-01"}, "filter.datetime"),
    ({"datetime": "2020-01-01T00:00:00"}, "filter.datetime"),
    ({"datetime": "../.."}, "filter.datetime"),
    ({"datetime": "2021-01-01T00:00:00Z/2020-01-01T00:00:00Z"}, "filter.datetime"),
    ({"datetime": "a/b/c"}, "filter.datetime"),
    ({"datetime": 2020}, "filter.datetime"),
    ({"class_name": []}, "filter.class_name"),
    ({"class_name": 3}, "filter.class_name"),
    ({"changed": "yes"}, "filter.changed"),
    ({"sensor": [""]}, "filter.sensor"),
]


@pytest.mark.parametrize("value,field", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_filters_name_the_field(value, field):
    with pytest.raises(FilterError) as err:
        parse_filter(value)
    assert err.value.field == field


def test_datetime_offsets():
    assert parse_datetime("1970-01-01T00:00:01Z") == 1_000_000
    assert parse_datetime("1970-01-01T01:00:00+01:00") == 0
    assert parse_datetime("2021-06-01T10:30:00.5z") == parse_datetime("2021-06-01T10:30:00.500Z")


@pytest.mark.parametrize("f", FILTERS[:8], ids=[str(f) for f in FILTERS[:8]])
def test_filtered_top_k_equals_brute_force(f):
    cols, vec, q = archive(), unit(300, 16, 1), unit(5, 16, 2)
    rows = MetadataTable(cols, 300).candidates(parse_filter(f))
    passing = brute(cols, f)
    k = 10
    scores, got = filtered_top_k(vec, q, k, rows)
    full = q @ vec.T
    for j in range(len(q)):
        order = passing[np.argsort(-full[j, passing], kind="stable")][:k]
        assert got[j, : len(order)].tolist() == order.tolist()
        np.testing.assert_allclose(scores[j, : len(order)], full[j, order], rtol=1e-5)
        assert (got[j, len(order):] == -1).all()  # fewer than k pass: padding
    # through the ANN seam (oversampling an unrestricted searcher), k results all pass
    ann = Oversampling(ExactSearcher(vec), vec, factor=1.0)
    s2, r2 = filtered_top_k(vec, q, k, rows, ann=ann, exact_max=0)
    np.testing.assert_array_equal(r2, got)


def test_oversampling_falls_back_to_exact_when_the_index_misses():
    """An 'ANN' that only ever sees the first half of the archive: a filter whose rows all
    lie in the second half still gets its k results (the exact fallback)."""
    vec, q = unit(200, 8, 3), unit(3, 8, 4)

    class HalfIndex:
        def search(self, queries, k):
            s, r = exact_top_k(vec[:100], queries, min(k, 100))
            return s, r

    rows = np.arange(150, 200)
    ann = Oversampling(HalfIndex(), vec)
    s, r = ann.search(q, 5, rows)
    np.testing.assert_array_equal(r, exact_top_k(vec, q, 5, rows)[1])
    assert ann.exact_fallbacks == 3


def test_merge_of_shards_equals_the_unsharded_top_k():
    vec, q = unit(103, 12, 5), unit(4, 12, 6)
    k, shards = 7, 4
    want_s, want_r = exact_top_k(vec, q, k)
    lists, starts = [], []
    for i in range(shards):
        a, b = shard_range(len(vec), i, shards)
        starts.append(a)
        lists.append(exact_top_k(vec[a:b], q, k))
    s, shard, pos = merge_top_k([x[0] for x in lists], k)
    rows = np.array([[starts[shard[j, c]] + lists[shard[j, c]][1][j, pos[j, c]]
                      for c in range(k)] for j in range(len(q))])
    np.testing.assert_array_equal(rows, want_r)
    np.testing.assert_allclose(s, want_s, rtol=1e-6)
    assert sum(shard_range(103, i, 4)[1] - shard_range(103, i, 4)[0] for i in range(4)) == 103
    assert [shard_range(10, i, 3) for i in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_merge_pads_and_keeps_shard_order_on_ties():
    a = np.array([[0.9, 0.5, -np.inf]])
    b = np.array([[0.9, -np.inf]])
    s, shard, pos = merge_top_k([a, b], 4)
    assert s[0, :3].tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert shard[0].tolist() == [0, 1, 0, -1] and pos[0].tolist() == [0, 0, 1, -1]
    with pytest.raises(ValueError):
        merge_top_k([np.zeros((2, 1)), np.zeros((3, 1))], 1)


def test_weicom_over_shards_equals_weicom_over_the_archive():
    rng = np.random.default_rng(7)
    img, txt = rng.uniform(-1, 1, (3, 50)), rng.uniform(-1, 1, (3, 50))
    want = weicom(img, txt, 0.3)
    parts = [(0, 20), (20, 21), (21, 50)]
    si = sum(similarity_stats(img[:, a:b]) for a, b in parts)
    st = sum(similarity_stats(txt[:, a:b]) for a, b in parts)
    got = np.concatenate([weicom_from_stats(img[:, a:b], txt[:, a:b], 0.3, si, st)
                          for a, b in parts], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_empty_filter_is_empty():
    assert SearchFilter().empty and not parse_filter({"changed": False}).empty


def test_index_metadata_round_trip_through_ray_block_columns():
    """rsir index carries each row's geography through Ray Data blocks as plain columns
    (rsir.inference.encode_metadata) and back to archive values; as Ray hands timestamps
    over (numpy datetime64, NaT for none) and as Arrow does (aware datetimes)."""
    from rsir.inference import ROW_METADATA, decode_metadata, encode_metadata

    t = datetime(2021, 6, 1, 10, 30, tzinfo=UTC)
    batch = {
        "bbox": np.array([np.array([1.0, 2.0, 3.0, 4.0]), None], dtype=object),
        "footprint": np.array([b"\x01wkb", None], dtype=object),
        "class_name": np.array(["urban", None], dtype=object),
        "sensor": np.array([None, "landsat-8"], dtype=object),
        "acquired": np.array([np.datetime64("2021-06-01T10:30:00", "us"), np.datetime64("NaT")]),
        "acquired_t2": np.array([None, t + timedelta(days=400)], dtype=object),
    }
    encoded = encode_metadata(batch, [1, 0, 0])  # rows re-ordered and repeated, as owners are
    assert encoded["bbox"].dtype == np.float64 and encoded["acquired"].dtype == np.int64
    out = decode_metadata(encoded)
    assert set(out) == set(ROW_METADATA)
    assert out["bbox"] == [None, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]
    assert out["footprint"] == [None, b"\x01wkb", b"\x01wkb"]
    assert out["class_name"] == [None, "urban", "urban"] and out["sensor"] == ["landsat-8", None, None]
    assert out["acquired"] == [None, t, t]
    assert out["acquired_t2"] == [t + timedelta(days=400), None, None]
    # a shard batch without the geography columns (old shards): all none
    assert decode_metadata(encode_metadata({}, [0, 1]))["bbox"] == [None, None]
