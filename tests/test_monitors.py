"""Monitors: scoring new rows against standing queries (brute force), calibration, the
SQL store (persistence, idempotence), and scoring a published version's new rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import shapely
from scipy.special import ndtr

from rsir.monitor.job import score_version
from rsir.monitor.store import MonitorStore
from rsir.retrieval.archive import publish_archive
from rsir.retrieval.filters import boxes_intersect
from rsir.retrieval.monitors import (
    T_MAX,
    T_MIN,
    DeltaRows,
    calibrate,
    monitor_set,
    rank_in_calibration,
    score_delta,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_boxes_intersect_by_hand() -> None:
    a = np.array([[0, 0, 1, 1]] * 5, float)
    b = np.array([[1, 1, 2, 2],  # touching corner: intersects
                  [1.1, 0, 2, 1],  # apart in lon
                  [0, 1.1, 1, 2],  # apart in lat
                  [0.5, 0.5, 0.6, 0.6],  # inside
                  [np.nan, 0, 1, 1]], float)  # unknown
    assert boxes_intersect(a, b).tolist() == [True, False, False, True, False]
    # A box crossing the antimeridian (170 -> -170) meets one at 175 and one at -175,
    # not one at 0.
    cross = np.array([170, -10, -170, 10], float)
    others = np.array([[174, 0, 176, 1], [-176, 0, -174, 1], [-1, 0, 1, 1]], float)
    assert boxes_intersect(cross, others).tolist() == [True, True, False]
    assert boxes_intersect(others, cross).tolist() == [True, True, False]


def _world(seed: int = 0, n: int = 300, m: int = 40, d: int = 16):
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((n, d)))
    queries = _unit(rng.standard_normal((m, d)))
    lon, lat = rng.uniform(-10, 10, n), rng.uniform(40, 50, n)
    bbox = np.stack([lon, lat, lon + 0.2, lat + 0.2], axis=1)
    bbox[:5] = np.nan  # rows without geography
    t0 = _us(datetime(2019, 1, 1, tzinfo=timezone.utc))
    year = _us(datetime(2020, 1, 1, tzinfo=timezone.utc)) - t0
    t_start = t0 + rng.integers(0, 4 * year, n)
    t_end = t_start + year  # a pair a year apart
    t_start[5:8] = T_MIN  # rows without dates
    footprints = [None if np.isnan(b).any() else shapely.to_wkb(shapely.box(*b)) for b in bbox]
    delta = DeltaRows(vectors, bbox, t_start, t_end, footprints)
    return rng, delta, queries, t0, year


def test_score_delta_equals_brute_force_with_scopes_and_composed_monitors() -> None:
    rng, delta, queries, t0, year = _world()
    m, n = len(queries), len(delta.vectors)
    mon_box = np.full((m, 4), np.nan)
    mon_box[::2] = [-5, 42, 5, 48]  # half the monitors look inside a box
    t_lo = np.full(m, T_MIN)
    t_hi = np.full(m, T_MAX)
    t_lo[::3] = t0 + 2 * year  # a third from 2021 on
    lam = np.full(m, np.nan)
    lam[1::4] = 0.3  # a quarter are composed (WEICOM)
    text_q = _unit(rng.standard_normal(queries.shape))
    # a composed monitor's archive: 50 image and 50 text similarities it was made on
    archive_img, archive_txt = rng.normal(0.05, 0.2, (m, 50)), rng.normal(-0.02, 0.25, (m, 50))

    def sums(x):
        return np.stack([np.full(len(x), x.shape[1]), x.sum(1), (x * x).sum(1)], 1)

    stats = np.hstack([sums(archive_img), sums(archive_txt)])
    poly = shapely.Polygon([(-3, 43), (3, 43), (0, 47)])
    polygons = [shapely.to_wkb(poly) if j % 5 == 0 else None for j in range(m)]
    bounds = np.array(poly.bounds)
    for j in range(0, m, 5):  # a polygon scope's box is the polygon's bounds
        mon_box[j] = bounds
    threshold = rng.uniform(0.1, 0.4, m)
    monitors = monitor_set(np.arange(m) + 100, queries, threshold, lam=lam, text_vectors=text_q,
                           stats=stats, bbox=mon_box, t_start=t_lo, t_end=t_hi, polygons=polygons)
    hits = score_delta(monitors, delta, block=7, row_block=64)  # several blocks of each

    expected = set()
    for j in range(m):
        for i in range(n):
            cos_i = float(delta.vectors[i] @ queries[j])
            if np.isnan(lam[j]):
                score = cos_i
            else:
                mu_i, sd_i = archive_img[j].mean(), archive_img[j].std(ddof=1)
                mu_t, sd_t = archive_txt[j].mean(), archive_txt[j].std(ddof=1)
                score = lam[j] * ndtr((float(delta.vectors[i] @ text_q[j]) - mu_t) / sd_t) \
                    + (1 - lam[j]) * ndtr((cos_i - mu_i) / sd_i)
            if score < threshold[j] - 1e-6:
                continue
            if not np.isnan(mon_box[j]).any():
                if np.isnan(delta.bbox[i]).any() or not shapely.intersects(
                        shapely.box(*delta.bbox[i]), shapely.box(*mon_box[j])):
                    continue
            if polygons[j] is not None and not shapely.intersects(shapely.box(*delta.bbox[i]), poly):
                continue
            if t_lo[j] != T_MIN or t_hi[j] != T_MAX:
                if delta.t_start[i] == T_MIN or delta.t_end[i] < t_lo[j] or delta.t_start[i] > t_hi[j]:
                    continue
            expected.add((i, j))
    got = set(zip(hits.rows.tolist(), hits.monitors.tolist()))
    assert got == expected and 20 < len(expected) < n * m // 3  # a real selection
    assert {j for _, j in got if polygons[j] is not None}  # polygon scopes are exercised


def test_calibration_threshold_and_ranks_by_hand() -> None:
    threshold, best = calibrate(np.array([0.1, 0.9, 0.5, 0.7, 0.3]), top=3)
    assert threshold == pytest.approx(0.5) and best.tolist() == pytest.approx([0.9, 0.7, 0.5])
    # 0.95 would have been 1st, 0.8 2nd, 0.7 (ties the 2nd) 2nd, 0.5 3rd
    assert rank_in_calibration(best, np.array([0.95, 0.8, 0.7, 0.5])).tolist() == [1, 2, 2, 3]
    with pytest.raises(ValueError, match="scope"):
        calibrate(np.array([]), top=3)


def _alert(monitor_id: int, row: str) -> dict:
    return dict(monitor_id=monitor_id, archive="pairs", row_id=row, version="v2", score=0.5,
                rank=None, bbox=None, footprint=None, acquired=None, acquired_t2=None)


def test_store_persists_and_inserts_each_alert_once(tmp_path) -> None:
    path = tmp_path / "state" / "monitors.db"
    store = MonitorStore(path)
    m = store.create(name="new-roads", target="pairs", definition={"kind": "text", "text": "a road"},
                     vector=np.arange(4), threshold=0.3, scope={"bbox": [0, 0, 1, 1]},
                     archive_version="v1", webhook="http://127.0.0.1:9/hook")
    with pytest.raises(KeyError, match="exists"):
        store.create(name="new-roads", target="pairs", definition={}, vector=np.zeros(4),
                     threshold=0.1, scope={}, archive_version="v1")
    assert store.add_alerts([_alert(m.id, "a"), _alert(m.id, "b")]) == [1, 2]
    assert store.add_alerts([_alert(m.id, "b"), _alert(m.id, "c")]) == [3]  # b exists
    store.set_paused("new-roads", True)
    reopened = MonitorStore(path)  # a restarted endpoint
    again = reopened.get("new-roads")
    assert again.paused and again.vector.tolist() == [0, 1, 2, 3] and again.scope == {"bbox": [0, 0, 1, 1]}
    assert [a["row_id"] for a in reopened.alerts("new-roads")] == ["c", "b", "a"]
    assert reopened.delivery_status("new-roads")["pending"] == 3  # one delivery per new alert
    assert reopened.list(active_only=True) == []
    reopened.delete("new-roads")
    assert reopened.alerts() == [] and reopened.due_deliveries() == []


def test_score_version_scores_only_new_rows_once(tmp_path) -> None:
    rng, delta, queries, t0, year = _world(seed=1, n=120, m=6)
    root = tmp_path / "pairs"
    ids = [f"p{i}" for i in range(120)]
    meta = {"bbox": [None if np.isnan(b).any() else b.tolist() for b in delta.bbox],
            "acquired": [datetime(2020, 1, 1, tzinfo=timezone.utc)] * 120,
            "acquired_t2": [datetime(2021, 6, 1, tzinfo=timezone.utc)] * 120}
    old = publish_archive(root, ids[:80], delta.vectors[:80], {"model": "m"},
                          {k: v[:80] for k, v in meta.items()})
    new = publish_archive(root, ids, delta.vectors, {"model": "m"}, meta)
    store = MonitorStore(tmp_path / "monitors.db")
    for j, q in enumerate(queries):
        store.create(name=f"m{j}", target="pairs", definition={}, vector=q, threshold=0.2,
                     scope={"start": _us(datetime(2021, 1, 1, tzinfo=timezone.utc))}, archive_version=old)
    first = score_version(store, "pairs", str(root), new, old, use_ray=False)
    assert first.new_rows == 40 and first.new_alerts == first.hits > 0
    expected = {(f"m{j}", ids[i]) for j in range(6) for i in range(80, 120)
                if delta.vectors[i] @ queries[j] >= 0.2}
    assert {(a["monitor"], a["row_id"]) for a in store.alerts()} == expected
    second = score_version(store, "pairs", str(root), new, old, use_ray=False)
    assert second.hits == first.hits and second.new_alerts == 0  # no duplicates
    assert store.scored("pairs") == {new}
    # an append (a delta version on `new`): only its rows are read and scored
    extra = _unit(rng.standard_normal((10, queries.shape[1])))
    extra[:3] = queries[:3]  # three rows that match monitors m0..m2 exactly
    delta = publish_archive(root, [f"q{i}" for i in range(10)], extra, {"model": "m"},
                            {k: v[:10] for k, v in meta.items()}, base=new)
    third = score_version(store, "pairs", str(root), delta, new, use_ray=False)
    assert third.new_rows == 10
    assert {(a["monitor"], a["row_id"]) for a in store.alerts() if a["version"] == delta} == {
        (f"m{j}", f"q{i}") for j in range(6) for i in range(10) if extra[i] @ queries[j] >= 0.2}
    assert {("m0", "q0"), ("m1", "q1"), ("m2", "q2")} <= {(a["monitor"], a["row_id"]) for a in store.alerts()}


def test_webhook_that_fails_twice_is_retried_with_backoff_then_delivered(tmp_path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from rsir.monitor.webhooks import deliver_due

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            self.send_response(503 if len(received) <= 2 else 204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = MonitorStore(tmp_path / "m.db")
        m = store.create(name="hook", target="pairs", definition={}, vector=np.ones(4), threshold=0.1,
                         scope={}, archive_version="v1",
                         webhook=f"http://127.0.0.1:{server.server_port}/alerts")
        store.add_alerts([_alert(m.id, "row-7")])
        import time

        t = time.time() + 1.0  # a clock the test steps through the backoff
        assert deliver_due(store, now=t) == {"delivered": 0, "retry": 1, "given_up": 0}
        status = store.delivery_status("hook")
        assert status["pending"] == 1 and "503" in status["last_error"]  # the failure is visible
        assert deliver_due(store, now=t + 0.5) == {"delivered": 0, "retry": 0, "given_up": 0}  # not due
        assert deliver_due(store, now=t + 1) == {"delivered": 0, "retry": 1, "given_up": 0}
        assert deliver_due(store, now=t + 1 + 2) == {"delivered": 1, "retry": 0, "given_up": 0}
        assert len(received) == 3 and received[-1]["monitor"] == "hook"
        assert received[-1]["alert"]["row_id"] == "row-7"
        assert store.delivery_status("hook") | {"last_error": None} == {
            "delivered": 1, "pending": 0, "failed": 0, "attempts": 3, "last_error": None}
    finally:
        server.shutdown()
