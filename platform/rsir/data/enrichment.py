"""Enriching an archive (pure): planning, writing and finishing the chunks of a job that adds
one column's worth of values to every row of an existing archive (detected objects,
translated captions).

The output keeps the converters' layout and resumability (see
:mod:`rsir.data.converters.base`): chunk k is the k-th input shard (sorted by name) and
always writes ``part-{k:05d}-00000.parquet`` with the input shard's rows in their order,
every column copied as read except the job's one; ``_meta/chunks/{k:05d}.json`` is written
after the chunk's shard and quarantine part, so a re-run skips every chunk whose manifest
carries the same fingerprint and rewrites the others after deleting their old files.

A chunk's fingerprint is the job's options plus the input shard's name, size and Parquet
footer (row count, per column chunk sizes and statistics): a rewritten input shard or
other options make the chunk run again, a re-run over the same input skips it without
reading the images (the converters likewise fingerprint the listing, not the bytes).

Workers compute one result per input row, keyed by the shard's name and the row's id:
a value for the job's column and a reason when the row could not be processed (the row
is kept with an empty value and listed in the quarantine with that reason). The driver
feeds those results to :class:`ChunkCollector`, which writes each chunk as soon as all of
its rows have come back, so it holds the results of unfinished chunks only (small: no
image bytes) and one input shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rsir.data.converters.base import (
    _atomic_write_bytes,
    _chunk_files,
    _drop_stale_chunks,
    _write_quarantine,
    _write_table,
    read_quarantine,
)
from rsir.data.schema import QUARANTINE_SCHEMA, SHARD_SCHEMA, shard_paths

# What workers return for each row: the input shard's path (Ray Data's ``include_paths``
# column), the row id, the value for the job's column (null when the row failed) and the
# failure's reason (else null).
RESULT_KEYS = ("path", "id", "value", "reason")


def result_schema(value_type: pa.DataType) -> pa.Schema:
    """The schema of the tables enrichment workers return, for a column of ``value_type``."""
    return pa.schema([("path", pa.string()), ("id", pa.string()), ("value", value_type),
                      ("reason", pa.string())])


@dataclass(frozen=True)
class EnrichmentJob:
    """What a job adds: ``column`` of SHARD_SCHEMA, replaced or appended to (list columns),
    and ``options``, everything that decides its values (the chunks' fingerprint)."""

    name: str
    column: str
    merge: Literal["replace", "append"]
    options: Mapping[str, Any]

    @property
    def value_type(self) -> pa.DataType:
        return SHARD_SCHEMA.field(self.column).type


@dataclass(frozen=True)
class Chunk:
    index: int
    source: Path  # the input shard
    rows: int
    fingerprint: str

    @property
    def output(self) -> str:
        return f"part-{self.index:05d}-00000.parquet"


@dataclass
class EnrichmentPlan:
    job: EnrichmentJob
    source: Path
    out: Path
    chunks: list[Chunk]
    pending: list[Chunk]

    @property
    def skipped(self) -> list[Chunk]:
        pending = {c.index for c in self.pending}
        return [c for c in self.chunks if c.index not in pending]


def shard_fingerprint(options: Mapping[str, Any], path: Path) -> str:
    """The job's options with the shard's name, size and Parquet footer (see module doc)."""
    footer = pq.read_metadata(path).to_dict()
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    h.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
    h.update(json.dumps(footer, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _manifest_path(out: Path, k: int) -> Path:
    return out / "_meta" / "chunks" / f"{k:05d}.json"


def plan_enrichment(job: EnrichmentJob, source: str | os.PathLike[str],
                    out: str | os.PathLike[str]) -> EnrichmentPlan:
    """One chunk per input shard; chunks already done with the same fingerprint are
    skipped, the files of every other chunk are deleted (they are rewritten)."""
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise ValueError(f"{job.name}: --out {out} is the input archive; write a new one")
    (out / "_meta" / "chunks").mkdir(parents=True, exist_ok=True)
    (out / "_meta" / "quarantine").mkdir(parents=True, exist_ok=True)
    chunks, pending = [], []
    for k, path in enumerate(shard_paths(source)):
        chunk = Chunk(k, path.resolve(), pq.read_metadata(path).num_rows,
                      shard_fingerprint(job.options, path))
        chunks.append(chunk)
        manifest_path = _manifest_path(out, k)
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if manifest is not None and manifest.get("fingerprint") == chunk.fingerprint:
            continue
        manifest_path.unlink(missing_ok=True)
        for stale in _chunk_files(out, k):
            stale.unlink(missing_ok=True)
        pending.append(chunk)
    return EnrichmentPlan(job, source, out, chunks, pending)


def merge_column(job: EnrichmentJob, old: Sequence[Any], new: Sequence[Any]) -> pa.Array:
    """The job's column of a chunk: ``new`` per row (null -> empty) replacing or appended
    to ``old``."""
    if job.merge == "replace":
        values = [v if v is not None else [] for v in new]
    else:
        values = [list(o or []) + list(n or []) for o, n in zip(old, new)]
    return pa.array(values, type=job.value_type)


def write_chunk(plan: EnrichmentPlan, chunk: Chunk, results: Mapping[str, tuple[Any, str | None]]) -> int:
    """Write one chunk's shard (input rows in order, the job's column merged), its
    quarantine part, then its manifest. Returns the number of quarantined rows."""
    table = pq.read_table(chunk.source, schema=SHARD_SCHEMA)
    ids = table.column("id").to_pylist()
    missing = [i for i in ids if i not in results]
    if missing or len(ids) != len(results):
        raise RuntimeError(f"{plan.job.name}: {chunk.source.name}: results for {len(results)} of "
                           f"{len(ids)} rows (missing e.g. {missing[:3]})")
    column = SHARD_SCHEMA.get_field_index(plan.job.column)
    merged = merge_column(plan.job, table.column(column).to_pylist(), [results[i][0] for i in ids])
    table = table.set_column(column, SHARD_SCHEMA.field(column), merged)
    _write_table(table, plan.out / chunk.output)
    sources = table.column("source").to_pylist()
    bad = [{"dataset": plan.job.name, "record": i, "source_path": s, "reason": results[i][1]}
           for i, s in zip(ids, sources) if results[i][1] is not None]
    if bad:
        _write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA),
                     plan.out / "_meta" / "quarantine" / f"{chunk.index:05d}.parquet")
    manifest = {"fingerprint": chunk.fingerprint, "source": chunk.source.name,
                "rows": len(ids), "quarantined": len(bad)}
    _atomic_write_bytes(_manifest_path(plan.out, chunk.index), json.dumps(manifest).encode())
    return len(bad)


@dataclass
class ChunkCollector:
    """Gathers workers' result tables and writes each pending chunk once all its rows are in."""

    plan: EnrichmentPlan
    on_chunk: Callable[[Chunk], None] | None = None
    written: int = 0
    quarantined: int = 0
    _results: dict[str, dict[str, tuple[Any, str | None]]] = field(default_factory=dict)
    _by_name: dict[str, Chunk] = field(init=False)

    def __post_init__(self) -> None:
        self._by_name = {c.source.name: c for c in self.plan.pending}
        for chunk in self.plan.pending:
            if chunk.rows == 0:
                self._finish(chunk)

    def add(self, table: pa.Table) -> None:
        for path, row_id, value, reason in zip(*(table.column(k).to_pylist() for k in RESULT_KEYS)):
            name = Path(path).name
            chunk = self._by_name.get(name)
            if chunk is None:
                raise RuntimeError(f"{self.plan.job.name}: a result for {name}, not a pending shard")
            rows = self._results.setdefault(name, {})
            if row_id in rows:
                raise ValueError(f"{self.plan.job.name}: {chunk.source}: id {row_id!r} appears twice "
                                 "(enrichment keys a shard's rows by id)")
            rows[row_id] = (value, reason)
            if len(rows) == chunk.rows:
                self._finish(chunk)

    def _finish(self, chunk: Chunk) -> None:
        self.quarantined += write_chunk(self.plan, chunk, self._results.pop(chunk.source.name, {}))
        self.written += 1
        if self.on_chunk is not None:
            self.on_chunk(chunk)

    def check_complete(self) -> None:
        """Raise when a pending chunk did not get all its rows back."""
        done = {int(p.stem) for p in (self.plan.out / "_meta" / "chunks").glob("*.json")}
        short = [c.source.name for c in self.plan.pending if c.index not in done]
        if short:
            raise RuntimeError(f"{self.plan.job.name}: no complete results for {', '.join(short)}")


def finish_enrichment(plan: EnrichmentPlan, record: Mapping[str, Any], written: int) -> dict[str, Any]:
    """After every chunk: drop chunks beyond the input's, copy the input's ``_meta`` tables
    and job records, write ``_meta/{job}.json`` (``record``: what produced the column),
    the quarantine (this job's bad rows, then the input's bad records) and ``_SUCCESS``."""
    meta, source_meta = plan.out / "_meta", plan.source / "_meta"
    n_chunks = len(plan.chunks)
    _drop_stale_chunks(plan.out, n_chunks)
    if source_meta.is_dir():
        for item in source_meta.iterdir():
            # chunks/, quarantine/ and quarantine.parquet describe the input's own chunks
            if item.is_file() and item.name != "quarantine.parquet" and not item.name.endswith(".tmp"):
                tmp = meta / f"{item.name}.tmp"
                shutil.copyfile(item, tmp)
                os.replace(tmp, meta / item.name)
    _atomic_write_bytes(meta / f"{plan.job.name}.json",
                        json.dumps({**record, "source": str(plan.source)}, indent=1).encode())
    inherited = (read_quarantine(plan.source).to_pylist()
                 if (source_meta / "quarantine.parquet").is_file() else [])
    _write_quarantine(meta, n_chunks, inherited)
    rows = quarantined = 0
    for chunk in plan.chunks:
        manifest = json.loads(_manifest_path(plan.out, chunk.index).read_text())
        rows += manifest["rows"]
        quarantined += manifest["quarantined"]
    summary = {"job": plan.job.name, "source": str(plan.source), "rows": rows,
               "quarantined": quarantined, "chunks": n_chunks, "chunks_written": written,
               "chunks_skipped": n_chunks - written, "options": dict(plan.job.options)}
    _atomic_write_bytes(plan.out / "_SUCCESS", json.dumps(summary, indent=1, default=str).encode())
    return summary


def result_table(results: Iterable[Mapping[str, Any]], value_type: pa.DataType) -> pa.Table:
    """Result rows (dicts of :data:`RESULT_KEYS`) as a table of :func:`result_schema`."""
    return pa.Table.from_pylist(list(results), schema=result_schema(value_type))
