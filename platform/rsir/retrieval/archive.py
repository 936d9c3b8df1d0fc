"""Embedding archives: versioned Parquet (``id`` + ``embedding`` + metadata) with a manifest.

Layout of an archive root::

    ROOT/
      CURRENT                 the published version's name (replaced atomically)
      v-20261122T230501-1a2b/
        embeddings.parquet    id, embedding (fixed-size list<float32>), kind, captions, ...
        manifest.json         model, checkpoint hash, config, dim, rows, created time,
                              segments (the versions whose rows make this one), deleted
        deleted.npy           tombstones: sorted global row positions (when any)
        index/                the FAISS index of this version's own rows (rsir.retrieval.index)

A version is written completely under a temporary name, renamed into place, and only then
named in ``CURRENT``: a reader sees the previous version or the new one, never half of one.

A version is a list of *segments*: the rows of earlier versions it extends (``base``),
then its own rows. An append writes only the new rows (and their index piece); a delete
writes only tombstones; a full rebuild is a version of one segment (compaction). A row's
*global position* is its place in the segments concatenated, tombstones included; the
*live* rows are the others, in that order (what :func:`load_archive` returns).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute.is_in
import pyarrow.parquet as pq

EMBEDDINGS_FILE = "embeddings.parquet"
DELETED_FILE = "deleted.npy"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
# Rows of a Parquet row group: a reader of a block of rows (a search shard, an index piece)
# decodes whole row groups, so this bounds what it decodes beyond its block.
ROW_GROUP_ROWS = 65_536


@dataclass
class Archive:
    """One loaded archive version: row ids, L2-normalised vectors and per-row metadata."""

    version: str
    ids: list[str]
    vectors: np.ndarray  # [N, D] float32
    manifest: dict[str, Any]
    metadata: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_archive(
    root: str | Path,
    ids: list[str],
    vectors: np.ndarray,
    manifest: dict[str, Any],
    metadata: dict[str, list[Any]] | None = None,
    *,
    base: str | None = None,
    deleted: Iterable[int] = (),
    current: bool = True,
) -> str:
    """Write a new version under ``root`` and (``current``) make it current; returns its
    name. With ``base``, the version extends that one: its segments, then these rows (an
    append; none for a delete), with the base's tombstones plus ``deleted`` (global
    positions). ``current=False`` leaves ``CURRENT`` alone (:func:`set_current` later, e.g.
    once the version's index is built)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"ids ({len(ids)}) and vectors {vectors.shape} do not match")
    segments, tombstones = [], np.asarray(sorted(set(int(d) for d in deleted)), np.int64)
    if base is not None:
        base_manifest = read_manifest(root, base)
        if len(ids) and vectors.shape[1] != base_manifest["dim"]:
            raise ValueError(f"{root}: vectors of dim {vectors.shape[1]} cannot extend version "
                             f"{base} of dim {base_manifest['dim']}")
        segments = segments_of(base_manifest)
        tombstones = np.union1d(read_deleted(root, base), tombstones)
        total = sum(s["rows"] for s in segments)
        if len(tombstones) and (tombstones[0] < 0 or tombstones[-1] >= total):
            raise ValueError(f"{root}: deleted positions must lie in [0, {total}) of version {base}")
    elif len(tombstones):
        raise ValueError("deleted positions need a base version")
    dim = vectors.shape[1] if vectors.shape[1] or base is None else base_manifest["dim"]
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    }
    for name, values in (metadata or {}).items():
        columns[name] = pa.array(values)
    version = f"v-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
    tmp = root / f".{version}.tmp"
    tmp.mkdir()
    if len(ids) or base is None:
        pq.write_table(pa.table(columns), tmp / EMBEDDINGS_FILE, row_group_size=ROW_GROUP_ROWS)
        segments = [*segments, {"version": version, "rows": len(ids)}]
    if len(tombstones):
        np.save(tmp / DELETED_FILE, tombstones)
    total = sum(s["rows"] for s in segments)
    full_manifest = {**manifest, "dim": dim, "rows": total - len(tombstones),
                     "segments": segments, "deleted": len(tombstones), "base": base,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": version}
    (tmp / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2), encoding="utf-8")
    os.replace(tmp, root / version)
    if current:
        set_current(root, version)
    return version


def set_current(root: str | Path, version: str) -> None:
    """Name ``version`` in ``CURRENT`` (one atomic rename)."""
    root = Path(root)
    if not (root / version / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{root}: no version {version!r} to make current")
    pointer = root / f".{CURRENT_FILE}.{version}.tmp"
    pointer.write_text(version, encoding="utf-8")
    os.replace(pointer, root / CURRENT_FILE)


def read_manifest(root: str | Path, version: str | None = None) -> dict[str, Any]:
    version = version or current_version(root)
    return json.loads((Path(root) / version / MANIFEST_FILE).read_text(encoding="utf-8"))


def segments_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The version's segments (``version``, ``rows``); one, itself, for a version written
    before segments existed."""
    return list(manifest.get("segments") or [{"version": manifest["version"], "rows": manifest["rows"]}])


def read_deleted(root: str | Path, version: str) -> np.ndarray:
    """The version's tombstones: sorted global row positions."""
    path = Path(root) / version / DELETED_FILE
    return np.load(path) if path.is_file() else np.zeros(0, np.int64)


def segment_offsets(manifest: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(version, first global position, rows) of each segment."""
    out, offset = [], 0
    for seg in segments_of(manifest):
        out.append((seg["version"], offset, seg["rows"]))
        offset += seg["rows"]
    return out


def iter_batches(root: str | Path, version: str, start: int = 0, stop: int | None = None,
                 columns: list[str] | None = None, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """``columns`` (all when None) of one version's own rows ``[start, stop)`` in batches of
    at most ``batch_rows``, read from its Parquet row group by row group (memory: one
    batch)."""
    f = pq.ParquetFile(Path(root) / version / EMBEDDINGS_FILE)
    stop = f.metadata.num_rows if stop is None else stop
    offset = 0
    for rg in range(f.num_row_groups):
        n = f.metadata.row_group(rg).num_rows
        if offset + n > start and offset < stop:
            for batch in f.iter_batches(batch_rows, row_groups=[rg], columns=columns):
                lo, hi = max(start - offset, 0), min(stop - offset, len(batch))
                if hi > lo:
                    yield batch.slice(lo, hi - lo)
                offset += len(batch)
        else:
            offset += n
        if offset >= stop:
            break


def iter_vectors(root: str | Path, version: str, start: int = 0, stop: int | None = None,
                 batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """Vectors of one version's own rows ``[start, stop)`` in chunks of ``batch_rows``
    (:func:`iter_batches`)."""
    for batch in iter_batches(root, version, start, stop, ["embedding"], batch_rows):
        col = batch.column(0)
        dim = col.type.list_size
        flat = col.values.to_numpy(zero_copy_only=False)[col.offset * dim:(col.offset + len(col)) * dim]
        yield flat.reshape(len(batch), dim)


def live_to_global(deleted: np.ndarray, live: np.ndarray | int) -> np.ndarray:
    """Live positions -> global positions, ``deleted`` being the sorted tombstoned global
    positions (the inverse of leaving them out and renumbering the rest)."""
    live = np.asarray(live, dtype=np.int64)
    # Tombstone j has deleted[j] - j live rows before it: live row i sits after every
    # tombstone with deleted[j] - j <= i.
    return live + np.searchsorted(deleted - np.arange(len(deleted)), live, side="right")


@dataclass
class RowBlock:
    """The ``id`` and metadata columns of a block of an archive version's rows, read by
    live position: ``table`` may still hold tombstoned rows (memory-mapped index pieces'
    rows), ``deleted`` (sorted positions in ``table``) naming them."""

    table: pa.Table
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self._batches = self.table.to_batches()
        self._starts = np.cumsum([0] + [len(b) for b in self._batches])

    def __len__(self) -> int:
        return self.table.num_rows - len(self.deleted)

    def take(self, live: np.ndarray) -> list[dict[str, Any]]:
        """The rows at live positions ``live``, as dicts of their columns."""
        # Row by row out of its batch: Table.take on many chunks copies whole columns,
        # which would read a memory-mapped block into the heap.
        rows = live_to_global(self.deleted, live)
        batch = np.searchsorted(self._starts, rows, side="right") - 1
        return [self._batches[b].slice(g - a, 1).to_pylist()[0]
                for g, b, a in zip(rows.tolist(), batch.tolist(), self._starts[batch].tolist())]


def live_ids(root: str | Path, version: str | None = None) -> tuple[list[str], np.ndarray]:
    """The live rows' ids and their global positions (the id column only)."""
    manifest = read_manifest(root, version)
    deleted = read_deleted(root, manifest["version"])
    ids: list[str] = []
    for seg, _, _ in segment_offsets(manifest):
        ids += pq.read_table(Path(root) / seg / EMBEDDINGS_FILE, columns=["id"]).column(0).to_pylist()
    keep = np.setdiff1d(np.arange(len(ids), dtype=np.int64), deleted, assume_unique=True)
    return [ids[i] for i in keep], keep


def current_version(root: str | Path) -> str:
    path = Path(root) / CURRENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no published archive (missing {CURRENT_FILE})")
    return path.read_text(encoding="utf-8").strip()


def load_archive(root: str | Path, version: str | None = None) -> Archive:
    """Load the current (or a named) version of the archive at ``root``: its segments'
    rows in order, tombstoned rows left out."""
    root = Path(root)
    version = version or current_version(root)
    manifest = read_manifest(root, version)
    tables = [pq.read_table(root / seg / EMBEDDINGS_FILE) for seg, _, _ in segment_offsets(manifest)]
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    deleted = read_deleted(root, version)
    if len(deleted):
        keep = np.ones(len(table), bool)
        keep[deleted] = False
        table = table.filter(pa.array(keep))
    metadata = {name: table.column(name).to_pylist()
                for name in table.column_names if name not in ("id", "embedding")}
    return Archive(version=version, ids=table.column("id").to_pylist(),
                   vectors=embedding_matrix(table, manifest["dim"]), manifest=manifest, metadata=metadata)


def positions_of(root: str | Path, values: Iterable[str], column: str = "id",
                 version: str | None = None) -> np.ndarray:
    """Sorted global positions of the live rows of ``version`` whose ``column`` is one of
    ``values`` (a column read on its own, segment by segment)."""
    manifest = read_manifest(root, version)
    wanted = pa.array(sorted(set(values)), pa.string())
    deleted = read_deleted(root, manifest["version"])
    out = []
    for seg, offset, rows in segment_offsets(manifest):
        if rows == 0:
            continue
        col = pq.read_table(Path(root) / seg / EMBEDDINGS_FILE, columns=[column]).column(0)
        hit = np.flatnonzero(pa.compute.is_in(col, value_set=wanted).to_numpy(zero_copy_only=False))
        out.append(hit + offset)
    pos = np.concatenate(out) if out else np.zeros(0, np.int64)
    return np.setdiff1d(pos, deleted).astype(np.int64)


def read_columns(root: str | Path, version: str, columns: list[str]) -> pa.Table:
    """``columns`` of a version's live rows (every segment, tombstones left out)."""
    root = Path(root)
    manifest = read_manifest(root, version)
    tables = [pq.read_table(root / seg / EMBEDDINGS_FILE, columns=columns)
              for seg, _, _ in segment_offsets(manifest)]
    table = pa.concat_tables(tables, promote_options="default")
    deleted = read_deleted(root, version)
    if len(deleted):
        keep = np.ones(len(table), bool)
        keep[deleted] = False
        table = table.filter(pa.array(keep))
    return table


def compact_archive(root: str | Path, version: str | None = None, batch_rows: int = 65536) -> str:
    """A new version (not yet current) of ``version``'s live rows as one segment: its
    segments streamed batch by batch into one Parquet file, tombstoned rows dropped."""
    root = Path(root)
    manifest = read_manifest(root, version)
    deleted = read_deleted(root, manifest["version"])
    new = f"v-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
    tmp = root / f".{new}.tmp"
    tmp.mkdir()
    writer, rows = None, 0
    for seg, offset, n in segment_offsets(manifest):
        f = pq.ParquetFile(root / seg / EMBEDDINGS_FILE)
        writer = writer or pq.ParquetWriter(tmp / EMBEDDINGS_FILE, f.schema_arrow)
        pos = offset
        for batch in f.iter_batches(batch_rows):
            size = len(batch)
            lo, hi = np.searchsorted(deleted, [pos, pos + size])
            if hi > lo:
                keep = np.ones(size, bool)
                keep[deleted[lo:hi] - pos] = False
                batch = batch.filter(pa.array(keep))
            writer.write_table(pa.Table.from_batches([batch], f.schema_arrow))
            rows += len(batch)
            pos += size
    if writer is not None:
        writer.close()
    kept = {k: v for k, v in manifest.items()
            if k not in ("rows", "segments", "deleted", "base", "created", "version")}
    full = {**kept, "rows": rows, "segments": [{"version": new, "rows": rows}], "deleted": 0,
            "base": None, "compacted_from": manifest["version"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": new}
    (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2), encoding="utf-8")
    os.replace(tmp, root / new)
    return new


def read_archive_rows(root: str | Path, version: str, start: int, end: int,
                      columns: list[str] | None = None, vectors: bool = True) -> pa.Table:
    """Live rows ``[start, end)`` of a version (a search shard's block) as an Arrow table
    (``id``, ``embedding`` when ``vectors``, then the metadata columns: ``columns``, or all
    when None), reading only the Parquet row groups of its segments that hold them,
    tombstoned rows left out. Its buffers hold these rows alone (copied out of the row
    groups), no Python object per row."""
    root = Path(root)
    manifest = read_manifest(root, version)
    deleted = read_deleted(root, version)
    g_start = int(live_to_global(deleted, start))
    g_end = int(live_to_global(deleted, end - 1)) + 1 if end > start else g_start
    names = None
    vector_cols = ["embedding"] if vectors else []
    pieces = []
    for seg, offset, rows in segment_offsets(manifest):
        if rows == 0 or offset >= g_end or offset + rows <= g_start:
            continue
        f = pq.ParquetFile(root / seg / EMBEDDINGS_FILE)
        names = names or ["id", *vector_cols, *(c for c in f.schema_arrow.names if c not in ("id", "embedding")
                                                and (columns is None or c in columns))]
        first = offset
        for rg in range(f.num_row_groups):
            n = f.metadata.row_group(rg).num_rows
            lo, hi = max(g_start, first), min(g_end, first + n)
            if lo < hi:
                keep = np.zeros(n, bool)
                keep[lo - first:hi - first] = True
                d_lo, d_hi = np.searchsorted(deleted, [lo, hi])
                keep[deleted[d_lo:d_hi] - first] = False
                # filter() copies the kept rows: a slice would pin the whole row group.
                pieces.append(f.read_row_group(rg, columns=names).filter(pa.array(keep)))
            first += n
    if not pieces:  # an empty block: the first segment's schema, no rows
        f = pq.ParquetFile(root / segment_offsets(manifest)[0][0] / EMBEDDINGS_FILE)
        names = names or ["id", *vector_cols, *(c for c in f.schema_arrow.names if c not in ("id", "embedding")
                                                and (columns is None or c in columns))]
        pieces = [f.schema_arrow.empty_table().select(names)]
    return pa.concat_tables(pieces, promote_options="default")


def embedding_matrix(table: pa.Table, dim: int) -> np.ndarray:
    """The ``embedding`` column of an archive table as a float32 [n, dim] array of its own
    (the table's buffers can go)."""
    emb = table.column("embedding").combine_chunks()
    return np.array(emb.flatten().to_numpy(zero_copy_only=False).reshape(len(table), dim), dtype=np.float32)
