"""The archive versions replicas hold, and the poller that picks up a new ``CURRENT``.

A search shard holds, per target, its block of rows of the last two versions it loaded
(:class:`ShardParts`): its vectors, its rows' ids and metadata (Arrow columns, no Python
object per row) and the numpy table its filters run on. An unindexed version's are read
from its Parquet into the heap; an indexed version's are its index pieces' files,
memory-mapped, so the heap does not grow with the archive. The
ingress holds no vectors: per target the version it serves, its manifest (rows, dim,
model) and, for the captions archive, each image's captions (text only), which image
results show (:class:`VersionIndex`).
"""

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Part:
    """Shard ``shard``'s live rows ``[start, start + len(rows))`` of one archive version.

    Unindexed: ``vectors`` is the rows' float32 matrix in the heap and search is exact.
    Indexed: ``ann`` is the index over the shard's own pieces, memory-mapped, and
    ``vectors`` the rows' raw vectors read from those pieces
    (rsir.retrieval.index.PieceVectors), nothing copied beyond a request's rows."""

    version: str
    start: int
    rows: Any  # rsir.retrieval.archive.RowBlock: ids and metadata by live position
    vectors: Any  # [n, D] float32: np.ndarray, or PieceVectors when indexed
    table: Any  # rsir.retrieval.filters.MetadataTable or StackedMetadata
    dim: int
    ann: Any = None  # rsir.retrieval.filters.CandidateSearcher

    def exact_max(self, configured: int) -> int:
        """Candidates up to which a filtered query is scored exactly: ``configured``, or
        none where the index keeps no raw vectors (its ID selector then)."""
        return -1 if getattr(self.vectors, "missing", None) else configured


def load_part(root: str, version: str, shard: int, shards: int) -> Part:
    """Shard ``shard`` of ``shards``'s block of ``version``. An indexed version's block is
    whole index pieces (rsir.retrieval.index.shard_span), an unindexed one's
    ``shard_range`` of its live rows; either way the shards' blocks are contiguous and
    partition the live rows, which is all the ingress's merge assumes."""
    from rsir.retrieval.archive import RowBlock, embedding_matrix, read_archive_rows, read_deleted, read_manifest
    from rsir.retrieval.filters import StackedMetadata
    from rsir.retrieval.index import (
        IndexCandidates,
        PieceVectors,
        has_index,
        open_searcher,
        open_span_rows,
        piece_bounds,
        shard_span,
    )
    from rsir.retrieval.shards import shard_range

    manifest = read_manifest(root, version)
    dim = int(manifest["dim"])
    if not has_index(root, version):
        start, end = shard_range(int(manifest["rows"]), shard, shards)
        table = read_archive_rows(root, version, start, end)
        part = part_of_rows(version, start, table, dim, embedding_matrix(table, dim))
        del table  # the Arrow copy of the vectors, before the freed pages go back
    else:
        bounds = piece_bounds(root, version)
        span = shard_span(bounds, shard, shards)
        if span[0] == span[1] and bounds[-1] > 0:  # the others answer for its rows: say why it is idle
            log.warning("shard %d of %d: %s version %s has %d index pieces, fewer than the shards, and "
                        "this shard holds none; rebuild the index with index.pieces >= %d", shard, shards,
                        root, version, len(bounds) - 1, shards)
        deleted = read_deleted(root, version)
        # The span's live rows: its global ends less the tombstones before each.
        start, end = (int(g - np.searchsorted(deleted, g)) for g in span)
        searcher = open_searcher(root, version, span=span)
        mapped = open_span_rows(root, version, span)
        if mapped is not None:
            # The pieces' rows include their tombstones: the searcher's, local to the span.
            part = Part(version, start, RowBlock(mapped[0], searcher.deleted), PieceVectors(searcher),
                        StackedMetadata(mapped[1], searcher.deleted), dim, IndexCandidates(searcher))
        else:
            log.warning("%s version %s: its index pieces keep no rows (built before they did), so "
                        "shard %d holds its ids and metadata in its heap; run `rsir index` on it again",
                        root, version, shard)
            part = part_of_rows(version, start, read_archive_rows(root, version, start, end, vectors=False),
                                dim, PieceVectors(searcher), IndexCandidates(searcher))
    _return_freed_pages()
    return part


def _return_freed_pages() -> None:
    """Hand the pages of a load's freed temporaries (decoded row groups, the filter table's
    intermediates) back to the OS: a replica holds its part for hours, and neither Arrow's
    pool nor glibc's malloc returns them unasked."""
    import ctypes

    pa.default_memory_pool().release_unused()
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's libc: glibc only
    if malloc_trim is not None:
        malloc_trim(0)


def part_of_rows(version: str, start: int, table: pa.Table, dim: int, vectors: Any, ann: Any = None) -> Part:
    """The :class:`Part` of an archive table's rows (rsir.retrieval.archive.read_archive_rows)
    whose vectors are ``vectors``."""
    from rsir.retrieval.archive import RowBlock
    from rsir.retrieval.filters import MetadataTable

    rows = table.drop_columns(["embedding"]) if "embedding" in table.column_names else table
    columns = {name: rows.column(name) for name in rows.column_names if name != "id"}
    return Part(version, start, RowBlock(rows), vectors, MetadataTable(columns, len(table)), dim, ann)


class ShardParts:
    """The parts a shard replica holds: the newest two versions of each target (a request
    still naming the previous version during a swap is answered from it), loaded by
    :meth:`poll_once` as they are published, or on demand (:meth:`get`) when a request
    names one this replica has not seen (a replica restarted mid-swap)."""

    def __init__(self, roots: dict[str, str], shard: int, shards: int, keep: int = 2) -> None:
        self.roots, self.shard, self.shards, self.keep = roots, shard, shards, keep
        self.parts: dict[str, dict[str, Part]] = {t: {} for t in roots}
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    def get(self, target: str, version: str) -> Part:
        part = self.parts[target].get(version)
        if part is not None:
            return part
        with self._lock:  # one load per version, whoever asks first
            part = self.parts[target].get(version)
            if part is None:
                part = load_part(self.roots[target], version, self.shard, self.shards)
                held = {**self.parts[target], version: part}
                # Drop the first loaded beyond ``keep``.
                self.parts = {**self.parts, target: dict(list(held.items())[-self.keep:])}
                log.info("shard %d: %s version %s (%d rows from %d)", self.shard, target,
                         version, len(part.rows), part.start)
        return part

    def held(self) -> dict[str, list[str]]:
        return {t: sorted(p) for t, p in self.parts.items()}

    def poll_once(self) -> None:
        from rsir.retrieval.archive import current_version

        for target, root in self.roots.items():
            try:
                self.get(target, current_version(root))
            except Exception as err:  # noqa: BLE001 - keep serving the versions we have
                if (target, str(err)) not in self._warned:
                    self._warned.add((target, str(err)))
                    log.warning("shard %d: archive %s at %s not loaded: %s", self.shard,
                                target, root, err)


@dataclasses.dataclass
class Version:
    """What the ingress knows of an archive version."""

    version: str
    manifest: dict[str, Any]
    owner_texts: dict[str, list[str]]

    @property
    def rows(self) -> int:
        return int(self.manifest.get("rows", 0))

    @property
    def dim(self) -> int:
        return int(self.manifest.get("dim", 0))


def read_version(target: str, root: str, version: str) -> Version:
    from rsir.retrieval.archive import read_columns, read_manifest

    manifest = read_manifest(root, version)
    owner_texts: dict[str, list[str]] = {}
    if target == "captions":  # every segment of an appended-to version, tombstones out
        table = read_columns(root, version, ["owner", "text"])
        for owner, text in zip(table.column("owner").to_pylist(), table.column("text").to_pylist()):
            owner_texts.setdefault(str(owner), []).append(str(text))
    return Version(version, manifest, owner_texts)


class VersionIndex:
    """The version of each target the ingress serves. :meth:`poll_once` reads each root's
    ``CURRENT``; a new version is served once every shard reports holding it
    (:meth:`ready`), so a swap never sends a request to a shard still loading."""

    def __init__(self, roots: dict[str, str]) -> None:
        self.roots = roots
        self.serving: dict[str, Version] = {}
        self.pending: dict[str, Version] = {}
        self.swaps = 0
        self._warned: set[tuple[str, str]] = set()

    def poll_once(self) -> None:
        from rsir.retrieval.archive import current_version

        for target, root in self.roots.items():
            try:
                version = current_version(root)
                known = self.pending.get(target) or self.serving.get(target)
                if known is not None and known.version == version:
                    continue
                new = read_version(target, root, version)
            except Exception as err:  # noqa: BLE001 - keep serving the version we have
                if (target, str(err)) not in self._warned:
                    self._warned.add((target, str(err)))
                    log.warning("archive %s at %s not read: %s", target, root, err)
                continue
            if target not in self.serving:  # nothing served yet: serve it at once
                self._swap(target, new)
            else:
                self.pending = {**self.pending, target: new}

    def ready(self, held: list[dict[str, list[str]] | None]) -> None:
        """Shards' held versions (None: a shard that did not answer): a pending version
        every shard holds becomes the served one."""
        for target, new in list(self.pending.items()):
            if all(h is not None and new.version in h.get(target, ()) for h in held):
                self._swap(target, new)
                self.pending = {t: v for t, v in self.pending.items() if t != target}

    def _swap(self, target: str, new: Version) -> None:
        # One reference assignment: a request sees the old dict or the new one.
        self.serving = {**self.serving, target: new}
        self.swaps += 1
        log.info("archive %s: now version %s (%d rows)", target, new.version, new.rows)


class Poller:
    """Calls ``fn`` every ``interval_s`` on a daemon thread until :meth:`stop`."""

    def __init__(self, fn: Callable[[], None], interval_s: float, name: str) -> None:
        self._fn, self._interval = fn, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._fn()

    def stop(self) -> None:
        self._stop.set()
