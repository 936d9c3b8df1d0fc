"""Monitors: scoring new rows against standing queries (brute force), calibration, the
SQL store (persistence, idempotence), and scoring a published version's new rows.

The store tests take their database from the ``db_url`` fixture: a SQLite file here;
tests/test_monitor_store_postgres.py collects them again on a PostgreSQL server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import shapely
from scipy.special import ndtr

from rsir.monitor.job import score_version
from rsir.monitor.store import MonitorStore
from rsir.retrieval.archive import publish_archive
from rsir.retrieval.filters import boxes_intersect
from rsir.retrieval.monitors import (
    CALIBRATION_SLACK,
    T_MAX,
    T_MIN,
    DeltaRows,
    _reach,
    _spatial_order,
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


def test_blocks_of_nearby_scopes_score_only_rows_they_reach_and_miss_nothing() -> None:
    """Many small scopes over the globe, some crossing the antimeridian, rows likewise:
    blocks of monitors in the Z-order of their scopes score only the rows meeting the box
    around the block, and the hits are still every in-scope pair above threshold."""
    rng = np.random.default_rng(3)
    n, m, d = 2000, 120, 8
    vectors, queries = _unit(rng.standard_normal((n, d))), _unit(rng.standard_normal((m, d)))
    lon, lat = rng.uniform(-180, 179, n), rng.uniform(-60, 60, n)
    rows = np.stack([lon, lat, lon + 1.5, lat + 1.5], 1)
    rows[rows[:, 2] > 180, 2] -= 360  # rows across the antimeridian
    rows[:10] = np.nan
    delta = DeltaRows(vectors, rows, np.full(n, T_MIN), np.full(n, T_MIN), [None] * n)
    w, s = rng.uniform(-180, 175, m), rng.uniform(-60, 50, m)
    boxes = np.stack([w, s, w + 10, s + 10], 1)
    boxes[boxes[:, 2] > 180, 2] -= 360
    boxes[:4] = [170, -20, -170, 20]  # across the antimeridian
    boxes[4:8] = np.nan  # the whole world
    monitors = monitor_set(np.arange(m), queries, np.full(m, 0.3), bbox=boxes)
    hits = score_delta(monitors, delta, block=5, row_block=97)
    scores = vectors @ queries.T
    expected = {(i, j) for j in range(m) for i in range(n)
                if scores[i, j] >= 0.3 and (np.isnan(boxes[j]).any()
                                           or bool(boxes_intersect(rows[i], boxes[j])))}
    assert set(zip(hits.rows.tolist(), hits.monitors.tolist())) == expected and len(expected) > 200
    # a block of neighbouring local scopes reaches a small share of the rows
    order = _spatial_order(boxes)
    local = order[np.isin(order, np.arange(8, m))]
    reached = [len(_reach(boxes[local[b:b + 5]], rows)) for b in range(0, len(local), 5)]
    assert np.mean(reached) < 0.2 * n


def test_calibration_threshold_and_ranks_by_hand() -> None:
    threshold, best = calibrate(np.array([0.1, 0.9, 0.5, 0.7, 0.3]), top=3)
    # the 3rd best, less the slack that keeps that row alerting when scored by another kernel
    assert threshold == pytest.approx(0.5 - CALIBRATION_SLACK, abs=1e-9) and np.float32(0.5) >= threshold
    assert best.tolist() == pytest.approx([0.9, 0.7, 0.5])
    # 0.95 would have been 1st, 0.8 2nd, 0.7 (ties the 2nd) 2nd, 0.5 3rd
    assert rank_in_calibration(best, np.array([0.95, 0.8, 0.7, 0.5])).tolist() == [1, 2, 2, 3]
    with pytest.raises(ValueError, match="scope"):
        calibrate(np.array([]), top=3)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """The store tests' database: a SQLite file, by path (its folder made by the store)."""
    return str(tmp_path / "state" / "monitors.db")


def _alert(monitor_id: int, row: str) -> dict:
    return dict(monitor_id=monitor_id, archive="pairs", row_id=row, version="v2", score=0.5,
                rank=None, bbox=None, footprint=None, acquired=None, acquired_t2=None)


def test_store_persists_and_inserts_each_alert_once(db_url: str) -> None:
    store = MonitorStore(db_url)
    m = store.create(name="new-roads", target="pairs", definition={"kind": "text", "text": "a road"},
                     vector=np.arange(4), threshold=0.3, scope={"bbox": [0, 0, 1, 1]},
                     archive_version="v1", webhook="http://127.0.0.1:9/hook")
    with pytest.raises(KeyError, match="exists"):
        store.create(name="new-roads", target="pairs", definition={}, vector=np.zeros(4),
                     threshold=0.1, scope={}, archive_version="v1")
    first = store.add_alerts([_alert(m.id, "a"), _alert(m.id, "b")])
    second = store.add_alerts([_alert(m.id, "b"), _alert(m.id, "c")])  # b exists
    # the ids returned are the new rows' (PostgreSQL's sequence skips the one b's conflict drew)
    ids = {a["row_id"]: a["id"] for a in store.alerts()}
    assert len(ids) == 3 and first == [ids["a"], ids["b"]] and second == [ids["c"]]
    store.set_paused("new-roads", True)
    reopened = MonitorStore(db_url)  # a restarted endpoint
    again = reopened.get("new-roads")
    assert again.paused and again.vector.tolist() == [0, 1, 2, 3] and again.scope == {"bbox": [0, 0, 1, 1]}
    assert [a["row_id"] for a in reopened.alerts("new-roads")] == ["c", "b", "a"]
    assert reopened.delivery_status("new-roads")["pending"] == 3  # one delivery per new alert
    assert reopened.list(active_only=True) == []
    reopened.delete("new-roads")
    assert reopened.alerts() == [] and reopened.due_deliveries() == []


def test_store_round_trips_monitors_and_deletes_their_alerts(db_url: str) -> None:
    rng = np.random.default_rng(3)
    vector, text = rng.standard_normal((2, 512)).astype(np.float32)
    tiny, big = np.finfo(np.float32).smallest_subnormal, np.finfo(np.float32).max
    vector[:4] = [1 / 3, -0.0, tiny, big]  # a rounded third, a signed zero, a subnormal, the largest
    calibration = np.sort(rng.uniform(0.2, 0.6, 50).astype(np.float32))[::-1]
    stats = [50.0, 2.5, 8.25, 50.0, -1.0, 9.5]
    scope = {"bbox": [-5.0, 42.0, 5.0, 48.0], "start": 1609459200000000}
    store = MonitorStore(db_url)
    roads = store.create(name="roads", target="pairs", definition={"query": {"kind": "composed"}},
                         vector=vector, text_vector=text, lam=0.3, stats=stats, threshold=0.4375,
                         calibration=calibration, scope=scope, archive_version="v1")
    ships = store.create(name="ships", target="images", definition={}, vector=np.ones(512), threshold=0.2,
                         scope={}, archive_version="v1", webhook="http://127.0.0.1:9/hook", paused=True)
    footprint = shapely.to_wkb(shapely.box(1, 43, 1.2, 43.2))
    hit = dict(_alert(roads.id, "r1"), score=0.8125, rank=3, bbox=json.dumps([1, 43, 1.2, 43.2]),
               footprint=footprint, acquired="2020-01-01T00:00:00+00:00", acquired_t2="2021-06-01T00:00:00+00:00")
    assert len(store.add_alerts([hit, _alert(ships.id, "s1"), _alert(ships.id, "s2")])) == 3
    store.mark_scored("pairs", "v2", rows=40, n_alerts=3, seconds=0.5)
    store.mark_scored("pairs", "v2", rows=40, n_alerts=0, seconds=0.1)  # again: the first stays
    store.mark_scored("pairs", "v3", rows=10, n_alerts=0, seconds=0.2)

    reopened = MonitorStore(db_url)  # a restarted endpoint
    got = reopened.get("roads")
    assert got.id == roads.id and reopened.get(roads.id).name == "roads"
    # float32 vectors come back bit for bit
    assert got.vector.dtype == np.float32 and got.vector.tobytes() == vector.tobytes()
    assert got.text_vector.tobytes() == text.tobytes() and got.calibration.tobytes() == calibration.tobytes()
    assert (got.lam, got.stats, got.threshold, got.scope) == (0.3, stats, 0.4375, scope)
    assert got.definition == {"query": {"kind": "composed"}} and got.target == "pairs"
    assert got.webhook is None and got.paused is False
    assert [m.name for m in reopened.list()] == ["roads", "ships"]
    assert [m.name for m in reopened.list("images")] == ["ships"]
    assert [m.name for m in reopened.list(active_only=True)] == ["roads"]
    assert not reopened.set_paused("ships", False).paused
    assert [m.name for m in reopened.list(active_only=True)] == ["roads", "ships"]
    (stored,) = reopened.alerts("roads")
    assert {k: stored[k] for k in hit} == dict(hit, bbox=[1, 43, 1.2, 43.2]) and stored["monitor"] == "roads"
    assert reopened.delivery_status("ships")["pending"] == 2  # ships has a webhook, roads none
    assert reopened.scored("pairs") == {"v2", "v3"} and reopened.last_scored("pairs") == "v3"
    assert reopened.scored("images") == set() and reopened.last_scored("images") is None

    reopened.delete("ships")  # its alerts and their deliveries go with it
    assert [a["row_id"] for a in reopened.alerts()] == ["r1"] and reopened.due_deliveries(now=2e9) == []
    assert [m.name for m in reopened.list()] == ["roads"]
    for missing in (lambda: reopened.get("ships"), lambda: reopened.set_paused("ships", True),
                    lambda: reopened.delete("ships")):
        with pytest.raises(KeyError, match="no monitor"):
            missing()


def test_stores_opened_together_on_a_new_database_all_open(db_url: str) -> None:
    """Endpoint replicas and a scoring job starting at once on an empty database: each sees
    no tables, one creates them, and none fails for it."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    together = Barrier(8)

    def open_store(_: int) -> MonitorStore:
        together.wait()
        return MonitorStore(db_url)

    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(open_store, range(8)))
    stores[0].create(name="roads", target="pairs", definition={}, vector=np.ones(4), threshold=0.3,
                     scope={}, archive_version="v1")
    assert [[m.name for m in s.list()] for s in stores] == [["roads"]] * 8


def test_score_version_scores_only_new_rows_once(tmp_path: Path, db_url: str) -> None:
    rng, delta, queries, t0, year = _world(seed=1, n=120, m=6)
    root = tmp_path / "pairs"
    ids = [f"p{i}" for i in range(120)]
    meta = {"bbox": [None if np.isnan(b).any() else b.tolist() for b in delta.bbox],
            "acquired": [datetime(2020, 1, 1, tzinfo=timezone.utc)] * 120,
            "acquired_t2": [datetime(2021, 6, 1, tzinfo=timezone.utc)] * 120}
    old = publish_archive(root, ids[:80], delta.vectors[:80], {"model": "m"},
                          {k: v[:80] for k, v in meta.items()})
    new = publish_archive(root, ids, delta.vectors, {"model": "m"}, meta)
    store = MonitorStore(db_url)
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


def test_webhook_that_fails_twice_is_retried_with_backoff_then_delivered(db_url: str) -> None:
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
        store = MonitorStore(db_url)
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
