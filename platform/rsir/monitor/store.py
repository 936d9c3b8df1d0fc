"""Where monitors and their alerts live: a SQL database through SQLAlchemy Core.

By default one SQLite file under the server's state directory; a PostgreSQL URL
(``postgresql+psycopg://...``) works the same on a cluster (the statements are portable;
the idempotent insert uses each dialect's ``ON CONFLICT DO NOTHING``). A monitor keeps its
query vectors (float32 bytes) with the archive version they were embedded against, so a
restarted endpoint scores with what it had. Alerts are unique per (monitor, archive,
row id): scoring the same rows twice inserts nothing the second time. Webhook
deliveries are rows too, so a failing receiver never blocks scoring and its failures can
be read back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

metadata = sa.MetaData()

monitors = sa.Table(
    "monitors", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("definition", sa.Text, nullable=False),  # the request that made it, as JSON
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32 query (image) vector
    sa.Column("text_vector", sa.LargeBinary),  # composed: the text's vector
    sa.Column("lam", sa.Float),  # composed: WEICOM's λ
    sa.Column("stats", sa.Text),  # composed: similarity_stats of image and text over the archive
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("calibration", sa.LargeBinary),  # float32 best scores, descending (ranks)
    sa.Column("scope", sa.Text, nullable=False),  # JSON: bbox, polygon (WKB hex), start, end
    sa.Column("webhook", sa.Text),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("archive_version", sa.String(128), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("monitor_id", sa.Integer, sa.ForeignKey("monitors.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("archive", sa.String(16), nullable=False),
    sa.Column("row_id", sa.String(512), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("rank", sa.Integer),  # the rank it would have had at calibration
    sa.Column("bbox", sa.Text),  # JSON [w, s, e, n]
    sa.Column("footprint", sa.LargeBinary),  # WKB
    sa.Column("acquired", sa.String(40)),
    sa.Column("acquired_t2", sa.String(40)),
    sa.Column("created", sa.Float, nullable=False, index=True),
    sa.UniqueConstraint("monitor_id", "archive", "row_id", name="one_alert_per_row"),
)

scored = sa.Table(  # which archive versions' new rows have been scored
    "scored_versions", metadata,
    sa.Column("archive", sa.String(16), primary_key=True),
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("alerts", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

deliveries = sa.Table(
    "webhook_deliveries", metadata,
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt", sa.Float, nullable=False),
    sa.Column("delivered", sa.Float),  # when it succeeded
    sa.Column("failed", sa.Boolean, nullable=False, default=False),  # gave up
    sa.Column("last_error", sa.Text),
)


_SCHEMA_LOCK = 0x7273_6972_6D6F_6E  # "rsirmon": the advisory lock that serialises creating the tables


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    # foreign keys (ON DELETE CASCADE) are off by default in SQLite; WAL lets the endpoint
    # read while a scoring writes, and commits without a full fsync each
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def store_url(path_or_url: str | Path) -> str:
    """A database URL: a URL as given, a path as a SQLite file (its folder created)."""
    text = str(path_or_url)
    if "://" in text:
        return text
    Path(text).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(text).resolve()}"


@dataclass(frozen=True)
class StoredMonitor:
    id: int
    name: str
    target: str
    definition: dict[str, Any]
    vector: np.ndarray
    text_vector: np.ndarray | None
    lam: float | None
    stats: list[float] | None
    threshold: float
    calibration: np.ndarray | None
    scope: dict[str, Any]
    webhook: str | None
    paused: bool
    archive_version: str
    created: float


def _vec(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32).copy()


def _monitor(row: Any) -> StoredMonitor:
    m = row._mapping
    return StoredMonitor(
        id=m["id"], name=m["name"], target=m["target"], definition=json.loads(m["definition"]),
        vector=_vec(m["vector"]), text_vector=_vec(m["text_vector"]), lam=m["lam"],
        stats=None if m["stats"] is None else json.loads(m["stats"]), threshold=m["threshold"],
        calibration=_vec(m["calibration"]), scope=json.loads(m["scope"]), webhook=m["webhook"],
        paused=bool(m["paused"]), archive_version=m["archive_version"], created=m["created"])


class MonitorStore:
    """Monitors, alerts, scored versions and webhook deliveries in one database."""

    def __init__(self, url: str | Path) -> None:
        self.url = store_url(url)
        # pre-ping: a pooled connection that a database restart or failover closed is
        # replaced, not handed to the endpoint's next statement
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        with self.engine.begin() as conn:
            # Endpoint replicas and scoring jobs opening a new database together would each
            # find no tables and create them, and all but one fail: one at a time.
            if dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            elif dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the file's write lock before the check
            metadata.create_all(conn)

    def _insert_ignoring_duplicates(self, table: sa.Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()

    # monitors -----------------------------------------------------------------------

    def create(self, *, name: str, target: str, definition: dict[str, Any], vector: np.ndarray,
               threshold: float, scope: dict[str, Any], archive_version: str,
               text_vector: np.ndarray | None = None, lam: float | None = None,
               stats: Sequence[float] | None = None, calibration: np.ndarray | None = None,
               webhook: str | None = None, paused: bool = False) -> StoredMonitor:
        """A new monitor; raises ``KeyError`` when the name is taken."""
        values = dict(
            name=name, target=target, definition=json.dumps(definition),
            vector=np.asarray(vector, np.float32).tobytes(),
            text_vector=None if text_vector is None else np.asarray(text_vector, np.float32).tobytes(),
            lam=lam, stats=None if stats is None else json.dumps([float(s) for s in stats]),
            threshold=float(threshold),
            calibration=None if calibration is None else np.asarray(calibration, np.float32).tobytes(),
            scope=json.dumps(scope), webhook=webhook, paused=paused,
            archive_version=archive_version, created=time.time())
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(monitors.insert().values(**values)).inserted_primary_key[0]
        except sa.exc.IntegrityError:
            raise KeyError(f"a monitor named {name!r} exists") from None
        return self.get(new_id)

    def get(self, key: int | str) -> StoredMonitor:
        col = monitors.c.id if isinstance(key, int) else monitors.c.name
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(monitors).where(col == key)).first()
        if row is None:
            raise KeyError(f"no monitor {key!r}")
        return _monitor(row)

    def list(self, target: str | None = None, active_only: bool = False) -> list[StoredMonitor]:
        q = sa.select(monitors).order_by(monitors.c.id)
        if target is not None:
            q = q.where(monitors.c.target == target)
        if active_only:
            q = q.where(monitors.c.paused.is_(False))
        with self.engine.connect() as conn:
            return [_monitor(r) for r in conn.execute(q)]

    def set_paused(self, name: str, paused: bool) -> StoredMonitor:
        with self.engine.begin() as conn:
            n = conn.execute(monitors.update().where(monitors.c.name == name)
                             .values(paused=paused)).rowcount
        if not n:
            raise KeyError(f"no monitor {name!r}")
        return self.get(name)

    def delete(self, name: str) -> None:
        """The monitor and its alerts (and their deliveries)."""
        with self.engine.begin() as conn:
            mid = conn.execute(sa.select(monitors.c.id).where(monitors.c.name == name)).scalar()
            if mid is None:
                raise KeyError(f"no monitor {name!r}")
            ids = sa.select(alerts.c.id).where(alerts.c.monitor_id == mid)
            conn.execute(deliveries.delete().where(deliveries.c.alert_id.in_(ids)))
            conn.execute(alerts.delete().where(alerts.c.monitor_id == mid))
            conn.execute(monitors.delete().where(monitors.c.id == mid))

    # alerts -------------------------------------------------------------------------

    def add_alerts(self, rows: Iterable[dict[str, Any]]) -> list[int]:
        """Insert alerts (dicts of the ``alerts`` columns but id/created); an alert for a
        (monitor, archive, row id) that exists is skipped. Returns the new alerts' ids, and
        queues a webhook delivery for each new alert of a monitor with a webhook."""
        rows = list(rows)
        if not rows:
            return []
        now = time.time()
        insert = self._insert_ignoring_duplicates(alerts).returning(alerts.c.id, alerts.c.monitor_id)
        with self.engine.begin() as conn:
            # RETURNING gives the rows actually inserted: duplicates return nothing
            new = conn.execute(insert, [{**r, "created": now} for r in rows]).all()
            hooks = dict(conn.execute(sa.select(monitors.c.id, monitors.c.webhook)
                                      .where(monitors.c.webhook.is_not(None))).all())
            queued = [{"alert_id": a, "url": hooks[m], "attempts": 0, "next_attempt": now, "failed": False}
                      for a, m in new if m in hooks]
            if queued:
                conn.execute(deliveries.insert(), queued)
        return sorted(a for a, _ in new)

    def alerts(self, monitor: str | None = None, since: float | None = None,
               until: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Alerts, newest first, with their monitor's name."""
        q = (sa.select(alerts, monitors.c.name.label("monitor"))
             .join(monitors, monitors.c.id == alerts.c.monitor_id)
             .order_by(alerts.c.id.desc()).limit(limit))
        if monitor is not None:
            q = q.where(monitors.c.name == monitor)
        if since is not None:
            q = q.where(alerts.c.created >= since)
        if until is not None:
            q = q.where(alerts.c.created <= until)
        with self.engine.connect() as conn:
            out = []
            for r in conn.execute(q):
                d = dict(r._mapping)
                d["bbox"] = None if d["bbox"] is None else json.loads(d["bbox"])
                out.append(d)
            return out

    # scored versions ----------------------------------------------------------------

    def scored(self, archive: str) -> set[str]:
        with self.engine.connect() as conn:
            return {v for (v,) in conn.execute(sa.select(scored.c.version).where(scored.c.archive == archive))}

    def last_scored(self, archive: str) -> str | None:
        """The version of ``archive`` scored last (the baseline of the next one's new rows)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(scored.c.version).where(scored.c.archive == archive)
                                .order_by(scored.c.created.desc()).limit(1)).scalar()

    def mark_scored(self, archive: str, version: str, rows: int, n_alerts: int, seconds: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignoring_duplicates(scored),
                         [dict(archive=archive, version=version, rows=rows, alerts=n_alerts,
                               seconds=seconds, created=time.time())])

    # webhook deliveries -------------------------------------------------------------

    def due_deliveries(self, now: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries to attempt now: with their alert and monitor name."""
        now = time.time() if now is None else now
        q = (sa.select(deliveries, alerts, monitors.c.name.label("monitor"))
             .join(alerts, alerts.c.id == deliveries.c.alert_id)
             .join(monitors, monitors.c.id == alerts.c.monitor_id)
             .where(deliveries.c.delivered.is_(None), deliveries.c.failed.is_(False),
                    deliveries.c.next_attempt <= now)
             .order_by(deliveries.c.next_attempt).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def record_attempt(self, alert_id: int, ok: bool, error: str | None, next_attempt: float | None) -> None:
        """One delivery attempt; ``next_attempt`` None after a failure gives up."""
        values: dict[str, Any] = {"attempts": deliveries.c.attempts + 1, "last_error": error}
        if ok:
            values["delivered"] = time.time()
        elif next_attempt is None:
            values["failed"] = True
        else:
            values["next_attempt"] = next_attempt
        with self.engine.begin() as conn:
            conn.execute(deliveries.update().where(deliveries.c.alert_id == alert_id).values(**values))

    def delivery_status(self, name: str) -> dict[str, Any]:
        """Counts of a monitor's webhook deliveries, and its last error."""
        q = (sa.select(deliveries).join(alerts, alerts.c.id == deliveries.c.alert_id)
             .join(monitors, monitors.c.id == alerts.c.monitor_id).where(monitors.c.name == name))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        errors = [r for r in rows if r["last_error"]]
        return {"delivered": sum(r["delivered"] is not None for r in rows),
                "pending": sum(r["delivered"] is None and not r["failed"] for r in rows),
                "failed": sum(bool(r["failed"]) for r in rows),
                "attempts": sum(r["attempts"] for r in rows),
                "last_error": max(errors, key=lambda r: r["next_attempt"])["last_error"] if errors else None}
