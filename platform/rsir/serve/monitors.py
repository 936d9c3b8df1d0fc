"""Monitors on the endpoint: validating a monitor definition, and its JSON / GeoJSON.

A definition is the JSON of ``POST /v1/monitors`` (and one entry of ``rsir monitor
apply``'s YAML)::

    {"name": "new-roads-north",
     "query": {"kind": "text", "text": "a new road crosses the fields"},   # any search query
     "target": "pairs",
     "scope": {"bbox": [w, s, e, n] | "polygon": GeoJSON geometry, "datetime": "2021-01-01T00:00:00Z/.."},
     "threshold": 0.32 | "calibrate": {"top": 50},
     "webhook": "https://...", "paused": false}

The query is validated as a search request (``rsir.serve.requests.parse_search``), so a
monitor takes every query the endpoint takes: text in any language, image, image pair,
composed image + text with its λ. Every error names its field (``scope.bbox``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from rsir.retrieval.filters import FilterError, SearchFilter, parse_filter
from rsir.serve.config import LimitsConfig
from rsir.serve.requests import ApiError, SearchRequest, check_object, parse_search

MONITOR_FIELDS = {"name", "query", "target", "scope", "threshold", "calibrate", "webhook", "paused"}
SCOPE_FIELDS = {"bbox", "polygon", "datetime"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_CALIBRATE_TOP = 1000


@dataclass
class MonitorRequest:
    name: str
    target: str
    query: SearchRequest
    scope: SearchFilter | None  # bbox (a polygon's bounds) and datetime
    polygon_wkb: bytes | None
    threshold: float | None
    calibrate_top: int | None
    webhook: str | None
    paused: bool
    definition: dict[str, Any]  # as given, images left out (they can be large)


def _prefixed(err: ApiError, prefix: str) -> ApiError:
    return ApiError(err.status, f"{prefix}.{err.field}" if err.field else prefix, err.message)


def parse_monitor(body: Any, limits: LimitsConfig, wanted_bands: list[str], available: set[str],
                  default_lambda: float) -> MonitorRequest:
    check_object(body, MONITOR_FIELDS, "a monitor")
    name = body.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ApiError(422, "name", "required: 1-128 letters, digits, '_', '.', '-' (a letter or digit first)")
    target = body.get("target")
    if target not in ("images", "pairs"):
        raise ApiError(422, "target", f"required: 'images' or 'pairs', got {target!r}")
    query = body.get("query")
    if not isinstance(query, dict):
        raise ApiError(422, "query", "required: a search query object (kind, text, image, ...)")
    if "target" in query or "k" in query or "filter" in query or "rerank" in query:
        bad = next(f for f in ("target", "k", "filter", "rerank") if f in query)
        raise ApiError(422, f"query.{bad}", "set on the monitor (target, scope), not in its query")
    try:
        req = parse_search({**query, "target": target}, limits, 1, wanted_bands, available, default_lambda)
    except ApiError as err:
        raise _prefixed(err, "query") from None
    scope, polygon = _scope(body.get("scope"))
    threshold, top = body.get("threshold"), body.get("calibrate")
    if (threshold is None) == (top is None):
        raise ApiError(422, "threshold", "give exactly one of threshold (a score) or calibrate ({top: N})")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise ApiError(422, "threshold", "must be a finite number (a score of the query's kind)")
    calibrate_top = None
    if top is not None:
        n = top.get("top") if isinstance(top, dict) and set(top) == {"top"} else None
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CALIBRATE_TOP:
            raise ApiError(422, "calibrate.top", f"must be {{top: N}}, N an integer in [1, {MAX_CALIBRATE_TOP}]")
        calibrate_top = n
    webhook = body.get("webhook")
    if webhook is not None:
        parts = urlparse(webhook) if isinstance(webhook, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(422, "webhook", "must be an http(s) URL")
    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        raise ApiError(422, "paused", "must be a boolean")
    definition = {k: v for k, v in body.items() if k != "query"}
    definition["query"] = {k: ("<image>" if k in ("image", "image_t2") else v) for k, v in query.items()}
    return MonitorRequest(name=name, target=target, query=req, scope=scope, polygon_wkb=polygon,
                          threshold=None if threshold is None else float(threshold),
                          calibrate_top=calibrate_top, webhook=webhook, paused=paused,
                          definition=definition)


def _scope(value: Any) -> tuple[SearchFilter | None, bytes | None]:
    if value is None:
        return None, None
    check_object(value, SCOPE_FIELDS, "scope (bbox or polygon, and datetime)", prefix="scope.")
    if value.get("bbox") is not None and value.get("polygon") is not None:
        raise ApiError(422, "scope.polygon", "give bbox or polygon, not both")
    polygon = None
    fields = {k: value[k] for k in ("bbox", "datetime") if value.get(k) is not None}
    if value.get("polygon") is not None:
        import shapely
        from shapely.geometry import shape

        try:
            geom = shape(value["polygon"])
        except Exception as err:  # noqa: BLE001 - whatever shapely makes of the client's JSON
            raise ApiError(422, "scope.polygon", f"not a GeoJSON geometry ({err})") from None
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty or not geom.is_valid:
            raise ApiError(422, "scope.polygon", "must be a valid GeoJSON Polygon or MultiPolygon (lon, lat)")
        fields["bbox"] = list(geom.bounds)
        polygon = shapely.to_wkb(geom)
    try:
        flt = parse_filter(fields)
    except FilterError as err:
        raise ApiError(422, "scope." + err.field.removeprefix("filter."), err.message) from None
    return (None if flt.empty else flt), polygon


def scope_json(req: MonitorRequest) -> dict[str, Any]:
    """The scope as the store keeps it (and :func:`rsir.monitor.job.monitor_set_of` reads)."""
    f = req.scope
    return {"bbox": None if f is None or f.bbox is None else list(f.bbox),
            "polygon": None if req.polygon_wkb is None else req.polygon_wkb.hex(),
            "start": None if f is None else f.start, "end": None if f is None else f.end}


def monitor_json(m: Any, deliveries: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored monitor as the API shows it."""
    out = {"name": m.name, "target": m.target, "threshold": m.threshold, "paused": m.paused,
           "webhook": m.webhook, "archive_version": m.archive_version, "created": m.created,
           "definition": m.definition}
    if m.calibration is not None:
        out["calibrated_top"] = int(m.calibration.size)
    if deliveries is not None:
        out["webhook_deliveries"] = deliveries
    return out


def alerts_feature_collection(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Alerts as a GeoJSON feed: a feature per alert, its row's footprint as the geometry."""
    from rsir.serve.search import geometry_json

    features = []
    for a in alerts:
        props = {k: v for k, v in a.items() if k not in ("footprint", "bbox")}
        features.append({"type": "Feature", "id": a["id"], "geometry": geometry_json(a.get("footprint")),
                         "bbox": a.get("bbox"), "properties": props})
    return {"type": "FeatureCollection", "features": features}
