"""Top-k inner-product search behind one interface: exact streaming, or a FAISS index.

``ExactSearcher`` streams the archive in chunks (e.g. Parquet shards larger than memory),
scores each chunk with one matrix product and keeps a running merged top-k, so memory is
bounded by the chunk and query-block sizes, never by the archive. ``FaissSearcher``
wraps faiss-cpu (``IndexFlatIP``: exact; ``IndexIVFFlat``: approximate). Both return
``(scores [Q, k] float32, indices [Q, k] int64)`` where an index is the row position in
archive order (chunks concatenated) and ``searcher.ids[index]`` is the row's id. Slots
beyond the archive size hold index -1 and score -inf. Tied scores come back in an
unspecified order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rsir.metrics.retrieval import as_numpy

log = logging.getLogger(__name__)

Chunk = tuple[Sequence[Any], Any]  # (ids, vectors [n, d])
Archive = Any  # an array [N, d], or a re-iterable of (ids, vectors) chunks

# Query-block x chunk score matrix kept under ~128 MB of float32.
_MAX_SCORE_ELEMENTS = 1 << 25


class Searcher(Protocol):
    """Anything that answers top-k inner-product queries against a fixed archive."""

    @property
    def ids(self) -> np.ndarray: ...

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class ParquetChunks:
    """Re-iterable ``(ids, vectors)`` chunks from Parquet files, read batch by batch.

    ``vector_column`` holds one list/fixed-size-list of floats per row.
    """

    def __init__(
        self, paths: Sequence[str | Path], id_column: str = "id",
        vector_column: str = "embedding", batch_rows: int = 65536,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.id_column = id_column
        self.vector_column = vector_column
        self.batch_rows = batch_rows

    def __iter__(self) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        for path in self.paths:
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(self.batch_rows, columns=[self.id_column, self.vector_column]):
                vec = batch.column(self.vector_column)
                flat = vec.flatten().to_numpy(zero_copy_only=False)
                yield batch.column(self.id_column).to_pylist(), flat.reshape(len(batch), -1)


def _chunks(archive: Archive, ids: Sequence[Any] | None, chunk_rows: int) -> Iterable[Chunk]:
    """Normalise an archive to a re-iterable of chunks."""
    if hasattr(archive, "shape"):  # one in-memory matrix: slice it
        mat = as_numpy(archive)
        row_ids = np.arange(len(mat)) if ids is None else np.asarray(ids)
        if len(row_ids) != len(mat):
            raise ValueError(f"{len(row_ids)} ids for {len(mat)} archive rows")
        return [(row_ids[s:s + chunk_rows], mat[s:s + chunk_rows]) for s in range(0, len(mat), chunk_rows)]
    if ids is not None:
        raise ValueError("ids come with the chunks when the archive is an iterable of (ids, vectors)")
    if iter(archive) is archive:
        raise TypeError("a one-shot iterator cannot be searched twice; pass a list or a ParquetChunks")
    return archive


def _tensor(x: Any) -> torch.Tensor:
    arr = np.ascontiguousarray(as_numpy(x), dtype=np.float32)
    if not arr.flags.writeable:  # e.g. zero-copy from Arrow; torch wants writable memory
        arr = arr.copy()
    return torch.from_numpy(arr)


def _queries(queries: Any) -> torch.Tensor:
    q = _tensor(queries)
    if q.ndim != 2:
        raise ValueError(f"queries must be [Q, d], got shape {tuple(q.shape)}")
    return q


class ExactSearcher:
    """Exact top-k by chunked matrix products with a running merged top-k."""

    def __init__(self, archive: Archive, ids: Sequence[Any] | None = None, chunk_rows: int = 65536) -> None:
        self.chunk_rows = chunk_rows
        self._chunks = _chunks(archive, ids, chunk_rows)
        self._ids: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """Row -> id; for a streamed archive, known after the first full pass."""
        if self._ids is None:
            self._ids = np.concatenate([np.asarray(c_ids) for c_ids, _ in self._chunks])
        return self._ids

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _queries(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n_q = q.shape[0]
        best_s = torch.full((n_q, k), -torch.inf)
        best_i = torch.full((n_q, k), -1, dtype=torch.int64)
        offset = 0
        seen_ids = []
        for c_ids, c_vec in self._chunks:
            vec = _tensor(c_vec)
            if vec.ndim != 2 or vec.shape[1] != q.shape[1]:
                raise ValueError(f"chunk vectors must be [n, {q.shape[1]}], got {tuple(vec.shape)}")
            seen_ids.append(np.asarray(c_ids))
            n_c = vec.shape[0]
            q_block = max(1, _MAX_SCORE_ELEMENTS // max(n_c, 1))
            for start in range(0, n_q, q_block):
                rows = slice(start, start + q_block)
                scores = q[rows] @ vec.T
                kk = min(k, n_c)
                c_s, c_i = torch.topk(scores, kk, dim=1)
                # Merge the chunk's top-k with the running top-k.
                all_s = torch.cat([best_s[rows], c_s], dim=1)
                all_i = torch.cat([best_i[rows], c_i + offset], dim=1)
                m_s, m_pos = torch.topk(all_s, k, dim=1)
                best_s[rows] = m_s
                best_i[rows] = torch.gather(all_i, 1, m_pos)
            offset += n_c
        if self._ids is None and seen_ids:
            self._ids = np.concatenate(seen_ids)
        best_i[torch.isneginf(best_s)] = -1
        return best_s.numpy(), best_i.numpy()


class FaissSearcher:
    """FAISS inner-product index: ``"flat"`` (exact) or ``"ivf"`` (approximate)."""

    def __init__(
        self, archive: Archive, ids: Sequence[Any] | None = None, index: str = "flat",
        nlist: int = 1024, nprobe: int = 16, train_rows: int = 100_000, chunk_rows: int = 65536,
    ) -> None:
        import faiss  # optional extra "ann"

        chunks = _chunks(archive, ids, chunk_rows)
        all_ids = []
        self.index: Any = None
        pending: list[np.ndarray] = []  # IVF: buffer rows until enough to train
        for c_ids, c_vec in chunks:
            vec = np.ascontiguousarray(as_numpy(c_vec), dtype=np.float32)
            all_ids.append(np.asarray(c_ids))
            if self.index is None:
                d = vec.shape[1]
                if index == "flat":
                    self.index = faiss.IndexFlatIP(d)
                elif index == "ivf":
                    self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                else:
                    raise ValueError(f"unknown faiss index {index!r}; valid: ['flat', 'ivf']")
            if not self.index.is_trained:
                pending.append(vec)
                if sum(len(p) for p in pending) >= train_rows:
                    self._train_and_flush(pending)
                continue
            self.index.add(vec)
        if self.index is None:
            raise ValueError("empty archive")
        if not self.index.is_trained:
            self._train_and_flush(pending)
        if index == "ivf":
            self.index.nprobe = nprobe
        self._ids = np.concatenate(all_ids)

    def _train_and_flush(self, pending: list[np.ndarray]) -> None:
        data = np.concatenate(pending)
        if len(data) < self.index.nlist:
            raise ValueError(f"IVF with nlist={self.index.nlist} needs at least that many rows, got {len(data)}")
        log.info("training IVF on %d rows", len(data))
        self.index.train(data)
        self.index.add(data)
        pending.clear()

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(as_numpy(queries), dtype=np.float32)
        scores, indices = self.index.search(q, k)
        scores[indices < 0] = -np.inf  # faiss pads missing results with -1 / -3.4e38
        return scores, indices.astype(np.int64, copy=False)


SEARCHERS = {
    "exact": lambda archive, **kw: ExactSearcher(archive, **kw),
    "faiss_flat": lambda archive, **kw: FaissSearcher(archive, index="flat", **kw),
    "faiss_ivf": lambda archive, **kw: FaissSearcher(archive, index="ivf", **kw),
    # An index chosen for a memory budget (Flat / IVF-Flat / [OPQ-]IVF-PQ), built into a
    # directory and searched memory-mapped: rsir.retrieval.index.
    "faiss_auto": lambda archive, **kw: _auto(archive, **kw),
}


def _auto(archive: Archive, **kw: Any) -> Searcher:
    from rsir.retrieval.index import AutoIndexSearcher

    return AutoIndexSearcher(archive, **kw)


def create_searcher(kind: str, archive: Archive, **kwargs: Any) -> Searcher:
    """Build a searcher by name: ``exact``, ``faiss_flat``, ``faiss_ivf`` or ``faiss_auto``."""
    if kind not in SEARCHERS:
        raise KeyError(f"unknown searcher {kind!r}; valid: {sorted(SEARCHERS)}")
    return SEARCHERS[kind](archive, **kwargs)
