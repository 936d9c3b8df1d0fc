"""The FastAPI ingress: validates requests, asks the encoders for query vectors, sends
them to every search shard and merges the shards' top-k (it holds no vectors; the served
version of each archive is swapped by a poller once every shard holds it), and serves
the page, thumbnails and GeoJSON. Text searches are batched end to end: one encoder call
(one forward) for the batch's texts, then one fan-out of the batch to the shards."""

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

from rsir.config import RecipeConfig, from_dict
from rsir.serve.archives import Poller, Version, VersionIndex
from rsir.serve.batching import Batcher
from rsir.serve.config import ServeConfig
from rsir.serve.media import GEOJSON, STATIC, Thumbnails, feature_collection, to_png
from rsir.serve.monitors import alerts_feature_collection, monitor_json, parse_monitor, scope_json
from rsir.serve.requests import ApiError, SearchRequest, parse_embed, parse_search
from rsir.serve.search import Query, merge_hits, rerank_scores

log = logging.getLogger(__name__)

api = FastAPI(
    title="rsir",
    description="Remote-sensing retrieval: text, image, bitemporal pair and composed queries.",
    version="1",
)


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=err.body())


@serve.deployment
@serve.ingress(api)
class Ingress:
    """Validates requests, asks the encoders for query vectors, fans them out to the
    search shards (``shards``: their handles, shard i holding block i of every archive)."""

    def __init__(self, cfg: dict[str, Any], recipe: dict[str, Any], image_encoder: Any,
                 text_encoder: Any, *shards: Any) -> None:
        self.cfg: ServeConfig = from_dict(ServeConfig, cfg, "serve config")
        recipe_cfg = from_dict(RecipeConfig, recipe, "recipe")
        self.bands = list(recipe_cfg.data.bands)
        self.default_lambda = recipe_cfg.eval.weicom_lambda
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        key = self.cfg.api_key or (os.environ.get(self.cfg.api_key_env)
                                   if self.cfg.api_key_env else None)
        self.static_key = key or None
        self.api_key = self.static_key
        self.roots = {t: r for t, r in dataclasses.asdict(self.cfg.archives).items() if r}
        self.shards = list(shards)
        self.index = VersionIndex(self.roots)
        self.text_top_k = Batcher(self._text_batch, self.cfg.ingress.max_batch_size)
        self.top_k = Batcher(self._top_k_batch, self.cfg.ingress.max_batch_size)
        self.monitors = None
        self._scoring = threading.Lock()
        if self.cfg.monitors.store:
            from rsir.monitor.store import MonitorStore

            self.monitors = MonitorStore(self.cfg.monitors.store)
        self._poll_once()
        shard_roots = [r for r in (self.cfg.shards.images, self.cfg.shards.pairs) if r]
        self.thumbs = Thumbnails(shard_roots) if shard_roots else None
        self._poller = Poller(self._poll_once, self.cfg.poll_interval_s, "archive-poller")
        self._deliverer = (Poller(self._deliver_once, self.cfg.monitors.deliver_interval_s, "webhooks")
                           if self.monitors is not None else None)

    @property
    def archives(self) -> dict[str, Version]:
        return self.index.serving

    @property
    def swaps(self) -> int:
        return self.index.swaps

    # -- archives ---------------------------------------------------------------------

    def _poll_once(self) -> None:
        if self.cfg.api_key_file:
            try:
                key = Path(self.cfg.api_key_file).read_text(encoding="utf-8").strip()
            except OSError:
                key = ""
            self.api_key = key or self.static_key
        self.index.poll_once()
        if self.monitors is not None and self._scoring.acquire(blocking=False):
            # the versions that landed since the last scoring: their new rows against the
            # monitors, off the poller (a big delta takes a while)
            threading.Thread(target=self._score_new_versions, name="monitor-scoring", daemon=True).start()

    def _score_new_versions(self) -> None:
        from rsir.monitor.job import score_version
        from rsir.retrieval.archive import current_version

        try:
            for target, root in self.roots.items():
                if target not in ("images", "pairs"):
                    continue
                # the published version (scoring reads the archive itself, not the shards,
                # so it need not wait for a search to swap the shards to it)
                version = current_version(root)
                last = self.monitors.last_scored(target)
                if last == version:
                    continue
                if last is None:  # monitors watch what lands after the endpoint started watching
                    self.monitors.mark_scored(target, version, 0, 0, 0.0)
                    continue
                score_version(self.monitors, target, root, version, last,
                              use_ray=self.cfg.monitors.score_on_ray, num_cpus=self.cfg.monitors.score_cpus)
        except Exception:  # noqa: BLE001 - logged; the next poll retries the version
            log.exception("scoring the monitors failed")
        finally:
            self._scoring.release()

    def _deliver_once(self) -> None:
        from rsir.monitor.webhooks import deliver_due

        deliver_due(self.monitors)

    def __del__(self) -> None:
        for name in ("_poller", "_deliverer"):
            poller = getattr(self, name, None)
            if poller is not None:
                poller.stop()

    # -- helpers ----------------------------------------------------------------------

    def _auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.query_params.get("api_key") or ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "x-api-key", "missing or wrong API key")

    async def _json(self, request: Request) -> Any:
        limit = self.cfg.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, "body", f"larger than {limit} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, "body", f"larger than {limit} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise ApiError(400, "body", f"malformed JSON ({str(err)[:120]})") from None

    async def _visual(self, req: SearchRequest) -> np.ndarray:
        bands = req.bands or self.bands
        item = {"image": req.image.data, "bands": bands,
                "image_t2": req.image_t2.data if req.image_t2 else None}
        vec = await self.image_encoder.embed.remote(item)
        if vec is None:
            raise ApiError(422, "image", "could not be preprocessed for the model")
        return np.asarray(vec, dtype=np.float32)

    async def _text(self, text: str) -> np.ndarray:
        return np.asarray(await self.text_encoder.embed.remote(text), dtype=np.float32)

    def _thumb_url(self, id_: str, date: int = 1) -> str | None:
        if self.thumbs is None:
            return None
        return f"/v1/thumbnails/{id_}" + ("?date=2" if date == 2 else "")

    def _describe(self, target: str, hit: dict[str, Any], score: float,
                  archives: dict[str, Version]) -> dict[str, Any]:
        id_ = hit["id"]
        item: dict[str, Any] = {"id": id_, "score": float(score), **hit}
        if target == "captions":
            item["thumbnail"] = self._thumb_url(str(hit.get("owner", id_)))
        else:
            caps = archives["captions"].owner_texts.get(id_, []) if "captions" in archives else []
            item["captions"] = caps[:5]
            item["thumbnail"] = self._thumb_url(id_)
            if target == "pairs":
                item["thumbnail_t2"] = self._thumb_url(id_, 2)
        return item

    # -- the shards -------------------------------------------------------------------

    async def _ask(self, shard: int, queries: list[Query]) -> dict[str, Any] | None:
        async def call() -> dict[str, Any]:
            return await self.shards[shard].search.remote(queries)

        try:
            return await asyncio.wait_for(call(), self.cfg.search.timeout_s)
        except Exception as err:  # noqa: BLE001 - a dead or slow shard is reported, not fatal
            log.warning("search shard %d did not answer: %s", shard, repr(err)[:300])
            return None

    async def _fan_out(self, queries: list[Query]) -> tuple[list[list[Any]], list[int]]:
        """Every shard's answers to a batch: per query, the answers of the shards that
        answered; and the shards that did not."""
        answers = await asyncio.gather(*(self._ask(i, queries) for i in range(len(self.shards))))
        self.index.ready([a["held"] if a is not None else None for a in answers])
        missing = [i for i, a in enumerate(answers) if a is None]
        if len(missing) == len(self.shards):
            raise ApiError(503, "shards", f"no search shard answered (shards {missing}); "
                           "they are being restarted, retry shortly")
        errors = [a["error"] for a in answers if a is not None and "error" in a]
        if errors:  # the archive's index cannot answer this op (PieceVectors.missing)
            raise ApiError(409, "target", errors[0])
        return [[a["results"][j] for a in answers if a is not None]
                for j in range(len(queries))], missing

    async def _top_k_batch(self, items: list[Query]) -> list[tuple[list[Any], list[int]]]:
        per_query, missing = await self._fan_out(items)
        return [(answers, missing) for answers in per_query]

    async def _text_batch(self, items: list[tuple[Query, str, int]]) -> list[Any]:
        """Text searches end to end: one encoder call for all the texts, one fan-out of the
        batch to the shards (one matrix product per archive version and filter in each).
        An item whose archive has another dimension than the model's gets no answers."""
        qs = await self.text_encoder.embed_many.remote([text for _, text, _ in items])
        qs = np.asarray(qs, dtype=np.float32)
        fits = [i for i, (_, _, dim) in enumerate(items) if dim == qs.shape[1]]
        found: list[Any] = [None] * len(items)
        if fits:
            scored = await self._top_k_batch([dataclasses.replace(items[i][0], q=qs[i])
                                              for i in fits])
            for i, result in zip(fits, scored):
                found[i] = result
        return list(zip(qs, found))

    async def _search(self, body: Any) -> dict[str, Any]:
        archives = self.archives  # one snapshot for the whole request
        req = parse_search(body, self.cfg.limits, self.cfg.default_k, self.bands, set(archives),
                           self.default_lambda)
        v = archives[req.target]
        n = v.rows
        if n == 0:
            raise ApiError(404, "target", f"the {req.target!r} archive is empty")
        k = min(req.k, n)
        base = Query(op="top_k", target=req.target, version=v.version, filter=req.filter)

        def dim_error(q: np.ndarray) -> ApiError:
            return ApiError(409, "target", f"archive dim {v.dim} != model dim {q.shape[0]}; "
                            "the archive was embedded by another model")

        if req.kind == "composed":
            qi, qt = await asyncio.gather(self._visual(req), self._text(req.text))
            if n < 2:
                raise ApiError(422, "target", "composed scoring needs at least 2 archive items")
            if qi.shape[0] != v.dim:
                raise dim_error(qi)
            # WEICOM standardises over the whole archive: the shards' sums first.
            (parts,), missing = await self._fan_out([dataclasses.replace(
                base, op="stats", qi=qi, qt=qt)])
            stats = np.sum(parts, axis=0)
            (answers,), missing2 = await self._fan_out([dataclasses.replace(
                base, op="composed", k=k, qi=qi, qt=qt, lam=req.lam, stats=stats)])
            missing = sorted(set(missing) | set(missing2))
            scores, hits, _ = merge_hits(answers, k)
        else:
            n_cand = min(max(k, self.cfg.rerank.candidates) if req.rerank else k, n)
            query = dataclasses.replace(base, k=n_cand, with_vectors=req.rerank)
            if req.kind == "text":
                q, found = await self.text_top_k((query, req.text, v.dim))
            else:
                q = await self._visual(req)
                found = None if q.shape[0] != v.dim else await self.top_k(
                    dataclasses.replace(query, q=q))
            if found is None:
                raise dim_error(q)
            answers, missing = found
            scores, hits, cand = merge_hits(answers, n_cand)
            if req.rerank and hits:
                pool = {"text": "captions", "image": "images", "image_pair": "pairs"}[req.kind]
                (sims,), missing_pool = await self._fan_out([Query(
                    op="pool_sims", target=pool, version=archives[pool].version, cand=cand)])
                missing = sorted(set(missing) | set(missing_pool))
                mr = await asyncio.to_thread(rerank_scores, self.cfg.rerank, req.kind, q, cand,
                                             np.vstack(sims))
                order = np.argsort(-mr, kind="stable")
                scores, hits = [float(mr[j]) for j in order], [hits[j] for j in order]
            scores, hits = scores[:k], hits[:k]
        results = [self._describe(req.target, h, s, archives) for h, s in zip(hits, scores)]
        return {"kind": req.kind, "target": req.target, "version": v.version,
                "k": req.k, "ids": [r["id"] for r in results],
                "scores": [r["score"] for r in results], "results": results,
                "shards": len(self.shards), "missing_shards": missing}

    def batch_counts(self) -> dict[str, tuple[int, int]]:
        """(batches, items) so far of the ingress batchers (for bench/serve.py)."""
        return {name: (b.batches, b.items) for name, b in
                (("text_top_k", self.text_top_k), ("top_k", self.top_k))}

    async def _guard(self, request: Request, coro_fn) -> Response:
        try:
            self._auth(request)
            out = await coro_fn()
            if "results" in out and GEOJSON in request.headers.get("accept", ""):
                return JSONResponse(feature_collection(out), media_type=GEOJSON)
            return JSONResponse(out)
        except ApiError as err:
            return _error(err)

    # -- routes -----------------------------------------------------------------------

    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "archives": {t: a.version for t, a in self.archives.items()}}

    @api.get("/v1/archives")
    async def list_archives(self, request: Request) -> Response:
        async def run() -> dict[str, Any]:
            pending = self.index.pending
            return {"archives": {t: {"version": a.version, "count": a.rows,
                                     "dim": a.dim if a.rows else 0, "root": self.roots[t],
                                     "model": a.manifest.get("model"),
                                     "pending": pending[t].version if t in pending else None}
                                 for t, a in self.archives.items()},
                    "shards": len(self.shards),
                    "swaps": self.swaps, "auth": self.api_key is not None,
                    "weicom_lambda": self.default_lambda,
                    "thumbnails": self.thumbs is not None, "tile_url": self.cfg.tile_url}
        return await self._guard(request, run)

    @api.post("/v1/search")
    async def search(self, request: Request) -> Response:
        """JSON results; with ``Accept: application/geo+json``, a GeoJSON FeatureCollection
        (a feature per result: its footprint, and id, score, rank, dates, class)."""
        async def run() -> dict[str, Any]:
            return await self._search(await self._json(request))
        return await self._guard(request, run)

    @api.post("/v1/search/upload")
    async def search_upload(self, request: Request) -> Response:
        """Multipart form: fields kind, text, lambda, target, k, rerank, bands (comma
        separated), filter (a JSON object); files image, image_t2."""
        async def run() -> dict[str, Any]:
            length = request.headers.get("content-length")
            limit = self.cfg.limits.max_body_bytes
            if length is not None and length.isdigit() and int(length) > limit:
                raise ApiError(413, "body", f"larger than {limit} bytes")
            try:
                form = await request.form()
            except Exception as err:  # noqa: BLE001 - malformed multipart is the client's input
                raise ApiError(400, "body", f"malformed multipart form ({str(err)[:120]})") from None
            body: dict[str, Any] = {}
            for name, value in form.multi_items():
                if hasattr(value, "read"):
                    data = await value.read()
                    if len(data) > limit:
                        raise ApiError(413, name, f"larger than {limit} bytes")
                    body[name] = data
                else:
                    body[name] = value
            for name, conv in (("k", int), ("lambda", float)):
                if name in body:
                    try:
                        body[name] = conv(body[name])
                    except ValueError:
                        raise ApiError(422, name, f"not a number: {body[name]!r}") from None
            if isinstance(body.get("filter"), str):
                try:
                    body["filter"] = json.loads(body["filter"])
                except ValueError:
                    raise ApiError(422, "filter", "not a JSON object") from None
            if "rerank" in body:
                body["rerank"] = str(body["rerank"]).lower() in ("1", "true", "on", "yes")
            if isinstance(body.get("bands"), str):
                body["bands"] = [b.strip() for b in body["bands"].split(",") if b.strip()]
            return await self._search(body)
        return await self._guard(request, run)

    @api.post("/v1/embed")
    async def embed(self, request: Request) -> Response:
        async def run() -> dict[str, Any]:
            req = parse_embed(await self._json(request), self.cfg.limits, self.bands)
            vec = await (self._text(req.text) if req.kind == "text" else self._visual(req))
            return {"kind": req.kind, "dim": int(vec.shape[0]), "embedding": vec.tolist()}
        return await self._guard(request, run)

    @api.get("/v1/thumbnails/{item_id}")
    async def thumbnail(self, item_id: str, request: Request) -> Response:
        try:
            self._auth(request)
            date = 2 if request.query_params.get("date") == "2" else 1
            if self.thumbs is None:
                raise ApiError(404, "item_id", "this server has no shards configured")
            data = await asyncio.to_thread(self.thumbs.get, item_id, date)
            if not data:
                raise ApiError(404, "item_id", f"no image for id {item_id!r}")
            png, media = await asyncio.to_thread(to_png, data)
            return Response(png, media_type=media,
                            headers={"cache-control": "public, max-age=3600"})
        except ApiError as err:
            return _error(err)

    # -- monitors ---------------------------------------------------------------------

    def _store(self):
        if self.monitors is None:
            raise ApiError(404, "monitors", "this endpoint keeps no monitors (serve config monitors.store)")
        return self.monitors

    async def _create_monitor(self, body: Any) -> dict[str, Any]:
        """Validate, embed the query, calibrate it on the current archive when asked, store."""
        store = self._store()
        archives = self.archives
        mreq = parse_monitor(body, self.cfg.limits, self.bands, set(archives), self.default_lambda)
        req, v = mreq.query, archives[mreq.target]
        if not v.rows:
            raise ApiError(404, "target", f"the {mreq.target!r} archive is empty")
        qt = await self._text(req.text) if req.text is not None else None
        qi = await self._visual(req) if req.image is not None else None
        vector = qi if qi is not None else qt
        if vector.shape[0] != v.dim:
            raise ApiError(409, "target", f"archive dim {v.dim} != model dim {vector.shape[0]}")
        base = Query(op="top_k", target=mreq.target, version=v.version, filter=mreq.scope)
        stats = None
        if req.kind == "composed":
            (parts,), _ = await self._fan_out([dataclasses.replace(base, op="stats", qi=qi, qt=qt)])
            stats = np.sum(parts, axis=0)  # [2, 1, 3]: image, text
        threshold, calibration = mreq.threshold, None
        if mreq.calibrate_top is not None:
            from rsir.retrieval.monitors import calibrate

            scores = await self._scope_scores(base, mreq, qi, qt, req.lam, stats)
            try:
                threshold, calibration = calibrate(scores, mreq.calibrate_top)
            except ValueError as err:
                raise ApiError(422, "scope", str(err)) from None
        try:
            m = store.create(
                name=mreq.name, target=mreq.target, definition=mreq.definition, vector=vector,
                text_vector=qt if req.kind == "composed" else None,
                lam=req.lam if req.kind == "composed" else None,
                stats=None if stats is None else stats.reshape(-1).tolist(),
                threshold=threshold, calibration=calibration, scope=scope_json(mreq),
                archive_version=v.version, webhook=mreq.webhook, paused=mreq.paused)
        except KeyError as err:
            raise ApiError(409, "name", str(err).strip("'\"")) from None
        return monitor_json(m)

    async def _scope_scores(self, base: Query, mreq: Any, qi: Any, qt: Any, lam: float,
                            stats: Any) -> np.ndarray:
        """The query's best ``calibrate.top`` scores among the archive rows in its scope
        (a polygon scope: the box's rows, then the polygon on their footprints)."""
        top = mreq.calibrate_top
        k = min(top * (4 if mreq.polygon_wkb is not None else 1), self.archives[mreq.target].rows)
        if mreq.query.kind == "composed":
            q = dataclasses.replace(base, op="composed", k=k, qi=qi, qt=qt, lam=lam, stats=stats)
        else:
            q = dataclasses.replace(base, k=k, q=qi if qi is not None else qt)
        (answers,), missing = await self._fan_out([q])
        if missing:
            raise ApiError(503, "shards", f"shards {missing} did not answer; calibrate again shortly")
        scores, hits, _ = merge_hits(answers, k)
        if mreq.polygon_wkb is not None:
            import shapely
            from shapely.geometry import shape

            poly = shapely.from_wkb(mreq.polygon_wkb)
            scores = [s for s, h in zip(scores, hits) if h.get("footprint") and poly.intersects(shape(h["footprint"]))]
        return np.asarray(scores[:top], dtype=np.float32)

    @api.post("/v1/monitors")
    async def create_monitor(self, request: Request) -> Response:
        """A standing query: ``name``, ``query`` (any search query), ``target``, ``scope``
        (bbox or GeoJSON polygon, datetime), ``threshold`` or ``calibrate: {top: N}``,
        optional ``webhook`` and ``paused``. 201 with the stored monitor."""
        async def run() -> dict[str, Any]:
            return await self._create_monitor(await self._json(request))
        response = await self._guard(request, run)
        if response.status_code == 200:
            response.status_code = 201
        return response

    @api.get("/v1/monitors")
    async def list_monitors(self, request: Request) -> Response:
        async def run() -> dict[str, Any]:
            return {"monitors": [monitor_json(m) for m in self._store().list()]}
        return await self._guard(request, run)

    def _monitor(self, name: str) -> Any:
        try:
            return self._store().get(name)
        except KeyError:
            raise ApiError(404, "name", f"no monitor {name!r}") from None

    @api.get("/v1/monitors/{name}")
    async def get_monitor(self, name: str, request: Request) -> Response:
        async def run() -> dict[str, Any]:
            m = self._monitor(name)
            out = monitor_json(m, self.monitors.delivery_status(name))
            out["latest_alerts"] = self.monitors.alerts(name, limit=10)
            for a in out["latest_alerts"]:
                a.pop("footprint", None)
            return out
        return await self._guard(request, run)

    @api.patch("/v1/monitors/{name}")
    async def update_monitor(self, name: str, request: Request) -> Response:
        """``{"paused": true|false}``."""
        async def run() -> dict[str, Any]:
            body = await self._json(request)
            if not isinstance(body, dict) or set(body) != {"paused"} or not isinstance(body["paused"], bool):
                raise ApiError(422, "paused", "the body is {\"paused\": true|false}")
            self._monitor(name)
            return monitor_json(self.monitors.set_paused(name, body["paused"]))
        return await self._guard(request, run)

    @api.delete("/v1/monitors/{name}")
    async def delete_monitor(self, name: str, request: Request) -> Response:
        async def run() -> dict[str, Any]:
            self._monitor(name)
            self.monitors.delete(name)
            return {"deleted": name}
        return await self._guard(request, run)

    @api.get("/v1/alerts")
    async def list_alerts(self, request: Request) -> Response:
        """Alerts, newest first: ``monitor``, ``since`` / ``until`` (RFC 3339 or epoch
        seconds), ``limit``; ``Accept: application/geo+json`` (or ``format=geojson``) for
        a GeoJSON feed."""
        async def run() -> dict[str, Any]:
            store, qp = self._store(), request.query_params
            if qp.get("monitor") is not None:
                self._monitor(qp["monitor"])
            bounds = {k: _instant(qp[k], k) for k in ("since", "until") if qp.get(k)}
            limit = qp.get("limit", "1000")
            if not limit.isdigit() or not 1 <= int(limit) <= 10000:
                raise ApiError(422, "limit", "an integer in [1, 10000]")
            return {"alerts": store.alerts(qp.get("monitor"), limit=int(limit), **bounds)}
        try:
            self._auth(request)
            out = await run()
        except ApiError as err:
            return _error(err)
        if GEOJSON in request.headers.get("accept", "") or request.query_params.get("format") == "geojson":
            return JSONResponse(alerts_feature_collection(out["alerts"]), media_type=GEOJSON)
        for a in out["alerts"]:
            a.pop("footprint", None)
        return JSONResponse(out)


def _instant(value: str, field: str) -> float:
    """Epoch seconds from an RFC 3339 date-time or a number."""
    from rsir.retrieval.filters import FilterError, parse_datetime

    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_datetime(value, field) / 1e6
    except FilterError as err:
        raise ApiError(422, field, err.message) from None
