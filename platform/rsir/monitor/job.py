"""Score an archive's new rows against every active monitor, on Ray, and store the alerts.

The new rows of a version are those whose ids the previous scored version did not have
(a delta appended by ``rsir index --append``, or the new scenes of a rebuilt version).
They are cut into blocks; each block is one Ray task that scores it against the whole
monitor set (put once in the object store) with :func:`rsir.retrieval.monitors.score_delta`
(one matrix product per block of monitors). The driver turns the hits into alerts; the
store skips any it already has, so scoring a version twice creates no duplicate.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsir.monitor.store import MonitorStore, StoredMonitor
from rsir.retrieval.filters import MetadataTable
from rsir.retrieval.monitors import (
    T_MAX,
    T_MIN,
    DeltaRows,
    Hits,
    MonitorSet,
    monitor_set,
    rank_in_calibration,
    score_delta,
)

log = logging.getLogger(__name__)


def monitor_set_of(stored: list[StoredMonitor], dim: int) -> MonitorSet:
    """The stored monitors of one archive as the arrays :func:`score_delta` reads."""
    if not stored:
        return monitor_set([], np.zeros((0, dim), np.float32), [])
    for m in stored:
        if m.vector.shape != (dim,):
            raise ValueError(f"monitor {m.name!r}: its query vector has {m.vector.size} dims, "
                             f"the archive {dim} (re-create it against this archive's model)")
    scopes = [m.scope for m in stored]
    return monitor_set(
        [m.id for m in stored], np.stack([m.vector for m in stored]), [m.threshold for m in stored],
        lam=[np.nan if m.lam is None else m.lam for m in stored],
        text_vectors=np.stack([m.vector if m.text_vector is None else m.text_vector for m in stored]),
        stats=np.array([m.stats or [2.0, 0.0, 2.0] * 2 for m in stored], dtype=np.float64),
        bbox=np.array([s.get("bbox") or [np.nan] * 4 for s in scopes], dtype=np.float64),
        t_start=[T_MIN if s.get("start") is None else s["start"] for s in scopes],
        t_end=[T_MAX if s.get("end") is None else s["end"] for s in scopes],
        polygons=[None if s.get("polygon") is None else bytes.fromhex(s["polygon"]) for s in scopes])


def delta_rows(vectors: np.ndarray, metadata: dict[str, list[Any]]) -> DeltaRows:
    """What scopes read of the new rows (bbox, acquisition interval, footprint)."""
    table = MetadataTable(metadata, len(vectors))
    return DeltaRows(vectors=vectors, bbox=table.bbox,
                     t_start=np.where(table.has_time, table.t_start, T_MIN),
                     t_end=np.where(table.has_time, table.t_end, T_MIN),
                     footprints=metadata.get("footprint") or [None] * len(vectors))


def _score_block(monitors: MonitorSet, delta: DeltaRows, offset: int) -> Hits:
    hits = score_delta(monitors, delta)
    return Hits(hits.rows + offset, hits.monitors, hits.scores)


def score_on_ray(monitors: MonitorSet, delta: DeltaRows, block_rows: int = 20_000,
                 num_cpus: float = 1.0, timeout_s: float = 600.0) -> Hits:
    """:func:`score_delta` with the rows cut into blocks, one Ray task each (``num_cpus``
    each). Tasks not done within ``timeout_s`` (the cluster has no room for them) are
    cancelled and the error names what they asked for."""
    import ray

    if len(monitors) == 0 or len(delta.vectors) == 0:
        return score_delta(monitors, delta)
    ref = ray.put(monitors)
    task = ray.remote(num_cpus=num_cpus)(_score_block)
    futures = []
    for start in range(0, len(delta.vectors), block_rows):
        s = slice(start, start + block_rows)
        block = DeltaRows(delta.vectors[s], delta.bbox[s], delta.t_start[s], delta.t_end[s],
                          list(delta.footprints[s]))
        futures.append(task.remote(ref, block, start))
    try:
        parts = ray.get(futures, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        for f in futures:
            ray.cancel(f)
        raise TimeoutError(f"monitor scoring: {len(futures)} task(s) of {{CPU: {num_cpus}}} not done in "
                           f"{timeout_s:.0f} s (cluster: {ray.available_resources()}); lower "
                           "monitors.score_cpus or add nodes") from None
    return Hits(np.concatenate([p.rows for p in parts]), np.concatenate([p.monitors for p in parts]),
                np.concatenate([p.scores for p in parts]))


@dataclass(frozen=True)
class ScoreResult:
    version: str
    new_rows: int
    monitors: int
    hits: int
    new_alerts: int
    seconds: float


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def new_rows(root: str, version: str, previous: str | None) -> tuple[list[str], np.ndarray, dict[str, list[Any]]]:
    """The live rows of ``version`` whose ids ``previous`` lacked: ids, vectors, metadata.
    Only the segments ``previous`` does not share are read (an append's delta), and of
    those only the ids it did not have (a compaction rewrites old rows as a new segment)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rsir.retrieval.archive import EMBEDDINGS_FILE, live_ids, read_deleted, read_manifest, segment_offsets

    manifest = read_manifest(root, version)
    shared = {seg for seg, _, _ in segment_offsets(read_manifest(root, previous))} if previous else set()
    old = set(live_ids(root, previous)[0]) if previous else set()
    deleted = set(read_deleted(root, version).tolist())
    tables = []
    for seg, start, n in segment_offsets(manifest):
        if seg in shared:
            continue
        t = pq.read_table(Path(root) / seg / EMBEDDINGS_FILE)
        keep = [i for i, id_ in enumerate(t.column("id").to_pylist())
                if start + i not in deleted and id_ not in old]
        tables.append(t.take(pa.array(keep, pa.int64())))
    dim = int(manifest["dim"])
    if not tables:
        return [], np.zeros((0, dim), np.float32), {}
    table = pa.concat_tables(tables, promote_options="default")
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    metadata = {c: table.column(c).to_pylist() for c in table.column_names if c not in ("id", "embedding")}
    return table.column("id").to_pylist(), vectors.reshape(len(table), dim).astype(np.float32), metadata


def score_version(store: MonitorStore, target: str, root: str, version: str,
                  previous: str | None, use_ray: bool = True, num_cpus: float = 1.0) -> ScoreResult:
    """Score the rows of ``version`` that ``previous`` lacked (all of them when None)
    against ``target``'s active monitors; store the alerts; mark the version scored."""
    t0 = time.perf_counter()
    ids, vectors, metadata = new_rows(root, version, previous)
    stored = store.list(target, active_only=True)
    monitors = monitor_set_of(stored, vectors.shape[1])
    delta = delta_rows(vectors, metadata)
    hits = score_on_ray(monitors, delta, num_cpus=num_cpus) if use_ray else score_delta(monitors, delta)
    by_id = {m.id: m for m in stored}
    missing = [None] * len(ids)
    bbox, footprint, t1, t2 = (metadata.get(k, missing) for k in ("bbox", "footprint", "acquired", "acquired_t2"))
    rows = []
    for r, j, score in zip(hits.rows.tolist(), hits.monitors.tolist(), hits.scores.tolist()):
        m = by_id[int(monitors.ids[j])]
        rank = (None if m.calibration is None
                else int(rank_in_calibration(m.calibration, np.float32(score))))
        rows.append(dict(
            monitor_id=m.id, archive=target, row_id=ids[r], version=version,
            score=float(score), rank=rank, bbox=None if bbox[r] is None else json.dumps(list(bbox[r])),
            footprint=footprint[r], acquired=_iso(t1[r]), acquired_t2=_iso(t2[r])))
    added = store.add_alerts(rows)
    seconds = time.perf_counter() - t0
    store.mark_scored(target, version, len(ids), len(added), seconds)
    log.info("monitors: %s %s: %d new rows x %d monitors -> %d hits, %d new alerts (%.2f s)",
             target, version, len(ids), len(monitors), len(hits), len(added), seconds)
    return ScoreResult(version, len(ids), len(monitors), len(hits), len(added), seconds)
