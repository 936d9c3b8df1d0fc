"""Embedding archives: versioned Parquet (``id`` + ``embedding`` + metadata) with a manifest.

Layout of an archive root::

    ROOT/
      CURRENT                 the published version's name (replaced atomically)
      v-20261122T230501-1a2b/
        embeddings.parquet    id, embedding (fixed-size list<float32>), kind, captions, ...
        manifest.json         model, checkpoint hash, config, dim, rows, created time

A version is written completely under a temporary name, renamed into place, and only then
named in ``CURRENT``: a reader sees the previous version or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EMBEDDINGS_FILE = "embeddings.parquet"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"


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
) -> str:
    """Write a new version under ``root`` and make it current; returns its name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"ids ({len(ids)}) and vectors {vectors.shape} do not match")
    dim = vectors.shape[1]
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    }
    for name, values in (metadata or {}).items():
        columns[name] = pa.array(values)
    version = f"v-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
    tmp = root / f".{version}.tmp"
    tmp.mkdir()
    pq.write_table(pa.table(columns), tmp / EMBEDDINGS_FILE)
    full_manifest = {**manifest, "dim": dim, "rows": len(ids),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": version}
    (tmp / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2), encoding="utf-8")
    os.replace(tmp, root / version)
    pointer = root / f".{CURRENT_FILE}.{version}.tmp"
    pointer.write_text(version, encoding="utf-8")
    os.replace(pointer, root / CURRENT_FILE)
    return version


def current_version(root: str | Path) -> str:
    path = Path(root) / CURRENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no published archive (missing {CURRENT_FILE})")
    return path.read_text(encoding="utf-8").strip()


def load_archive(root: str | Path, version: str | None = None) -> Archive:
    """Load the current (or a named) version of the archive at ``root``."""
    root = Path(root)
    version = version or current_version(root)
    vdir = root / version
    table = pq.read_table(vdir / EMBEDDINGS_FILE)
    manifest = json.loads((vdir / MANIFEST_FILE).read_text(encoding="utf-8"))
    emb = table.column("embedding").combine_chunks()
    vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(table), manifest["dim"])
    metadata = {name: table.column(name).to_pylist()
                for name in table.column_names if name not in ("id", "embedding")}
    return Archive(version=version, ids=table.column("id").to_pylist(),
                   vectors=vectors.astype(np.float32, copy=False), manifest=manifest,
                   metadata=metadata)


def read_manifest(root: str | Path, version: str) -> dict[str, Any]:
    return json.loads((Path(root) / version / MANIFEST_FILE).read_text(encoding="utf-8"))


def load_archive_rows(root: str | Path, version: str, start: int, end: int,
                      columns: list[str] | None = None) -> Archive:
    """Rows ``[start, end)`` of a version (a search shard's block), reading only the
    Parquet row groups that hold them; ``columns``: the metadata columns to keep (all
    when None)."""
    vdir = Path(root) / version
    manifest = read_manifest(root, version)
    f = pq.ParquetFile(vdir / EMBEDDINGS_FILE)
    names = ["id", "embedding", *(c for c in f.schema_arrow.names if c not in ("id", "embedding")
                                  and (columns is None or c in columns))]
    pieces, first = [], 0
    for rg in range(f.num_row_groups):
        n = f.metadata.row_group(rg).num_rows
        lo, hi = max(start, first), min(end, first + n)
        if lo < hi:
            pieces.append(f.read_row_group(rg, columns=names).slice(lo - first, hi - lo))
        first += n
    table = pa.concat_tables(pieces) if pieces else f.schema_arrow.empty_table().select(names)
    dim = manifest["dim"]
    emb = table.column("embedding").combine_chunks()
    vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(table), dim)
    return Archive(version=version, ids=table.column("id").to_pylist(),
                   vectors=np.array(vectors, dtype=np.float32), manifest=manifest,
                   metadata={name: table.column(name).to_pylist() for name in names[2:]})
