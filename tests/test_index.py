"""The budget-sized FAISS index: choice (hand-computed sizes), build in pieces, memory-mapped
reads, recall against brute force, bytes per vector against the files, and archive
versions extended by appends, tombstones and a compacting rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rsir.retrieval.archive import iter_vectors, live_ids, load_archive, publish_archive, read_manifest
from rsir.retrieval.index import (
    BuildOptions,
    IndexKey,
    IndexSearcher,
    SegmentIndex,
    build_index,
    build_version_index,
    choose_index,
    nlist_for,
    open_searcher,
    parse_memory,
    read_index,
    recall_at_k,
)
from rsir.retrieval.topk import create_searcher

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)  # k-means on a shared 2-core machine: threads only contend


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around random cluster centres (embeddings cluster; noise does not)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(queries: np.ndarray, archive: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ archive.T), axis=1, kind="stable")[:, :k]


def reader_of(x: np.ndarray, chunk: int = 700):
    def reader(start: int, stop: int):
        for s in range(start, stop, chunk):
            yield x[s:min(s + chunk, stop)]
    return reader


def test_parse_memory() -> None:
    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5 gb") == 1_500_000_000
    assert parse_memory(1234) == 1234
    for bad in ("4 parsecs", "", "-1GB", 0):
        with pytest.raises(ValueError, match="index.max_memory"):
            parse_memory(bad, "index.max_memory")


def test_choice_follows_the_budget_with_hand_computed_sizes() -> None:
    c = choose_index(50_000, 128, "4GB")
    assert (c.key, c.estimated_bytes) == ("Flat", 50_000 * 512)
    # 4·√500 000 = 2828 -> 2^11; IVF-Flat: codes + ids, and the centroids.
    assert nlist_for(500_000) == 2048
    c = choose_index(500_000, 128, "4GB")
    assert (c.key, c.estimated_bytes) == ("IVF2048,Flat", 500_000 * (512 + 8) + 2048 * 512)
    # Ten million: IVF65536; PQ64 = 72 bytes a vector + centroids + codebooks.
    c = choose_index(10_000_000, 128, "4GB")
    assert (c.key, c.estimated_bytes) == ("IVF65536,PQ64", 10_000_000 * 72 + 65536 * 512 + 256 * 512)
    # 500 MB: PQ64 (753 MB) and PQ48 (594 MB) do not fit, PQ32 (434 MB) does.
    assert choose_index(10_000_000, 128, "500MB").key == "IVF65536,PQ32"
    assert choose_index(10_000_000, 128, "500MB", opq=True).key == "OPQ32,IVF65536,PQ32"
    with pytest.raises(ValueError, match="max_memory: 1000000 bytes cannot hold"):
        choose_index(10_000_000, 128, "1MB")
    assert str(IndexKey.parse("OPQ16,IVF256,PQ16")) == "OPQ16,IVF256,PQ16"
    with pytest.raises(ValueError, match="expected Flat"):
        IndexKey.parse("HNSW32")


@pytest.mark.parametrize("key", ["IVF32,Flat", "IVF32,PQ8", "OPQ4,IVF32,PQ4"])
def test_built_index_recall_and_bytes_per_vector(tmp_path: Path, key: str) -> None:
    x = clustered(6000, 16, 40, seed=1)
    queries = clustered(50, 16, 40, seed=1)[:50] + 0.01
    opts = BuildOptions(key=key, pieces=3, eval_queries=60, train_points_per_list=50,
                        opq_iterations=2, target_recall=0.9)
    meta = build_index(tmp_path, len(x), 16, reader_of(x), opts)
    assert [p["rows"] for p in meta["pieces"]] == [2000, 2000, 2000]
    # The report's bytes are the files' bytes; each piece is its codes + ids + the
    # trained index's centroids (and codebooks) plus list headers.
    files = sorted(tmp_path.glob("*.faiss"))
    assert meta["bytes"] == sum(f.stat().st_size for f in files)
    assert meta["bytes_per_vector"] == pytest.approx(meta["bytes"] / 6000)
    trained = (tmp_path / "trained.faiss").stat().st_size
    per_code = IndexKey.parse(key).bytes_per_vector(16)  # 64 + 8 (IVF-Flat), 8 + 8 (PQ8)
    if "PQ" in key:  # the refinement vectors, apart from the index: 16 float32 a row
        assert meta["refine_bytes"] == sum(f.stat().st_size for f in tmp_path.glob("*.npy"))
        assert 6000 * 64 <= meta["refine_bytes"] <= 6000 * 64 + 3 * 256
    for f in files:
        if f.name.startswith("piece"):
            extra = f.stat().st_size - trained
            assert 2000 * per_code <= extra <= 2000 * per_code + 32 * 16 + 64
    # Pieces are read memory-mapped: the inverted lists are the on-disk kind.
    piece = read_index(tmp_path / "piece-000.faiss", key)
    ivf = faiss.extract_index_ivf(piece)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    truth = brute(queries, x, 10)
    searcher = IndexSearcher([SegmentIndex(tmp_path, 0)])
    report = meta["report"]
    assert report["target_reached"] and report["recall@10"] >= 0.9
    assert meta["nprobe"] == report["nprobe"] <= 32
    recall = recall_at_k(searcher.search(queries, 10)[1], truth)
    assert recall >= (0.85 if "PQ" in key else 0.9)
    if key == "IVF32,Flat":  # every list probed: exact, across the three pieces
        s, i = searcher.search(queries, 10, nprobe=32)
        assert (i == truth).all()
        assert s == pytest.approx(np.take_along_axis(queries @ x.T, truth, 1), abs=1e-5)


@pytest.mark.parametrize("key", ["IVF32,Flat", "OPQ4,IVF32,PQ4"])
def test_pieces_searched_on_shared_lists_equal_one_merged_index(tmp_path: Path, key: str) -> None:
    """The searcher finds a query's lists once (the pieces share the trained quantizer) and
    scans each piece's part of them: what one FAISS index of the pieces merged finds with
    the same nprobe, tombstones excluded by the same selector."""
    x = clustered(6000, 16, 40, seed=6)
    q = clustered(30, 16, 40, seed=7) + 0.01
    meta = build_index(tmp_path, len(x), 16, reader_of(x),
                       BuildOptions(key=key, pieces=3, refine=0, eval_queries=20, opq_iterations=2))
    deleted = np.arange(5, 6000, 97)
    searcher = IndexSearcher([SegmentIndex(tmp_path, 0)], deleted=deleted, nprobe=4)
    merged = read_index(tmp_path / meta["pieces"][0]["file"], key, mmap=False)
    for i, piece in enumerate(meta["pieces"][1:], 1):
        merged.merge_from(read_index(tmp_path / piece["file"], key, mmap=False), 2000 * i)
    params = faiss.SearchParametersIVF(nprobe=4, sel=faiss.IDSelectorNot(sel := faiss.IDSelectorBatch(deleted)))
    if key.startswith("OPQ"):
        params = faiss.SearchParametersPreTransform(index_params=params)
    want_s, want_i = merged.search(q, 10, params=params)
    del sel
    got_s, got_live = searcher.search(q, 10)
    assert (searcher.to_global(got_live) == want_i).all()
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5)
    # One quantizer in memory for the three pieces: the first piece's, which it alone owns.
    ivfs = [faiss.extract_index_ivf(index) for index, _, _ in searcher.pieces]
    assert len({int(ivf.quantizer.this) for ivf in ivfs}) == 1
    assert [bool(ivf.own_fields) for ivf in ivfs] == [True, False, False]


def test_held_out_rows_are_left_out_of_their_own_rankings() -> None:
    from rsir.retrieval.index import _leave_out

    rows = np.array([[3, 1, 2], [0, 5, 6], [7, 8, 9]])
    assert _leave_out(rows, np.array([1, 9, 7]), 2).tolist() == [[3, 2], [0, 5], [8, 9]]
    assert _leave_out(np.array([[4, -1]]), np.array([4]), 2).tolist() == [[-1, -1]]


def test_flat_below_the_size_and_registry(tmp_path: Path) -> None:
    x = clustered(500, 8, 5, seed=2)
    q = clustered(7, 8, 5, seed=3)
    searcher = create_searcher("faiss_auto", x, ids=[f"r{i}" for i in range(500)],
                               index_dir=tmp_path, pieces=2, eval_queries=20)
    assert searcher.meta["key"] == "Flat" and searcher.meta["report"]["recall@10"] == 1.0
    assert searcher.meta["bytes_per_vector"] == pytest.approx(32, abs=1)  # 8 float32 + headers
    _, i = searcher.search(q, 5)
    assert (i == brute(q, x, 5)).all()
    assert searcher.ids[i[0, 0]] == f"r{brute(q, x, 1)[0, 0]}"


def test_tombstones_and_allow_are_applied_inside_the_search(tmp_path: Path) -> None:
    x = clustered(3000, 16, 20, seed=4)
    q = clustered(20, 16, 20, seed=5)
    build_index(tmp_path, 3000, 16, reader_of(x), BuildOptions(key="IVF16,Flat", pieces=2, eval_queries=10))
    deleted = np.unique(brute(q, x, 3).ravel())  # every query's three best rows
    searcher = IndexSearcher([SegmentIndex(tmp_path, 0)], deleted=deleted, nprobe=16)
    live = np.setdiff1d(np.arange(3000), deleted)
    s, i = searcher.search(q, 10)
    assert (live[i] == live[brute(q, x[live], 10)]).all()  # live positions, k results each
    assert (searcher.to_global(i) == live[i]).all()
    allow = np.arange(0, len(live), 37)  # a filter holding 1/37 of the live rows
    _, i = searcher.search(q, 10, allow=allow)
    assert (i == allow[brute(q, x[live[allow]], 10)]).all()


def test_archive_append_delete_compact(tmp_path: Path) -> None:
    root = tmp_path / "visual"
    x = clustered(2400, 16, 20, seed=6)
    ids = [f"a{i}" for i in range(2400)]
    opts = BuildOptions(max_memory=2400 * 30, flat_rows=100, eval_queries=30, pieces=2)
    v1 = publish_archive(root, ids[:2000], x[:2000], {"model": "m"}, {"n": list(range(2000))}, current=False)
    meta = build_version_index(root, v1, opts)
    assert meta["key"].startswith("IVF") and "PQ" in meta["key"]  # 30 bytes a vector: PQ
    # An append: the new rows only, one piece from the base's trained index.
    v2 = publish_archive(root, ids[2000:], x[2000:], {"model": "m"}, {"n": list(range(2000, 2400))},
                         base=v1, current=False)
    delta = build_version_index(root, v2, opts)
    assert delta["trained"].endswith(f"{v1}/index/trained.faiss") and len(delta["pieces"]) == 1
    assert not (root / v2 / "index" / "trained.faiss").exists()
    assert sorted(p.name for p in (root / v1 / "index").iterdir()) == [
        "index.json", "piece-000.faiss", "piece-000.npy", "piece-000.rows", "piece-001.faiss", "piece-001.npy",
        "piece-001.rows", "trained.faiss"]
    # A delete: tombstones only.
    v3 = publish_archive(root, [], np.zeros((0, 16)), {"model": "m"}, base=v2, deleted=[5, 2100])
    assert build_version_index(root, v3, opts) is None
    m3 = read_manifest(root, v3)
    assert (m3["rows"], m3["deleted"], [s["version"] for s in m3["segments"]]) == (2398, 2, [v1, v2])
    arc = load_archive(root)
    keep = np.setdiff1d(np.arange(2400), [5, 2100])
    assert arc.version == v3 and arc.ids == [ids[i] for i in keep]
    assert np.array_equal(arc.vectors, x[keep]) and arc.metadata["n"] == keep.tolist()
    assert live_ids(root)[0] == arc.ids
    # A search shard's block of live rows spans segments and skips tombstones.
    from rsir.retrieval.archive import embedding_matrix, read_archive_rows, read_columns

    for start, end in ((0, 2398), (3, 7), (1990, 2100), (2300, 2398), (10, 10)):
        part = read_archive_rows(root, v3, start, end)
        assert part.column("id").to_pylist() == arc.ids[start:end]
        assert np.array_equal(embedding_matrix(part, 16), arc.vectors[start:end])
        assert part.column("n").to_pylist() == arc.metadata["n"][start:end]
    assert read_columns(root, v3, ["id"]).column(0).to_pylist() == arc.ids
    s = open_searcher(root, nprobe=64)
    q = x[[5, 6, 2100, 2300]]
    _, i = s.search(q, 10)
    assert 5 not in s.to_global(i) and 2100 not in s.to_global(i)
    assert recall_at_k(i, brute(q, arc.vectors, 10)) >= 0.8
    # iter_vectors reads any row range of a segment in chunks.
    got = np.concatenate(list(iter_vectors(root, v1, 150, 1750, batch_rows=400)))
    assert np.array_equal(got, x[150:1750])
    with pytest.raises(ValueError, match=r"deleted positions must lie in \[0, 2400\)"):
        publish_archive(root, [], np.zeros((0, 16)), {}, base=v3, deleted=[2400])
    (root / v1 / "index" / "index.json").rename(root / v1 / "index" / "gone.json")
    with pytest.raises(FileNotFoundError, match=f"segment {v1} .* has no index"):
        open_searcher(root)
    assert json.loads((root / v2 / "manifest.json").read_text())["base"] == v1


def test_searches_keep_answering_through_append_delete_and_compaction(tmp_path: Path) -> None:
    """A reader that swaps to each new CURRENT (as the endpoint's poller does) while the
    archive is appended to, deleted from and compacted: no failed search, every version
    seen, the delta's rows found, deleted ids gone, the rebuild one segment."""
    import threading

    from rsir.retrieval.archive import compact_archive, current_version, positions_of, set_current

    root = tmp_path / "visual"
    x = clustered(2600, 16, 20, seed=8)
    ids = [f"t{i}" for i in range(2600)]
    opts = BuildOptions(key="IVF16,Flat", pieces=2, eval_queries=10)
    v1 = publish_archive(root, ids[:2000], x[:2000], {"model": "m"}, current=False)
    build_version_index(root, v1, opts)
    set_current(root, v1)
    probe = x[[10, 2100, 2500]]  # an old row, two appended rows
    seen: dict[str, list[list[str]]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        held, searcher, live = None, None, None
        while not stop.is_set():
            try:
                version = current_version(root)
                if version != held:  # build the new searcher, then swap one reference
                    searcher, live, held = open_searcher(root, version, nprobe=16), live_ids(root, version)[0], version
                _, i = searcher.search(probe, 1)
                seen.setdefault(held, []).append([live[j] if j >= 0 else None for j in i[:, 0]])
            except BaseException as err:  # noqa: BLE001 - recorded and failed below
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        def wait_for(version: str) -> None:
            for _ in range(400):
                if version in seen:
                    return
                stop.wait(0.01)
            raise AssertionError(f"the reader never searched {version}")

        wait_for(v1)
        v2 = publish_archive(root, ids[2000:], x[2000:], {"model": "m"}, base=v1, current=False)
        build_version_index(root, v2, opts)
        set_current(root, v2)
        wait_for(v2)
        gone = positions_of(root, ["t10", "t2500"])
        assert gone.tolist() == [10, 2500]
        v3 = publish_archive(root, [], np.zeros((0, 16)), {"model": "m"}, base=v2, deleted=gone)
        wait_for(v3)
        v4 = compact_archive(root)
        build_version_index(root, v4, opts)
        set_current(root, v4)
        wait_for(v4)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen[v1][-1] == ["t10", seen[v1][-1][1], seen[v1][-1][2]] and "t2100" not in seen[v1][-1]
    assert seen[v2][-1] == ["t10", "t2100", "t2500"]  # the delta's rows, no rebuild
    for v in (v3, v4):
        assert all("t10" not in r and "t2500" not in r for r in seen[v])
        assert seen[v][-1][1] == "t2100"
    m4 = read_manifest(root, v4)
    assert (m4["segments"], m4["deleted"], m4["compacted_from"]) == ([{"version": v4, "rows": 2598}], 0, v3)
    assert load_archive(root).ids == [i for i in ids if i not in ("t10", "t2500")]
    assert np.array_equal(load_archive(root).vectors, np.delete(x, [10, 2500], axis=0))
