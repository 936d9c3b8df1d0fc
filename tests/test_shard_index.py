"""Search shards over an indexed archive version, without Ray: each shard opens its own
index pieces memory-mapped (a base of 3,000 rows in 4 pieces, an appended delta piece, a
delete), its parts together answer what the whole version's IndexSearcher answers, and
the ops that need raw vectors read them from the pieces, equal to the exact in-RAM path."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from rsir.retrieval.archive import embedding_matrix, load_archive, publish_archive, read_archive_rows, read_manifest
from rsir.retrieval.filters import exact_top_k, parse_filter
from rsir.retrieval.index import (
    BuildOptions,
    PieceVectors,
    RawVectorsMissing,
    build_version_index,
    open_searcher,
    piece_bounds,
    recall_at_k,
    shard_span,
)
from rsir.serve.archives import Part, ShardParts, load_part, part_of_rows
from rsir.serve.search import Query, answer, merge_hits

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)  # a shared 2-core machine

DIM = 32


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queries(n: int, seed: int) -> np.ndarray:
    """Near-duplicates of archive rows (queries from the archive's distribution)."""
    rng = np.random.default_rng(seed)
    x = clustered(3400, 0)[rng.integers(0, 3400, n)] + 0.1 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metadata(first: int, n: int) -> dict[str, list]:
    # One row in a hundred is "rare": a filter with few candidates.
    return {"class_name": ["rare" if (first + i) % 100 == 7 else "common" for i in range(n)],
            "bbox": [[-170 + 0.1 * (first + i), 0.0, -170 + 0.1 * (first + i) + 0.05, 1.0] for i in range(n)]}


def indexed_archive(root: str, key: str, refine: int = 4) -> str:
    """A base of 3,000 rows in 4 pieces, a delta of 400 rows (its own piece), then a delete
    of rows in the first, a middle and the delta piece; every version indexed."""
    x = clustered(3400, 0)
    ids = [f"r{i}" for i in range(3400)]
    opts = BuildOptions(key=key, pieces=4, refine=refine, eval_queries=50, seed=0)
    v1 = publish_archive(root, ids[:3000], x[:3000], {"model": "m"}, metadata(0, 3000), current=False)
    build_version_index(root, v1, opts)
    v2 = publish_archive(root, ids[3000:], x[3000:], {"model": "m"}, metadata(3000, 400), base=v1,
                         current=False)
    build_version_index(root, v2, opts)
    return publish_archive(root, [], np.zeros((0, DIM)), {"model": "m"}, base=v2,
                           deleted=[3, 700, 1507, 3100, 3399])


@pytest.fixture(scope="module")
def pq_root(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("pq") / "images")
    return root, indexed_archive(root, "IVF16,PQ8")


def exact_part(root: str, version: str, like: Part) -> Part:
    """The unindexed path's part of the same live rows: the float32 matrix in the heap."""
    rows = read_archive_rows(root, version, like.start, like.start + len(like.rows))
    return part_of_rows(version, like.start, rows, DIM, embedding_matrix(rows, DIM))


def ids_of(part: Part) -> list[str]:
    return [row["id"] for row in part.rows.take(np.arange(len(part.rows)))]


def parts_of(root: str, version: str, shards: int) -> list[ShardParts]:
    out = [ShardParts({"images": root}, i, shards) for i in range(shards)]
    for s in out:
        s.poll_once()
    return out


def test_shard_spans_are_whole_pieces_covering_the_version(pq_root) -> None:
    root, version = pq_root
    bounds = piece_bounds(root, version)
    assert bounds == [0, 750, 1500, 2250, 3000, 3400]
    for shards in (1, 2, 3, 7):
        spans = [shard_span(bounds, i, shards) for i in range(shards)]
        assert spans[0][0] == 0 and spans[-1][1] == 3400
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(s[0] in bounds and s[1] in bounds for s in spans)
    assert [shard_span(bounds, i, 2) for i in range(2)] == [(0, 1500), (1500, 3400)]


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_shard_parts_answer_what_the_whole_index_answers(pq_root, shards: int) -> None:
    root, version = pq_root
    whole = open_searcher(root, version)
    archive = load_archive(root, version)
    held = [s.get("images", version) for s in parts_of(root, version, shards)]
    # The parts partition the live rows, in order.
    assert sum((ids_of(p) for p in held), []) == archive.ids
    assert all(isinstance(p.vectors, PieceVectors) and p.ann is not None for p in held)
    q = queries(40, 1)
    want_s, want_r = whole.search(q, 10)
    found = []
    for j in range(len(q)):
        answers = [answer(s, [Query("top_k", "images", version, k=10, q=q[j])], 1000)[0]
                   for s in parts_of(root, version, shards)]
        scores, hits, _ = merge_hits(answers, 10)
        assert [h["id"] for h in hits] == [archive.ids[r] for r in want_r[j]]
        np.testing.assert_allclose(scores, want_s[j], rtol=1e-5)
        found.append([archive.ids.index(h["id"]) for h in hits])
    truth = exact_top_k(archive.vectors, q, 10)[1]
    assert recall_at_k(np.array(found), truth, 10) >= 0.9


def test_filtered_query_with_few_candidates_equals_brute_force(pq_root) -> None:
    root, version = pq_root
    archive = load_archive(root, version)
    rare = np.flatnonzero(np.array(archive.metadata["class_name"]) == "rare")
    assert 20 < len(rare) < 60
    flt = parse_filter({"class_name": "rare"})
    q = queries(5, 2)
    shards = parts_of(root, version, 2)
    for j in range(len(q)):
        answers = [answer(s, [Query("top_k", "images", version, k=10, q=q[j], filter=flt)], 1000)[0]
                   for s in shards]
        scores, hits, _ = merge_hits(answers, 10)
        want_s, want_r = exact_top_k(archive.vectors, q[j:j + 1], 10, rare)
        assert [h["id"] for h in hits] == [archive.ids[r] for r in want_r[0]]
        np.testing.assert_allclose(scores, want_s[0], rtol=1e-5)


@pytest.mark.parametrize("key", ["IVF16,PQ8", "IVF16,Flat", "Flat"])
def test_raw_vector_ops_equal_the_in_ram_path(tmp_path, pq_root, key: str) -> None:
    if key == "IVF16,PQ8":
        root, version = pq_root
    else:
        root = str(tmp_path / "images")
        version = indexed_archive(root, key)
    q = queries(3, 3)
    cand = queries(4, 4)
    flt = parse_filter({"bbox": [-160.02, 0, 90.02, 1]})  # rows 100..2600
    ops = [Query("stats", "images", version, qi=q[0], qt=q[1]),
           Query("pool_sims", "images", version, cand=cand),
           Query("top_k", "images", version, k=8, q=q[2], filter=parse_filter({"class_name": "rare"}),
                 with_vectors=True)]
    for shard in range(2):
        part = load_part(root, version, shard, 2)
        exact = exact_part(root, version, part)
        stats = answer(_Held(exact), [ops[0]], 1000)[0]  # standing in for the shards' sum
        composed = Query("composed", "images", version, k=8, qi=q[0], qt=q[1], lam=0.5,
                         stats=stats, filter=flt, with_vectors=True)
        got = answer(_Held(part), [*ops, composed], 1000)
        want = answer(_Held(exact), [*ops, composed], 1000)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
        for g, w in zip(got[2:], want[2:]):
            assert [h["id"] for h in g["hits"]] == [h["id"] for h in w["hits"]]
            np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g["vectors"], w["vectors"], rtol=1e-5, atol=1e-5)


class _Held:
    """A ShardParts stand-in holding one part (answer() asks ``get``)."""

    def __init__(self, part: Part) -> None:
        self.part = part

    def get(self, target: str, version: str) -> Part:
        return self.part


def test_an_indexed_part_holds_no_float32_matrix_of_its_rows(pq_root) -> None:
    root, version = pq_root
    rows = int(read_manifest(root, version)["rows"])
    tracemalloc.start()
    part = load_part(root, version, 0, 1)
    indexed_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    exact_part(root, version, part)
    exact_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(part.vectors, PieceVectors)
    assert all(isinstance(store, np.memmap) for _, _, store in part.ann.searcher.pieces)
    # The in-RAM part pays the matrix (and its Arrow-to-numpy copy); the indexed one not.
    assert exact_peak - indexed_peak > rows * DIM * 4
    assert part.vectors[np.array([0, rows - 1])].shape == (2, DIM)


def test_an_indexed_part_maps_its_ids_metadata_and_filter_table_from_its_pieces(pq_root) -> None:
    import pyarrow as pa

    root, version = pq_root
    before = pa.total_allocated_bytes()
    part = load_part(root, version, 1, 2)  # pieces 2, 3 and the delta: two segments, tombstones
    arrow_held = pa.total_allocated_bytes() - before
    archive = load_archive(root, version)
    # The rows are those of the pieces' files, not copies: Arrow allocated next to nothing
    # for 1,900 rows of ids, boxes and classes, and every filter array is a file's map.
    assert part.rows.table.num_rows == 1900 and len(part.rows) == 1900 - 3
    assert arrow_held < part.rows.table.nbytes / 10, (arrow_held, part.rows.table.nbytes)
    assert len(part.table.tables) == 3
    assert all(isinstance(getattr(t, a), np.memmap) for t in part.table.tables
               for a in ("bbox", "t_start", "t_end", "class_codes", "sensor_codes", "changed"))
    # Read by live position, tombstones skipped, as the archive reads them.
    assert ids_of(part) == archive.ids[part.start:part.start + len(part.rows)]
    got = part.rows.take(np.array([0, len(part.rows) - 1]))
    assert [r["bbox"] for r in got] == [archive.metadata["bbox"][part.start],
                                        archive.metadata["bbox"][part.start + len(part.rows) - 1]]


def test_an_index_whose_pieces_keep_no_rows_is_served_from_the_parquet_with_a_warning(
        tmp_path, caplog) -> None:
    import shutil

    root = str(tmp_path / "images")
    version = indexed_archive(root, "IVF16,Flat")
    q = queries(3, 6)
    ops = [Query("top_k", "images", version, k=6, q=q[0]),
           Query("top_k", "images", version, k=6, q=q[1], filter=parse_filter({"class_name": "rare"})),
           Query("top_k", "images", version, k=6, q=q[2], filter=parse_filter({"bbox": [-60, 0, 0, 1]}))]
    mapped = answer(_Held(load_part(root, version, 1, 2)), ops, 1000)
    for rows in tmp_path.glob("images/*/index/piece-*.rows"):
        shutil.rmtree(rows)
    with caplog.at_level("WARNING", logger="rsir.serve.archives"):
        part = load_part(root, version, 1, 2)
    assert "keep no rows" in caplog.text and "rsir index" in caplog.text
    assert isinstance(part.vectors, PieceVectors)
    for want, got in zip(mapped, answer(_Held(part), ops, 1000)):
        assert len(got["hits"]) == 6 and got["hits"] == want["hits"]
        np.testing.assert_array_equal(got["scores"], want["scores"])


def test_pq_without_refine_names_the_fix_and_still_searches(tmp_path) -> None:
    root = str(tmp_path / "images")
    version = indexed_archive(root, "IVF16,PQ8", refine=0)
    part = load_part(root, version, 0, 2)
    q = queries(2, 5)
    with pytest.raises(RawVectorsMissing, match="index.refine"):
        answer(_Held(part), [Query("stats", "images", version, qi=q[0], qt=q[1])], 1000)
    # Few filter candidates go through the index's ID selector: every hit passes.
    (res,) = answer(_Held(part), [Query("top_k", "images", version, k=5, q=q[0],
                                        filter=parse_filter({"class_name": "rare"}))], 1000)
    assert len(res["hits"]) == 5
    rare = {f"r{i}" for i in range(3400) if i % 100 == 7}
    assert {h["id"] for h in res["hits"]} <= rare
