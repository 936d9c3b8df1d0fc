"""Exact chunked top-k == brute force; FAISS flat == exact; Parquet streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rsir.retrieval.topk import ExactSearcher, ParquetChunks, create_searcher

RNG = np.random.default_rng(0)
ARCHIVE = RNG.standard_normal((1000, 16)).astype(np.float32)
QUERIES = RNG.standard_normal((9, 16)).astype(np.float32)
BRUTE = np.argsort(-(QUERIES @ ARCHIVE.T), axis=1)[:, :7]


def test_exact_equals_argsort_and_chunking_does_not_matter() -> None:
    scores, idx = ExactSearcher(ARCHIVE).search(QUERIES, 7)
    assert (idx == BRUTE).all()
    assert scores == pytest.approx(np.take_along_axis(QUERIES @ ARCHIVE.T, BRUTE, 1), abs=1e-5)
    for rows in (1, 7, 333):
        _, idx_c = ExactSearcher(ARCHIVE, chunk_rows=rows).search(QUERIES, 7)
        assert (idx_c == idx).all()


def test_hand_case_and_padding() -> None:
    archive = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    scores, idx = ExactSearcher(archive, ids=["a", "b", "c"], chunk_rows=2).search([[1.0, 1.0]], 5)
    assert idx[0].tolist() == [2, 0, 1, -1, -1]
    assert scores[0][:3] == pytest.approx([1.4, 1.0, 1.0]) and np.isneginf(scores[0][3:]).all()
    assert create_searcher("exact", archive, ids=["a", "b", "c"]).ids[[2, 0]].tolist() == ["c", "a"]


def test_faiss_flat_and_ivf_equal_exact() -> None:
    pytest.importorskip("faiss")
    s_exact, i_exact = create_searcher("exact", ARCHIVE).search(QUERIES, 7)
    s_flat, i_flat = create_searcher("faiss_flat", ARCHIVE).search(QUERIES, 7)
    assert (i_flat == i_exact).all()
    assert s_flat == pytest.approx(s_exact, abs=1e-5)
    # IVF probing every list is exhaustive, hence exact too.
    ivf = create_searcher("faiss_ivf", ARCHIVE, nlist=8, nprobe=8, train_rows=300, chunk_rows=250)
    assert (ivf.search(QUERIES, 7)[1] == i_exact).all()
    with pytest.raises(KeyError, match="valid"):
        create_searcher("annoy", ARCHIVE)


def test_parquet_stream(tmp_path: Path) -> None:
    for shard in range(3):  # three shards of 400, 400, 200 rows
        rows = slice(400 * shard, 400 * (shard + 1))
        table = pa.table({
            "id": [f"x{i}" for i in range(1000)][rows],
            "embedding": pa.array(list(ARCHIVE[rows]), type=pa.list_(pa.float32())),
        })
        pq.write_table(table, tmp_path / f"part-{shard}.parquet")
    chunks = ParquetChunks(sorted(tmp_path.glob("*.parquet")), batch_rows=150)
    searcher = ExactSearcher(chunks)
    _, idx = searcher.search(QUERIES, 7)
    assert (idx == BRUTE).all()
    assert searcher.ids[BRUTE[0, 0]] == f"x{BRUTE[0, 0]}"
    with pytest.raises(TypeError):
        ExactSearcher(iter(chunks))
