"""Standing queries (monitors) scored against the new rows of an archive: pure numpy.

A monitor is a saved query vector (or, for a composed query, an image and a text vector
with WEICOM's λ and the archive statistics that standardise them), a scope (a WGS84 box,
optionally a polygon, and a time interval) and a threshold. When a delta of new rows
lands, :func:`score_delta` scores every row against a block of monitors with one matrix
product (two for composed monitors), keeps the (row, monitor) pairs above the monitor's
threshold, and only then checks those pairs' scopes: the scope test runs on the hits, not
on the rows x monitors grid. :func:`calibrate` turns "alert for anything that would have
ranked in my top N" into a threshold, and :func:`rank_in_calibration` gives an alert the
rank it would have had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rsir.retrieval.composed import normalize_with_stats
from rsir.retrieval.filters import boxes_intersect

# Open ends of a time scope, in microseconds since the epoch.
T_MIN = np.iinfo(np.int64).min
T_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class MonitorSet:
    """The active monitors of one archive, one row each.

    ``vectors`` [M, d]: the query vector (a composed monitor's image vector);
    ``text_vectors`` [M, d]: a composed monitor's text vector (ignored where ``lam`` is NaN);
    ``lam`` [M]: WEICOM's λ for composed monitors, NaN for plain ones (score = cosine);
    ``stats`` [M, 6]: a composed monitor's :func:`~rsir.retrieval.composed.similarity_stats`
    of its image and of its text similarities over the archive it was made on (WEICOM
    standardises a new row's similarities with those, as if it were in that archive);
    ``threshold`` [M]; ``bbox`` [M, 4] (NaN: no box); ``t_start`` / ``t_end`` [M] int64
    microseconds (``T_MIN`` / ``T_MAX``: open); ``polygons``: WKB or None per monitor.
    """

    ids: np.ndarray
    vectors: np.ndarray
    threshold: np.ndarray
    lam: np.ndarray
    text_vectors: np.ndarray
    stats: np.ndarray
    bbox: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    polygons: tuple[bytes | None, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> MonitorSet:
        """The monitors at ``index`` (positions in this set), in that order."""
        return MonitorSet(self.ids[index], self.vectors[index], self.threshold[index], self.lam[index],
                          self.text_vectors[index], self.stats[index], self.bbox[index], self.t_start[index],
                          self.t_end[index], tuple(self.polygons[i] for i in index))


def monitor_set(
    ids: Sequence[int], vectors: np.ndarray, threshold: Sequence[float], *,
    lam: Sequence[float] | None = None, text_vectors: np.ndarray | None = None,
    stats: np.ndarray | None = None, bbox: np.ndarray | None = None,
    t_start: Sequence[int] | None = None, t_end: Sequence[int] | None = None,
    polygons: Sequence[bytes | None] | None = None,
) -> MonitorSet:
    """A :class:`MonitorSet` with the unset scopes open and every monitor plain."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    m, d = vectors.shape
    return MonitorSet(
        ids=np.asarray(ids, dtype=np.int64),
        vectors=vectors,
        threshold=np.asarray(threshold, dtype=np.float32),
        lam=np.full(m, np.nan) if lam is None else np.asarray(lam, dtype=np.float64),
        text_vectors=(np.zeros((m, d), np.float32) if text_vectors is None
                      else np.ascontiguousarray(text_vectors, dtype=np.float32)),
        stats=np.tile([2.0, 0.0, 2.0] * 2, (m, 1)) if stats is None else np.asarray(stats, float),
        bbox=np.full((m, 4), np.nan) if bbox is None else np.asarray(bbox, dtype=np.float64),
        t_start=np.full(m, T_MIN) if t_start is None else np.asarray(t_start, dtype=np.int64),
        t_end=np.full(m, T_MAX) if t_end is None else np.asarray(t_end, dtype=np.int64),
        polygons=tuple(polygons) if polygons is not None else (None,) * m,
    )


@dataclass(frozen=True)
class DeltaRows:
    """The new rows of an archive: vectors and what scopes read. ``bbox`` [N, 4] (NaN:
    unknown), ``t_start`` / ``t_end`` [N] int64 microseconds (a pair's interval spans both
    dates; ``T_MIN`` where unknown), ``footprints`` WKB or None per row."""

    vectors: np.ndarray
    bbox: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    footprints: Sequence[bytes | None]


@dataclass(frozen=True)
class Hits:
    """(row, monitor) pairs that passed threshold and scope: indices into the delta's rows
    and the monitor set, with their scores."""

    rows: np.ndarray
    monitors: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def _scores(monitors: MonitorSet, vectors: np.ndarray) -> np.ndarray:
    """[N, M]: cosine for plain monitors; WEICOM with the stored statistics for composed."""
    s = vectors @ monitors.vectors.T
    composed = np.flatnonzero(~np.isnan(monitors.lam))
    if composed.size:
        st = monitors.stats[composed]
        z_img = normalize_with_stats(s[:, composed].T.astype(np.float64), st[:, :3])
        z_txt = normalize_with_stats((vectors @ monitors.text_vectors[composed].T).T.astype(np.float64),
                                     st[:, 3:])
        lam = monitors.lam[composed][:, None]
        s[:, composed] = (lam * z_txt + (1.0 - lam) * z_img).T
    return s


def score_delta(monitors: MonitorSet, delta: DeltaRows, block: int = 512,
                row_block: int = 16_384) -> Hits:
    """Every (row, monitor) of ``delta`` x ``monitors`` whose score reaches the monitor's
    threshold and whose row lies in the monitor's scope. Monitors are taken ``block`` at a
    time, in the Z-order of their boxes' centres (:func:`_spatial_order`), and each block
    scores only the rows that meet the box around its monitors' boxes, ``row_block`` rows
    at a time, one matrix product each (so the score matrix in memory is at most
    ``row_block x block``). Scopes of neighbouring areas make small blocks' boxes: a block
    of local monitors skips the rows far from all of them."""
    rows_out, mons_out, scores_out = [], [], []
    vectors = np.ascontiguousarray(delta.vectors, dtype=np.float32)
    order = _spatial_order(monitors.bbox)
    for start in range(0, len(monitors), block):
        index = order[start:start + block]
        mb = monitors.take(index)
        reach = _reach(mb.bbox, delta.bbox)
        for r0 in range(0, len(reach), row_block):
            rows = reach[r0:r0 + row_block]
            s = _scores(mb, vectors[rows])
            r, m = np.nonzero(s >= mb.threshold[None, :])
            if not r.size:
                continue
            score = s[r, m]
            r = rows[r]
            ok = _in_scope(mb, delta, r, m)
            rows_out.append(r[ok])
            mons_out.append(index[m[ok]])
            scores_out.append(score[ok])
    if not rows_out:
        empty = np.zeros(0, np.int64)
        return Hits(empty, empty, np.zeros(0, np.float32))
    return Hits(np.concatenate(rows_out), np.concatenate(mons_out),
                np.concatenate(scores_out).astype(np.float32))


def _spatial_order(bbox: np.ndarray) -> np.ndarray:
    """Monitor positions in the Z-order (Morton code on a 1024 x 1024 grid over their
    extent) of their boxes' centres, unboxed monitors last: neighbours in this order have
    nearby scopes."""
    boxed = ~np.isnan(bbox).any(axis=1)
    code = np.full(len(bbox), np.iinfo(np.int64).max, np.int64)
    if boxed.any():
        centre = (bbox[boxed, :2] + bbox[boxed, 2:]) / 2
        low, span = centre.min(axis=0), np.maximum(np.ptp(centre, axis=0), 1e-12)
        cells = ((centre - low) / span * 1023).astype(np.int64)
        z = np.zeros(len(cells), np.int64)
        for bit in range(10):  # interleave the bits of the two cell coordinates
            z |= ((cells[:, 0] >> bit) & 1) << (2 * bit) | ((cells[:, 1] >> bit) & 1) << (2 * bit + 1)
        code[boxed] = z
    return np.argsort(code, kind="stable")


def _reach(monitor_boxes: np.ndarray, row_boxes: np.ndarray) -> np.ndarray:
    """The rows a block of monitors can alert on: those meeting the box around all their
    boxes, or every row when one of them has no box or its box crosses the antimeridian."""
    if np.isnan(monitor_boxes).any() or (monitor_boxes[:, 0] > monitor_boxes[:, 2]).any():
        return np.arange(len(row_boxes))
    around = np.array([monitor_boxes[:, 0].min(), monitor_boxes[:, 1].min(),
                       monitor_boxes[:, 2].max(), monitor_boxes[:, 3].max()])
    return np.flatnonzero(boxes_intersect(row_boxes, around))


def _in_scope(mb: MonitorSet, delta: DeltaRows, r: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Whether each hit's row (``r``) lies in its monitor's (``m``) scope."""
    ok = np.ones(r.size, bool)
    boxed = ~np.isnan(mb.bbox[m]).any(axis=1)
    ok[boxed] = boxes_intersect(delta.bbox[r[boxed]], mb.bbox[m[boxed]])
    # time: the row's acquisition interval meets the scope's (a row of unknown time never
    # passes a scope with a time)
    timed = (mb.t_start[m] != T_MIN) | (mb.t_end[m] != T_MAX)
    known = delta.t_start[r] != T_MIN
    ok &= ~timed | (known & (delta.t_start[r] <= mb.t_end[m]) & (delta.t_end[r] >= mb.t_start[m]))
    polys = np.array([mb.polygons[j] is not None for j in m], bool) & ok
    if polys.any():
        ok[polys] = _footprints_meet_polygons([delta.footprints[i] for i in r[polys]],
                                              [mb.polygons[j] for j in m[polys]])
    return ok


def _footprints_meet_polygons(footprints: list[bytes | None], polygons: list[bytes]) -> np.ndarray:
    """Exact polygon scopes, on the few hits whose boxes already met (shapely)."""
    import shapely

    cache: dict[bytes, object] = {}
    out = np.zeros(len(footprints), bool)
    for i, (fp, poly) in enumerate(zip(footprints, polygons)):
        if fp is None:
            continue
        for key in (fp, poly):
            if key not in cache:
                cache[key] = shapely.from_wkb(key)
        out[i] = bool(shapely.intersects(cache[fp], cache[poly]))
    return out


# How far below the top-th best score a calibrated threshold lies: the same row scored
# again by another kernel (the search's product, then score_delta's blocked one) differs in
# its last float32 bits, and the top-th row itself must still alert.
CALIBRATION_SLACK = 1e-5


def calibrate(scores: np.ndarray, top: int) -> tuple[float, np.ndarray]:
    """A monitor's threshold from its own query on the current archive: the score of its
    ``top``-th best in-scope row (all rows when fewer) less :data:`CALIBRATION_SLACK`, and
    those best scores (descending) for :func:`rank_in_calibration`."""
    if top < 1:
        raise ValueError(f"calibrate top must be >= 1, got {top}")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.size == 0:
        raise ValueError("nothing to calibrate on: no archive row lies in the monitor's scope")
    best = -np.sort(-scores)[:top]
    return float(best[-1]) - CALIBRATION_SLACK, best


def rank_in_calibration(best: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The rank (1-based) each ``score`` would have had among the calibration archive's
    best scores (``best`` descending): 1 + how many of them beat it."""
    return 1 + np.searchsorted(-np.asarray(best, dtype=np.float32), -np.asarray(score, np.float32),
                               side="left")
