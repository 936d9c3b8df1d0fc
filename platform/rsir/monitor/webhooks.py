"""Posting alerts to monitors' webhooks: retries with exponential backoff, never in the
scoring path. Scoring only queues a delivery row (:meth:`MonitorStore.add_alerts`); a
deliverer (a thread of the endpoint) calls :func:`deliver_due` now and then. A receiver
that fails is retried after 1, 2, 4, ... s and given up on after the last; every attempt's
error is kept and shown with the monitor."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from rsir.monitor.store import MonitorStore

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # the waits after failures 1..7; then give up

Post = Callable[[str, dict[str, Any]], None]  # raises on failure


def post_json(url: str, payload: dict[str, Any], timeout_s: float = 5.0) -> None:
    """POST ``payload`` as JSON; a non-2xx answer or no answer raises."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # raises HTTPError on 4xx/5xx
        if not 200 <= resp.status < 300:
            raise urllib.error.HTTPError(url, resp.status, "not 2xx", resp.headers, None)


def alert_payload(row: dict[str, Any]) -> dict[str, Any]:
    """What a receiver gets: the monitor's name and the alert."""
    keys = ("id", "archive", "row_id", "version", "score", "rank", "acquired", "acquired_t2", "created")
    alert = {k: row[k] for k in keys}
    alert["bbox"] = None if row.get("bbox") is None else json.loads(row["bbox"])
    return {"monitor": row["monitor"], "alert": alert}


def deliver_due(store: MonitorStore, post: Post = post_json, now: float | None = None,
                backoff_s: tuple[float, ...] = BACKOFF_S) -> dict[str, int]:
    """Attempt every delivery that is due; returns how many succeeded, failed (to retry)
    and were given up."""
    now = time.time() if now is None else now
    counts = {"delivered": 0, "retry": 0, "given_up": 0}
    for row in store.due_deliveries(now):
        try:
            post(row["url"], alert_payload(row))
        except Exception as err:  # any failure of the receiver is its failure, recorded
            attempt = row["attempts"]  # attempts before this one
            if attempt < len(backoff_s):
                store.record_attempt(row["alert_id"], False, f"{type(err).__name__}: {err}",
                                     now + backoff_s[attempt])
                counts["retry"] += 1
            else:
                store.record_attempt(row["alert_id"], False, f"{type(err).__name__}: {err}", None)
                counts["given_up"] += 1
            log.warning("webhook %s for alert %d: %s", row["url"], row["alert_id"], err)
        else:
            store.record_attempt(row["alert_id"], True, None, None)
            counts["delivered"] += 1
    return counts
