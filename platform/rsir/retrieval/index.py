"""A FAISS index sized for a memory budget, built in bounded memory and read memory-mapped.

The choice follows autofaiss's memory-mappable branch (``get_optimal_index_keys_v2`` with
``should_be_memory_mappable``): an exact ``Flat`` index below ``flat_rows`` rows, an
uncompressed ``IVF{nlist},Flat`` while it fits the budget and the archive is under
``ivf_flat_rows``, else product quantization ``IVF{nlist},PQ{m}`` (optionally rotated by
OPQ) with the most bytes per code that fit. HNSW is not offered: its graph cannot be
memory-mapped, and the index must be larger than RAM to be worth building.

An index of one archive segment is a directory::

    index/
      index.json        key, dim, nprobe, pieces (file, rows), report (recall@10, bytes)
      trained.faiss     the trained, empty index (centroids, PQ codebooks, OPQ rotation)
      piece-000.faiss   rows [0, n0) of the segment, ids local to the piece
      piece-000.npy     their raw vectors (PQ with refine > 0: the exact re-scoring)
      piece-000.rows/   their id and metadata columns (Arrow IPC) and filter table (.npy),
                        for a search shard to memory-map (archive versions only)
      piece-001.faiss   ...

A piece is filled from a stream of vector chunks (one ``add`` per chunk, so memory is the
piece's codes plus one chunk) by whichever worker builds it, and read back with
``IO_FLAG_MMAP``: the codes stay in the page cache, not in the process's heap. Deltas
(appended segments) reuse the base's ``trained.faiss`` and add one more piece;
:class:`IndexSearcher` finds a query's inverted lists once on the quantizer every piece
shares (all are filled from one trained index), scans each piece's part of those lists,
skips tombstoned rows with an ID selector inside the search (so k live results come back),
and merges the per-piece top-k.

A search shard of an indexed version opens a contiguous group of whole pieces
(:func:`shard_span`, an :class:`IndexSearcher` with ``span``) and reads its rows' raw
vectors (:class:`PieceVectors`), ids, metadata and filter table (:func:`open_span_rows`)
from them, memory-mapped, so its heap does not grow with the archive.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from rsir.retrieval.filters import MetadataTable

log = logging.getLogger(__name__)

INDEX_DIR = "index"
INDEX_META = "index.json"
TRAINED_FILE = "trained.faiss"
# Bytes of one inverted-list entry's id (faiss stores idx_t = int64 beside each code).
ID_BYTES = 8
PQ_CHOICES = (64, 48, 32, 24, 16, 8, 4)  # bytes per code, most accurate first
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_KEY = re.compile(r"^(?:(?P<opq>OPQ)(?P<opq_m>\d+),)?IVF(?P<nlist>\d+),(?:(?P<flat>Flat)|PQ(?P<m>\d+))$")


def parse_memory(value: str | int, where: str = "max_memory") -> int:
    """``"4GB"``, ``"512MiB"``, ``"1.5 GB"`` or a byte count -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{where}: must be positive, got {value}")
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"{where}: expected a size like '4GB' or '512MiB', got {value!r}")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise ValueError(f"{where}: must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class IndexKey:
    """A parsed index description: ``Flat``, ``IVF{nlist},Flat``, ``[OPQ{m},]IVF{nlist},PQ{m}``."""

    kind: str  # flat | ivf_flat | ivf_pq
    nlist: int = 0
    pq_m: int = 0
    opq: bool = False

    @classmethod
    def parse(cls, key: str) -> IndexKey:
        if key == "Flat":
            return cls("flat")
        m = _KEY.match(key)
        if not m or (m.group("opq") and m.group("opq_m") != m.group("m")):
            raise ValueError(f"index key {key!r}: expected Flat, IVF<n>,Flat, IVF<n>,PQ<m> or "
                             f"OPQ<m>,IVF<n>,PQ<m>")
        if m.group("flat"):
            return cls("ivf_flat", int(m.group("nlist")))
        return cls("ivf_pq", int(m.group("nlist")), int(m.group("m")), bool(m.group("opq")))

    def __str__(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf_flat":
            return f"IVF{self.nlist},Flat"
        return f"{'OPQ%d,' % self.pq_m if self.opq else ''}IVF{self.nlist},PQ{self.pq_m}"

    def bytes_per_vector(self, dim: int) -> int:
        """Bytes one stored vector costs (code plus id; Flat keeps no ids)."""
        if self.kind == "flat":
            return 4 * dim
        return (4 * dim if self.kind == "ivf_flat" else self.pq_m) + ID_BYTES

    def estimated_bytes(self, n: int, dim: int) -> int:
        """The index's size for ``n`` vectors: codes and ids, centroids, codebooks, rotation."""
        total = n * self.bytes_per_vector(dim)
        if self.kind != "flat":
            total += self.nlist * dim * 4
        if self.kind == "ivf_pq":
            total += 256 * dim * 4  # pq_m codebooks of 256 centroids of dim / pq_m floats
            total += dim * dim * 4 if self.opq else 0
        return total


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` vectors (autofaiss ``get_optimal_nb_clusters``' first choice:
    4·√n rounded to a power of two below a million, 16 384 below ten million, 65 536 above),
    never more than n / 39 (k-means wants 39 points per centroid)."""
    if n < 1_000_000:
        nlist = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    elif n < 10_000_000:
        nlist = 16_384
    else:
        nlist = 65_536
    return int(max(1, min(nlist, n // 39)))


@dataclass(frozen=True)
class IndexChoice:
    key: str
    estimated_bytes: int
    reason: str


def choose_index(
    n: int, dim: int, max_memory: str | int, *, flat_rows: int = 100_000,
    ivf_flat_rows: int = 1_000_000, nlist: int = 0, opq: bool = False,
) -> IndexChoice:
    """The index for ``n`` vectors of ``dim`` within ``max_memory`` bytes (see the module
    docstring); ``nlist`` 0 picks :func:`nlist_for`. Raises ``ValueError`` when not even the
    smallest PQ code fits."""
    budget = parse_memory(max_memory)
    flat = IndexKey("flat")
    if n <= flat_rows and flat.estimated_bytes(n, dim) <= budget:
        return IndexChoice("Flat", flat.estimated_bytes(n, dim), f"{n} rows <= flat_rows {flat_rows}")
    lists = nlist or nlist_for(n)
    ivf = IndexKey("ivf_flat", lists)
    if n < ivf_flat_rows and ivf.estimated_bytes(n, dim) <= budget:
        return IndexChoice(str(ivf), ivf.estimated_bytes(n, dim),
                           f"uncompressed IVF fits {budget} bytes and {n} rows < ivf_flat_rows")
    tried = []
    for m in PQ_CHOICES:
        if m >= dim or dim % m:
            continue
        key = IndexKey("ivf_pq", lists, m, opq)
        size = key.estimated_bytes(n, dim)
        tried.append(f"PQ{m}: {size}")
        if size <= budget:
            return IndexChoice(str(key), size, f"PQ{m} is the largest code within {budget} bytes")
    raise ValueError(f"max_memory: {budget} bytes cannot hold {n} vectors of dim {dim} "
                     f"(estimated bytes: {', '.join(tried) or 'no PQ code divides the dim'})")


def create_index(key: str, dim: int, opq_iterations: int = 10) -> Any:
    """An untrained inner-product index for ``key`` (see :class:`IndexKey`)."""
    import faiss  # optional extra "ann"

    k = IndexKey.parse(key)
    if k.kind == "flat":
        return faiss.IndexFlatIP(dim)
    quantizer = faiss.IndexFlatIP(dim)
    if k.kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, k.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if dim % k.pq_m:
            raise ValueError(f"index key {key!r}: PQ{k.pq_m} must divide the dim {dim}")
        index = faiss.IndexIVFPQ(quantizer, dim, k.nlist, k.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index frees its quantizer
    if k.opq:
        rotation = faiss.OPQMatrix(dim, k.pq_m)
        rotation.niter = opq_iterations
        index = faiss.IndexPreTransform(rotation, index)
    return index


def ivf_of(index: Any) -> Any | None:
    """The IVF layer of an index (through an OPQ pre-transform), or None for Flat."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def train_rows_for(key: str, n: int, points_per_list: int = 50) -> int:
    """Training sample size: ``points_per_list`` per inverted list, at least the 9 984
    points that 256-centroid PQ codebooks want, at most the archive."""
    k = IndexKey.parse(key)
    if k.kind == "flat":
        return 0
    return int(min(n, max(39 * k.nlist, points_per_list * k.nlist, 9_984 if k.kind == "ivf_pq" else 0)))


def train_index(key: str, dim: int, sample: np.ndarray, path: str | Path, opq_iterations: int = 10) -> Any:
    """Train ``key`` on ``sample`` [n, dim] and write the empty trained index to ``path``."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    index = create_index(key, dim, opq_iterations)
    k = IndexKey.parse(key)
    if k.kind != "flat":
        if len(sample) < k.nlist:
            raise ValueError(f"index {key}: {len(sample)} training rows < nlist {k.nlist}")
        log.info("training %s on %d rows", key, len(sample))
        index.train(sample)
    faiss.write_index(index, str(path))
    return index


def fill_piece(trained: str | Path, chunks: Iterable[np.ndarray], out: str | Path,
               rows: int | None = None) -> int:
    """Add each chunk [n, d] to a copy of the trained index and write it to ``out``;
    returns its row count. Ids are the rows' positions in the piece (0, 1, ...). With
    ``rows`` (the piece's row count), the raw vectors are also written, chunk by chunk, to
    ``<out>.npy`` (:func:`refine_path`): the exact scores of a PQ index's candidates."""
    import faiss

    index = faiss.read_index(str(trained))
    store = None
    if rows is not None:
        store_tmp = Path(f"{refine_path(out)}.tmp")
        store = np.lib.format.open_memmap(store_tmp, mode="w+", dtype=np.float32, shape=(rows, index.d))
    n = 0
    for vec in chunks:
        vec = np.ascontiguousarray(vec, dtype=np.float32)
        index.add(vec)
        if store is not None:
            store[n:n + len(vec)] = vec
        n += len(vec)
    if store is not None:
        if n != rows:
            raise ValueError(f"{out}: {n} rows read, {rows} expected")
        store.flush()
        del store
        store_tmp.replace(refine_path(out))
    tmp = Path(f"{out}.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(out)
    return int(index.ntotal)


def refine_path(piece: str | Path) -> Path:
    """The raw vectors of a piece (``piece-000.faiss`` -> ``piece-000.npy``)."""
    return Path(piece).with_suffix(".npy")


def read_index(path: str | Path, key: str, mmap: bool = True) -> Any:
    """A piece of index ``key`` read memory-mapped: IVF lists (``IO_FLAG_MMAP``) or flat
    codes (``IO_FLAG_MMAP_IFC``) stay in the file's pages; only centroids and codebooks
    are read into memory."""
    import faiss

    if not mmap:
        return faiss.read_index(str(path))
    flat = IndexKey.parse(key).kind == "flat"
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if flat else faiss.IO_FLAG_MMAP)


def piece_ranges(rows: int, pieces: int) -> list[tuple[int, int]]:
    """``pieces`` contiguous, near-equal ``[start, stop)`` row ranges covering ``rows``."""
    pieces = max(1, min(pieces, rows)) if rows else 1
    bounds = np.linspace(0, rows, pieces + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / |truth[:k]| (padding -1 ignored)."""
    hits, total = 0, 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        t = set(int(x) for x in t if x >= 0)
        hits += len(t & set(int(x) for x in f if x >= 0))
        total += len(t)
    return hits / total if total else 1.0


def index_bytes(index_dir: str | Path, pattern: str = "*.faiss") -> int:
    """Bytes on disk of an index directory's pieces and trained index (``*.npy``: of its
    refinement vectors)."""
    return sum(p.stat().st_size for p in Path(index_dir).glob(pattern))


# ---------------------------------------------------------------------------------------
# Building one segment's index
# ---------------------------------------------------------------------------------------


def sample_rows(chunks: Iterable[np.ndarray], n_rows: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uniform random sample of ``size`` rows (sorted positions, vectors) from a stream of
    chunks of ``n_rows`` rows in total, holding only the sample."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n_rows, size=min(size, n_rows), replace=False))
    out, offset = [], 0
    for vec in chunks:
        lo, hi = np.searchsorted(picked, [offset, offset + len(vec)])
        if hi > lo:
            out.append(np.asarray(vec, dtype=np.float32)[picked[lo:hi] - offset])
        offset += len(vec)
    if offset != n_rows:
        raise ValueError(f"the chunks hold {offset} rows, expected {n_rows}")
    dim = out[0].shape[1] if out else 0
    return picked, (np.concatenate(out) if out else np.zeros((0, dim), np.float32))


Reader = Callable[[int, int], Iterator[np.ndarray]]  # (start, stop) -> chunks of those rows
MapFn = Callable[[Callable[[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]], list[dict[str, Any]]]


def _local_map(fn: Callable[[dict[str, Any]], dict[str, Any]], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [fn(t) for t in tasks]


@dataclass(frozen=True)
class BuildOptions:
    """How to build (mirrors ``rsir.config.IndexConfig``)."""

    max_memory: str | int = "4GB"
    key: str | None = None  # a fixed key instead of the budget's choice
    pieces: int = 1
    flat_rows: int = 100_000
    ivf_flat_rows: int = 1_000_000
    nlist: int = 0
    opq: bool = False
    opq_iterations: int = 10
    train_points_per_list: int = 50
    eval_queries: int = 200
    target_recall: float = 0.95
    # PQ only: search refine × k candidates and re-score them exactly from the pieces' raw
    # vectors (memory-mapped .npy beside them); 0: PQ scores as they are.
    refine: int = 4
    k: int = 10
    seed: int = 0


def build_index(
    out_dir: str | Path, n_rows: int, dim: int, reader: Reader, opts: BuildOptions,
    map_fn: MapFn = _local_map, piece_task: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    trained: str | Path | None = None, nprobe: int | None = None,
) -> dict[str, Any]:
    """Build the index of one segment of ``n_rows`` rows into ``out_dir`` and return its
    ``index.json``. ``reader(start, stop)`` streams those rows' vectors in chunks.

    Without ``trained``: choose a key for the budget, train it on a sample, fill
    ``opts.pieces`` pieces (``map_fn(piece_task, tasks)``: a Ray Data map in the job, a
    loop here), tune ``nprobe`` on held-out rows against exact search. With ``trained``
    (a delta): fill one piece from that trained index and keep ``nprobe``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if trained is None:
        choice = (IndexChoice(opts.key, IndexKey.parse(opts.key).estimated_bytes(n_rows, dim), "index.key")
                  if opts.key else
                  choose_index(n_rows, dim, opts.max_memory, flat_rows=opts.flat_rows,
                               ivf_flat_rows=opts.ivf_flat_rows, nlist=opts.nlist, opq=opts.opq))
        n_train = train_rows_for(choice.key, n_rows, opts.train_points_per_list)
        _, sample = sample_rows(reader(0, n_rows), n_rows, n_train, opts.seed)
        train_index(choice.key, dim, sample, out / TRAINED_FILE, opts.opq_iterations)
        del sample
        trained_ref = TRAINED_FILE
        ranges = piece_ranges(n_rows, opts.pieces)
    else:
        choice = None
        trained_ref = str(trained)
        ranges = [(0, n_rows)]
    trained_path = out / trained_ref
    import faiss

    key = str(choice.key) if choice else _key_of(faiss.read_index(str(trained_path)))
    refine = opts.refine if IndexKey.parse(key).kind == "ivf_pq" else 0
    tasks = [{"trained": str(trained_path), "start": a, "stop": b, "refine": refine > 0,
              "out": str(out / f"piece-{i:03d}.faiss")} for i, (a, b) in enumerate(ranges)]
    done = map_fn(piece_task or _ReaderTask(reader), tasks)
    done = sorted(done, key=lambda t: t["start"])
    meta: dict[str, Any] = {
        "key": key, "dim": dim, "rows": n_rows, "trained": trained_ref, "refine": refine,
        "pieces": [{"file": Path(t["out"]).name, "rows": int(t["rows"])} for t in done],
        "nprobe": nprobe,
    }
    if choice is not None:
        meta["choice"] = {"estimated_bytes": choice.estimated_bytes, "reason": choice.reason,
                          "max_memory": parse_memory(opts.max_memory)}
    _write_meta(out, meta)
    if choice is not None:
        meta["report"] = evaluate_index(out, n_rows, reader, opts)
        meta["nprobe"] = meta["report"]["nprobe"]
    # The index proper (what a searcher maps and pages in: codes, ids, centroids), and
    # apart from it the refinement vectors, of which a query reads refine × k rows.
    meta["bytes"] = index_bytes(out)
    meta["bytes_per_vector"] = meta["bytes"] / max(n_rows, 1)
    meta["refine_bytes"] = index_bytes(out, "*.npy")
    _write_meta(out, meta)
    return meta


def _key_of(index: Any) -> str:
    import faiss

    ivf = ivf_of(index)
    if ivf is None:
        return "Flat"
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFPQ):
        opq = isinstance(index, faiss.IndexPreTransform)
        return str(IndexKey("ivf_pq", ivf.nlist, ivf.pq.M, opq))
    return str(IndexKey("ivf_flat", ivf.nlist))


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    tmp = out / f".{INDEX_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(out / INDEX_META)


def evaluate_index(out_dir: str | Path, n_rows: int, reader: Reader, opts: BuildOptions) -> dict[str, Any]:
    """Recall@k of the built index against exact search, for held-out archive rows as
    queries (rows drawn with another seed than the training sample), each left out of its
    own results, at each nprobe 2^0..nlist; picks the smallest nprobe reaching
    ``opts.target_recall``."""
    from rsir.retrieval.topk import ExactSearcher

    own, queries = sample_rows(reader(0, n_rows), n_rows, opts.eval_queries, opts.seed + 1)
    # A held-out row finds itself first, which no real query does (queries are no archive
    # rows): both rankings leave it out, so the recall is that of its neighbours.
    # Exact ground truth by one streamed pass (memory: one chunk and the running top-k).
    truth = _leave_out(ExactSearcher(_Rechunk(reader, n_rows)).search(queries, opts.k + 1)[1], own, opts.k)
    searcher = IndexSearcher([SegmentIndex(Path(out_dir), 0)])
    table = {}
    chosen = None
    nlist = max(1, IndexKey.parse(searcher.key).nlist)  # Flat: one exhaustive pass
    nprobe = 1
    while True:
        found = _leave_out(searcher.search(queries, opts.k + 1, nprobe=nprobe)[1], own, opts.k)
        table[nprobe] = recall_at_k(found, truth, opts.k)
        if chosen is None and table[nprobe] >= opts.target_recall:
            chosen = nprobe
            break
        if nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    best = chosen or max(table, key=lambda p: (table[p], -p))
    if chosen is None:
        log.warning("index %s: recall@%d %.3f at best (nprobe %d) < target %.2f",
                    searcher.key, opts.k, table[best], best, opts.target_recall)
    return {"queries": len(queries), "k": opts.k, "target_recall": opts.target_recall,
            "nprobe": best, f"recall@{opts.k}": table[best],
            "recall_by_nprobe": {str(p): r for p, r in table.items()},
            "target_reached": chosen is not None}


def _leave_out(rows: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each ranking ``rows[i]`` without ``own[i]``, its first k others in order (-1 pads)."""
    keep = rows != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in order
    out = np.take_along_axis(rows, order, 1)
    out[~np.take_along_axis(keep, order, 1)] = -1
    return out


class _ReaderTask:
    """Fills one piece from ``reader`` (in-process builds)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def __call__(self, t: dict[str, Any]) -> dict[str, Any]:
        rows = t["stop"] - t["start"] if t["refine"] else None
        return {**t, "rows": fill_piece(t["trained"], self.reader(t["start"], t["stop"]), t["out"], rows)}


class _Rechunk:
    """A re-iterable view of ``reader(0, n)`` (ExactSearcher may iterate twice)."""

    def __init__(self, reader: Reader, n: int) -> None:
        self.reader, self.n = reader, n

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        offset = 0
        for vec in self.reader(0, self.n):
            yield np.arange(offset, offset + len(vec)), vec
            offset += len(vec)


# ---------------------------------------------------------------------------------------
# Searching pieces, deltas and tombstones
# ---------------------------------------------------------------------------------------


def _rescore(q: np.ndarray, s: np.ndarray, i: np.ndarray, store: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of each query's candidates ``i`` (local rows of ``store``)."""
    flat = i.ravel()
    valid = flat >= 0
    uniq, inv = np.unique(flat[valid], return_inverse=True)
    vec = np.asarray(store[uniq])  # sorted rows: page-ordered reads of the mapped file
    exact = np.full(flat.shape, -np.inf, np.float32)
    rows = np.repeat(np.arange(len(q)), i.shape[1])[valid]
    exact[valid] = np.einsum("nd,nd->n", q[rows], vec[inv])
    exact = exact.reshape(i.shape)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(i, order, 1)


@dataclass
class SegmentIndex:
    """The index directory of one segment and the segment's first global row position."""

    index_dir: Path
    offset: int


def _span_pieces(seg: SegmentIndex, meta: dict[str, Any],
                 span: tuple[int, int] | None) -> Iterator[tuple[dict[str, Any], int]]:
    """The pieces of segment ``seg``'s index (``meta``: its index.json) that have rows and
    lie inside global ``span`` (all when None), with their global offsets; raises naming a
    piece that straddles the span."""
    offset = seg.offset
    for piece in meta["pieces"]:
        stop = offset + piece["rows"]
        if span is not None and offset < span[1] and stop > span[0] and \
                not span[0] <= offset <= stop <= span[1]:
            raise ValueError(f"{seg.index_dir}: {piece['file']} (rows [{offset}, {stop})) "
                             f"straddles the span {span}; take spans from shard_span")
        if piece["rows"] and (span is None or span[0] <= offset < span[1]):
            yield piece, offset
        offset = stop


class IndexSearcher:
    """Top-k inner product over the pieces of several segments' indexes (a base and its
    deltas), every piece memory-mapped.

    Results are *live* row positions: global positions (segment offset + row) with the
    tombstoned ones (``deleted``, sorted global positions) removed and the rest renumbered,
    which is the row order of :func:`rsir.retrieval.archive.load_archive`. Tombstoned
    rows are excluded inside the search by an ID selector, so each query still gets k live
    results when k exist. ``allow`` (live positions) restricts a search to those rows:
    exact over their raw vectors up to ``exact_max`` of them, else the ANN with a selector.

    ``span`` (global ``[start, stop)``, on piece boundaries: :func:`shard_span`) keeps only
    the pieces inside it, the rest not even opened; positions are then counted from the
    span's first row (a search shard's block, its rows local to the shard).
    """

    def __init__(self, segments: Sequence[SegmentIndex], deleted: np.ndarray | None = None,
                 ids: Sequence[Any] | None = None, nprobe: int | None = None, mmap: bool = True,
                 exact_max: int = 200_000, span: tuple[int, int] | None = None) -> None:
        # (faiss index, global offset of its row 0, raw vectors memory-mapped or None)
        self.pieces: list[tuple[Any, int, np.ndarray | None]] = []
        trained: set[Path] = set()
        self.key = None
        self.dim = 0
        self.nprobe = nprobe
        self.refine = 0
        for seg in segments:
            meta = json.loads((seg.index_dir / INDEX_META).read_text(encoding="utf-8"))
            self.key = self.key or meta["key"]
            if meta["key"] != self.key:
                raise ValueError(f"{seg.index_dir}: index {meta['key']} differs from the base's {self.key}")
            self.dim = meta["dim"]
            self.nprobe = self.nprobe or meta.get("nprobe")
            trained.add((seg.index_dir / meta["trained"]).resolve())
            self.refine = meta.get("refine", 0)
            for piece, offset in _span_pieces(seg, meta, span):
                path = seg.index_dir / piece["file"]
                store = np.load(refine_path(path), mmap_mode="r") if self.refine else None
                self.pieces.append((read_index(path, self.key, mmap), offset - (span or (0,))[0], store))
        if not segments:
            raise ValueError("no index segments to search")
        self.total = sum(p.ntotal for p, _, _ in self.pieces)
        self.deleted = np.unique(np.asarray(deleted if deleted is not None else [], dtype=np.int64))
        if span is not None:  # the span's tombstones, counted from its first row
            self.deleted = self.deleted[(self.deleted >= span[0]) & (self.deleted < span[1])] - span[0]
        self._ids = None if ids is None else np.asarray(ids)
        self._kind = IndexKey.parse(self.key).kind
        self.nlist = IndexKey.parse(self.key).nlist
        self.exact_max = exact_max
        # Every piece of a version is filled from one trained index (a delta's from its
        # base's), so they share its coarse quantizer: a query's lists are found once, not
        # once a piece, and each piece scans its own part of them.
        self._ivf = [ivf_of(index) for index, _, _ in self.pieces] if self._kind != "flat" else []
        self._shared_coarse = bool(self._ivf) and len(trained) == 1
        if self._shared_coarse:
            self._share_quantizer()

    def _share_quantizer(self) -> None:
        """Point every piece at the first piece's quantizer and free the copy each piece
        read from its file (nlist x d floats in the heap: 8 MB a piece at 16,384 lists of
        dim 128), so a shard's heap does not grow with its pieces. The first piece owns
        the one left; the others no longer own theirs."""
        shared = self._ivf[0].quantizer
        for ivf in self._ivf[1:]:
            if not ivf.own_fields:
                continue
            copy = ivf.quantizer
            ivf.quantizer = shared
            ivf.own_fields = False
            # SWIG's own destructor: the proxy ``copy`` never owned the object, the piece did.
            type(copy).__swig_destroy__(copy)

    def __len__(self) -> int:
        return self.total - len(self.deleted)

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            raise AttributeError("this IndexSearcher was built without ids")
        return self._ids

    def to_global(self, live: np.ndarray) -> np.ndarray:
        """Live positions -> global positions (inverse of the renumbering)."""
        from rsir.retrieval.archive import live_to_global

        return live_to_global(self.deleted, live)

    def _params(self, selector: Any, nprobe: int | None) -> Any:
        import faiss

        if self._kind == "flat":
            return faiss.SearchParameters(sel=selector) if selector is not None else None
        ivf = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe or 1))
        if selector is not None:
            ivf.sel = selector
        if self.key.startswith("OPQ"):
            return faiss.SearchParametersPreTransform(index_params=ivf)
        return ivf

    def _coarse(self, q: np.ndarray, nprobe: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The queries as the IVF layer sees them (OPQ's rotation applied), their ``nprobe``
        nearest lists and those lists' similarities, from the shared quantizer."""
        import faiss

        index = self.pieces[0][0]
        x = q
        if isinstance(index, faiss.IndexPreTransform):
            for t in range(index.chain.size()):
                x = index.chain.at(t).apply(x)
        nprobe = int(min(self.nlist, nprobe or self.nprobe or 1))
        sims, lists = self._ivf[0].quantizer.search(np.ascontiguousarray(x, np.float32), nprobe)
        return x, lists, sims

    def search(self, queries: Any, k: int, nprobe: int | None = None,
               allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], live positions [Q, k])``; missing slots: -inf and -1."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got shape {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        allowed = None if allow is None else np.unique(self.to_global(allow))
        # A filter's rows: scored exactly from the raw vectors when there are few of them
        # (and the pieces keep raw vectors), else by the ANN with an ID selector probing
        # as many more lists as the filter is selective (the selected rows of a list are
        # that fraction of it).
        exact = allowed is not None and self.refine and len(allowed) <= self.exact_max
        if allowed is not None and not exact and self._kind != "flat":
            fraction = max(len(allowed), 1) / max(len(self), 1)
            nprobe = int(min(self.nlist, math.ceil((nprobe or self.nprobe or 1) / fraction)))
        coarse = self._coarse(q, nprobe) if self._shared_coarse and not exact else None
        all_s, all_i = [], []
        for p, (index, offset, store) in enumerate(self.pieces):
            n = index.ntotal
            # Selectors speak the piece's local ids.
            if allowed is not None:
                lo, hi = np.searchsorted(allowed, [offset, offset + n])
                if hi == lo:
                    continue
                if exact:
                    local = allowed[lo:hi] - offset
                    scores = q @ np.asarray(store[local]).T
                    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                    all_s.append(np.take_along_axis(scores, top, 1).astype(np.float32))
                    all_i.append(local[top] + offset)
                    continue
                sel = inner = faiss.IDSelectorBatch(allowed[lo:hi] - offset)
            else:
                lo, hi = np.searchsorted(self.deleted, [offset, offset + n])
                # Python must hold the inner selector: IDSelectorNot does not own it.
                inner = faiss.IDSelectorBatch(self.deleted[lo:hi] - offset) if hi > lo else None
                sel = faiss.IDSelectorNot(inner) if inner is not None else None
            kk = k * self.refine if store is not None else k
            if coarse is not None:
                x, lists, sims = coarse
                params = faiss.SearchParametersIVF(nprobe=lists.shape[1])
                if sel is not None:
                    params.sel = sel
                s, i = _search_preassigned(self._ivf[p], x, kk, lists, sims, params)
            else:
                params = self._params(sel, nprobe)
                s, i = index.search(q, kk, params=params) if params is not None else index.search(q, kk)
            if store is not None:
                s, i = _rescore(q, s, i, store, k)
            all_s.append(np.where(i >= 0, s, -np.inf).astype(np.float32))
            all_i.append(np.where(i >= 0, i + offset, -1))
            del sel, inner
        if not all_s:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores, rows = np.concatenate(all_s, axis=1), np.concatenate(all_i, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        live = np.where(rows >= 0, rows - np.searchsorted(self.deleted, rows), -1)
        if scores.shape[1] < k:  # fewer rows than k in all pieces together
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            live = np.pad(live, ((0, 0), (0, pad)), constant_values=-1)
        return scores, live.astype(np.int64)


def _search_preassigned(ivf: Any, x: np.ndarray, k: int, lists: np.ndarray, sims: np.ndarray,
                        params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``IndexIVF::search_preassigned`` with search parameters (an ID selector), which
    faiss's Python wrapper of it refuses; ``params.nprobe`` must be ``lists``' width."""
    import faiss

    n = len(x)
    x = np.ascontiguousarray(x, np.float32)
    lists, sims = np.ascontiguousarray(lists, np.int64), np.ascontiguousarray(sims, np.float32)
    scores, rows = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    ivf.search_preassigned_c(n, faiss.swig_ptr(x), k, faiss.swig_ptr(lists), faiss.swig_ptr(sims),
                             faiss.swig_ptr(scores), faiss.swig_ptr(rows), False, params)
    return scores, rows


class RawVectorsMissing(ValueError):
    """An op needs raw vectors that the index does not keep (PQ built with refine 0)."""


class PieceVectors:
    """The raw vectors of an :class:`IndexSearcher`'s live rows, read from its pieces where
    they already lie memory-mapped: a PQ piece's refinement ``.npy``, a Flat piece's codes,
    an IVF-Flat piece's inverted lists (through a direct map: 8 bytes of heap a row). Rows
    are gathered a request's worth at a time (``vectors[rows]``, ``vectors @ x`` chunk by
    chunk); nothing holds the whole matrix. A PQ index built with ``refine`` 0 keeps no raw
    vectors: :attr:`missing` says so and reading raises it (:class:`RawVectorsMissing`)."""

    def __init__(self, searcher: IndexSearcher, chunk_rows: int = 8192) -> None:
        self.searcher, self.chunk_rows = searcher, chunk_rows
        self.shape = (len(searcher), searcher.dim)
        self.dtype = np.dtype(np.float32)
        self.offsets = np.asarray([offset for _, offset, _ in searcher.pieces], np.int64)
        self.stores = [_raw_store(index, store, searcher._kind) for index, _, store in searcher.pieces]
        self.missing = None
        if searcher._kind == "ivf_pq" and not searcher.refine:
            self.missing = (f"index {searcher.key} was built with index.refine 0 and keeps no raw "
                            f"vectors (composed, stats, rerank and exact filtered search need "
                            f"them); rebuild it with index.refine > 0 (`rsir index`)")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        """Vectors [len(rows), D] of live positions ``rows`` (an int array or a slice)."""
        if self.missing:
            raise RawVectorsMissing(self.missing)
        rows = np.arange(*rows.indices(len(self))) if isinstance(rows, slice) else np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.shape[1]), np.float32)
        rows_global = self.searcher.to_global(rows)
        piece = np.searchsorted(self.offsets, rows_global, side="right") - 1
        for p in np.unique(piece):
            at = np.flatnonzero(piece == p)
            out[at] = self.stores[p](rows_global[at] - self.offsets[p])
        return out

    def __matmul__(self, other: np.ndarray) -> np.ndarray:
        """``vectors @ other`` ([n] or [n, c]), reading ``chunk_rows`` rows at a time."""
        other = np.asarray(other, np.float32)
        out = np.empty((len(self), *other.shape[1:]), np.float32)
        for start in range(0, len(self), self.chunk_rows):
            stop = min(start + self.chunk_rows, len(self))
            out[start:stop] = self[start:stop] @ other
        return out


def _raw_store(index: Any, store: np.ndarray | None, kind: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """A piece's raw vectors by local row, ``rows -> [len(rows), D]`` (None: PQ codes only)."""
    import faiss

    if store is not None:
        return lambda rows: np.asarray(store[rows])
    if kind == "flat":  # the codes are the vectors, in the mapped file
        codes = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        return lambda rows: codes[rows]
    if kind == "ivf_flat":
        ivf = faiss.downcast_index(ivf_of(index))
        ivf.make_direct_map()
        return lambda rows: ivf.reconstruct_batch(np.asarray(rows, np.int64))
    return None


class IndexCandidates:
    """A :class:`rsir.retrieval.filters.CandidateSearcher` over an :class:`IndexSearcher`:
    ``rows`` (live positions) become its ``allow``."""

    def __init__(self, searcher: IndexSearcher) -> None:
        self.searcher = searcher

    def search(self, queries: np.ndarray, k: int,
               rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return self.searcher.search(queries, k, allow=rows)


# ---------------------------------------------------------------------------------------
# Indexes of archive versions (rsir.retrieval.archive layout)
# ---------------------------------------------------------------------------------------


def version_index_dir(root: str | Path, version: str) -> Path:
    return Path(root) / version / INDEX_DIR


def has_index(root: str | Path, version: str) -> bool:
    """Whether every segment of ``version`` with rows has an index."""
    from rsir.retrieval.archive import read_manifest, segment_offsets

    return all(rows == 0 or (version_index_dir(root, seg) / INDEX_META).is_file()
               for seg, _, rows in segment_offsets(read_manifest(root, version)))


def build_version_index(root: str | Path, version: str, opts: BuildOptions,
                        map_fn: MapFn = _local_map, batch_rows: int = 65536) -> dict[str, Any] | None:
    """Index ``version``'s own rows. Its first segment (a full build): choose, train, fill
    ``opts.pieces`` pieces and evaluate. A later segment (an append): one piece from the
    first segment's trained index, nothing re-trained or re-added. None when the version
    has no rows of its own (a delete)."""
    from rsir.retrieval.archive import read_manifest, segment_offsets

    root = Path(root)
    manifest = read_manifest(root, version)
    segments = segment_offsets(manifest)
    own = [s for s in segments if s[0] == version]
    if not own or own[0][2] == 0:
        return None
    n_rows = own[0][2]
    out = version_index_dir(root, version)
    task = _PieceTask(str(root), version, batch_rows)
    reader = task.reader
    if segments[0][0] == version:
        return build_index(out, n_rows, manifest["dim"], reader, opts, map_fn, task)
    base_dir = version_index_dir(root, segments[0][0])
    base_meta = json.loads((base_dir / INDEX_META).read_text(encoding="utf-8"))
    trained = Path(os.path.relpath(base_dir / base_meta["trained"], out))
    return build_index(out, n_rows, manifest["dim"], reader, opts, map_fn, task,
                       trained=trained, nprobe=base_meta.get("nprobe"))


class _PieceTask:
    """Fills one piece of a version's own rows (picklable: a Ray Data map runs it)."""

    def __init__(self, root: str, version: str, batch_rows: int) -> None:
        self.root, self.version, self.batch_rows = root, version, batch_rows

    def reader(self, start: int, stop: int) -> Iterator[np.ndarray]:
        from rsir.retrieval.archive import iter_vectors

        return iter_vectors(self.root, self.version, start, stop, self.batch_rows)

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        from rsir.retrieval.archive import EMBEDDINGS_FILE, iter_batches

        done = _ReaderTask(self.reader)(task)
        schema = pq.read_schema(Path(self.root) / self.version / EMBEDDINGS_FILE)
        columns = [c for c in schema.names if c != "embedding"]
        write_piece_rows(iter_batches(self.root, self.version, task["start"], task["stop"], columns,
                                      self.batch_rows), done["rows"], piece_rows_path(task["out"]))
        return done


ROWS_FILE = "rows.arrow"


def piece_rows_path(piece: str | Path) -> Path:
    """Where a piece keeps its rows (``piece-000.faiss`` -> ``piece-000.rows/``)."""
    return Path(piece).with_suffix(".rows")


def write_piece_rows(batches: Iterable[pa.RecordBatch], n: int, out: str | Path) -> None:
    """A piece's ``n`` rows (``id`` and metadata columns, in batches) into directory ``out``
    for a search shard to memory-map instead of holding them: an uncompressed Arrow IPC
    file (read back zero-copy) and their filter table
    (rsir.retrieval.filters.save_metadata, written last). Memory: one batch."""
    import pyarrow as pa

    from rsir.retrieval.filters import MetadataTable, save_metadata

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def tables() -> Iterator[MetadataTable]:
        writer = None
        for batch in batches:
            writer = writer or pa.ipc.new_file(out / ROWS_FILE, batch.schema)
            writer.write_batch(batch)
            yield MetadataTable({name: batch.column(name) for name in batch.schema.names}, len(batch))
        if writer is not None:
            writer.close()

    save_metadata(tables(), n, out)


def piece_bounds(root: str | Path, version: str) -> list[int]:
    """The global row positions where ``version``'s index pieces start, and its end: every
    segment's pieces in order (a base's, then each delta's)."""
    from rsir.retrieval.archive import read_manifest, segment_offsets

    bounds = [0]
    for seg, offset, rows in segment_offsets(read_manifest(root, version)):
        if rows:
            meta = json.loads((version_index_dir(root, seg) / INDEX_META).read_text(encoding="utf-8"))
            bounds += list(offset + np.cumsum([p["rows"] for p in meta["pieces"]]))
    return [int(b) for b in bounds]


def shard_span(bounds: Sequence[int], shard: int, shards: int) -> tuple[int, int]:
    """Global ``[start, stop)`` of shard ``shard`` of ``shards`` of an indexed version:
    :func:`rsir.retrieval.shards.shard_range` of its rows (tombstones included), each end
    moved to the nearest piece boundary (``bounds``: :func:`piece_bounds`), so a shard
    opens whole pieces. The spans are contiguous and cover the version; with more shards
    than pieces some are empty."""
    from rsir.retrieval.shards import shard_range

    b = np.asarray(bounds, np.int64)
    start, stop = shard_range(int(b[-1]), shard, shards)
    return int(b[np.abs(b - start).argmin()]), int(b[np.abs(b - stop).argmin()])


def open_searcher(root: str | Path, version: str | None = None, nprobe: int | None = None,
                  ids: Sequence[Any] | None = None, mmap: bool = True,
                  span: tuple[int, int] | None = None) -> IndexSearcher:
    """An :class:`IndexSearcher` over every segment of ``version`` (default: current) with
    its tombstones (``span``: over those pieces only); raises ``FileNotFoundError`` naming
    a segment without an index."""
    from rsir.retrieval.archive import current_version, read_deleted

    version = version or current_version(root)
    return IndexSearcher(version_segments(root, version), read_deleted(root, version), ids=ids,
                         nprobe=nprobe, mmap=mmap, span=span)


def version_segments(root: str | Path, version: str) -> list[SegmentIndex]:
    """The index of each segment of ``version`` with rows; raises ``FileNotFoundError``
    naming a segment without one."""
    from rsir.retrieval.archive import read_manifest, segment_offsets

    segments = []
    for seg, offset, rows in segment_offsets(read_manifest(root, version)):
        if rows == 0:
            continue
        d = version_index_dir(root, seg)
        if not (d / INDEX_META).is_file():
            raise FileNotFoundError(f"{root}: segment {seg} of version {version} has no index "
                                    f"(missing {d / INDEX_META}); run `rsir index` on it")
        segments.append(SegmentIndex(d, offset))
    return segments


def open_span_rows(root: str | Path, version: str,
                   span: tuple[int, int]) -> tuple[pa.Table, list[MetadataTable]] | None:
    """The rows of the pieces inside ``span`` (:func:`shard_span`), tombstones included,
    as their pieces keep them (:func:`write_piece_rows`), memory-mapped: the ``id`` and
    metadata columns as one Arrow table and each piece's filter table. None when a piece
    keeps no rows (an index built before pieces did)."""
    import pyarrow as pa

    from rsir.retrieval.filters import MetadataTable, has_saved_metadata

    tables, filters = [], []
    for seg in version_segments(root, version):
        meta = json.loads((seg.index_dir / INDEX_META).read_text(encoding="utf-8"))
        for piece, _ in _span_pieces(seg, meta, span):
            path = piece_rows_path(seg.index_dir / piece["file"])
            if not has_saved_metadata(path):
                return None
            # An uncompressed IPC file read from a memory map: the columns are its pages.
            tables.append(pa.ipc.open_file(pa.memory_map(str(path / ROWS_FILE))).read_all())
            filters.append(MetadataTable.load(path))
    if not tables:
        return pa.table({"id": pa.array([], pa.string())}), []
    return pa.concat_tables(tables, promote_options="default"), filters


class AutoIndexSearcher(IndexSearcher):
    """The ``faiss_auto`` searcher of :data:`rsir.retrieval.topk.SEARCHERS`: an archive
    (matrix or re-iterable ``(ids, vectors)`` chunks) indexed for ``max_memory`` into
    ``index_dir`` (a temporary directory when None), streamed twice (sample, fill)."""

    def __init__(self, archive: Any, ids: Sequence[Any] | None = None, index_dir: str | Path | None = None,
                 chunk_rows: int = 65536, **options: Any) -> None:
        import tempfile

        from rsir.retrieval.topk import _chunks

        chunks = _chunks(archive, ids, chunk_rows)
        all_ids = np.concatenate([np.asarray(c_ids) for c_ids, _ in chunks])
        dim = next(iter(chunks))[1].shape[1]
        self._tmp = None if index_dir else tempfile.TemporaryDirectory(prefix="rsir-index-")
        out = Path(index_dir or self._tmp.name)
        nprobe = options.pop("nprobe", None)
        opts = BuildOptions(**options)

        def reader(start: int, stop: int) -> Iterator[np.ndarray]:
            offset = 0
            for _, vec in chunks:
                lo, hi = max(start - offset, 0), min(stop - offset, len(vec))
                if hi > lo:
                    yield np.asarray(vec)[lo:hi]
                offset += len(vec)

        self.meta = build_index(out, len(all_ids), dim, reader, opts)
        super().__init__([SegmentIndex(out, 0)], ids=all_ids, nprobe=nprobe)
