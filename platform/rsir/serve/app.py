"""The Ray Serve application: image and text encoders (dynamic batching) behind one
FastAPI ingress that holds the archives, scores queries and hot-swaps archive versions.
Text searches are batched end to end in the ingress: one encoder call (one forward) for
the batch's texts, then one matrix product per archive version.

Import path (k8s RayService contract): ``rsir.serve.app:build_app_from_config`` with
``args: {config: configs/serve.yaml}``. Locally: ``rsir serve --config configs/serve.yaml``.
"""

import asyncio
import dataclasses
import hmac
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

from rsir.config import RecipeConfig, from_dict, load_config, to_dict
from rsir.serve.batching import Batcher
from rsir.serve.config import PROXY_ENV, EncoderConfig, ServeConfig
from rsir.serve.requests import ApiError, SearchRequest, parse_embed, parse_search

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


# ---------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------


class _ForwardThread:
    """Runs an encoder's forwards one at a time on a thread of its own: off the replica's
    event loop (which, with ``proxy: haproxy``, also runs Serve's request handling and
    health checks), and never two at once (the text tower's vector cache is not locked)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    async def __call__(self, fn, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


@serve.deployment
class ImageEncoder:
    """Images or pairs (bytes) -> L2-normalised vectors, batched across requests."""

    def __init__(self, recipe: dict[str, Any], checkpoint: str | None, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.01) -> None:
        from rsir.inference import load_trained
        from rsir.models import input_contract

        self.cfg, self.model = load_trained(recipe, checkpoint)
        # A query image carries no detections: a model field (GaLR's objects) reads as empty.
        self.fields = input_contract(self.cfg).fields
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._forward = _ForwardThread()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, items: list[dict[str, Any]]) -> list[np.ndarray | None]:
        return await self._forward(self._embed, items)

    def _embed(self, items: list[dict[str, Any]]) -> list[np.ndarray | None]:
        from rsir.data.transforms import preprocess_batch
        from rsir.retrieval.embed import embed_visual

        out: list[np.ndarray | None] = [None] * len(items)
        for pair in (False, True):
            idx = [i for i, it in enumerate(items) if (it.get("image_t2") is not None) == pair]
            if not idx:
                continue
            data_cfg = dataclasses.replace(self.cfg.data, task="pair" if pair else "single")
            batch = {"id": np.array([str(i) for i in idx], dtype=object),
                     "image": [items[i]["image"] for i in idx],
                     "image_t2": [items[i].get("image_t2") for i in idx],
                     "bands": [items[i].get("bands") or list(data_cfg.bands) for i in idx],
                     **{f: [items[i].get(f) or [] for i in idx] for f in self.fields}}
            inputs = preprocess_batch(batch, data_cfg, train=False, with_captions=False,
                                      fields=self.fields)
            if len(inputs["id"]):
                vectors = embed_visual(self.model, inputs)
                for row, i in enumerate(inputs["id"]):
                    out[int(i)] = vectors[row]
        return out


@serve.deployment
class TextEncoder:
    """Texts -> L2-normalised vectors, batched across requests."""

    def __init__(self, recipe: dict[str, Any], checkpoint: str | None, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.01) -> None:
        from rsir.inference import load_trained

        self.cfg, self.model = load_trained(recipe, checkpoint)
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._forward = _ForwardThread()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        return list(await self.embed_many(texts))

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """A batch the caller already formed (the ingress's text search): one forward."""
        from rsir.retrieval.embed import embed_texts

        return await self._forward(embed_texts, self.model, texts)


# ---------------------------------------------------------------------------------------
# Archives held by the ingress
# ---------------------------------------------------------------------------------------


# (scores [k], rows [k]) of one query, or None: the archive has another dimension.
Found = tuple[np.ndarray, np.ndarray] | None


@dataclasses.dataclass
class Loaded:
    version: str
    archive: Any  # rsir.retrieval.archive.Archive
    searcher: Any  # ExactSearcher
    owner_texts: dict[str, list[str]]


def _load(target: str, root: str) -> Loaded:
    from rsir.retrieval.archive import load_archive
    from rsir.retrieval.topk import ExactSearcher

    archive = load_archive(root)
    # Arrow hands out read-only memory, which the searcher would copy (51 MB for 100k x
    # 128) on every query; one writable copy per loaded version instead.
    archive.vectors = np.array(archive.vectors, dtype=np.float32)
    owner_texts: dict[str, list[str]] = {}
    if target == "captions":
        for owner, text in zip(archive.metadata.get("owner", []), archive.metadata.get("text", [])):
            owner_texts.setdefault(str(owner), []).append(str(text))
    return Loaded(archive.version, archive, ExactSearcher(archive.vectors), owner_texts)


def _composed_top_k(vectors: np.ndarray, qi: np.ndarray, qt: np.ndarray, lam: float,
                    k: int) -> list[tuple[int, float]]:
    """(row, score) of the k best WEICOM scores of an image + text query."""
    from rsir.retrieval.composed import weicom

    scores = weicom((vectors @ qi)[None], (vectors @ qt)[None], lam)[0]
    rows = np.argsort(-scores, kind="stable")[:k]
    return [(int(r), float(scores[r])) for r in rows]


class Thumbnails:
    """id -> encoded image bytes of the shards (index built lazily, small LRU of row groups)."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = roots
        self._index: dict[str, tuple[str, int, int]] | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def _build(self) -> dict[str, tuple[str, int, int]]:
        import pyarrow.parquet as pq

        from rsir.data.schema import shard_paths

        index: dict[str, tuple[str, int, int]] = {}
        for root in self.roots:
            try:
                paths = shard_paths(root)
            except FileNotFoundError:
                log.warning("thumbnails: no shards under %s", root)
                continue
            for path in paths:
                f = pq.ParquetFile(path)
                for rg in range(f.num_row_groups):
                    ids = f.read_row_group(rg, columns=["id"]).column(0).to_pylist()
                    for off, i in enumerate(ids):
                        index.setdefault(str(i), (str(path), rg, off))
        return index

    def get(self, id_: str, date: int) -> bytes | None:
        import pyarrow.parquet as pq

        with self._lock:
            if self._index is None:
                self._index = self._build()
            loc = self._index.get(id_)
            if loc is None:
                return None
            path, rg, off = loc
            key = (path, rg)
            table = self._cache.get(key)
            if table is None:
                table = pq.ParquetFile(path).read_row_group(rg, columns=["image", "image_t2"])
                self._cache[key] = table
                while len(self._cache) > 8:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
        value = table.column("image_t2" if date == 2 else "image")[off].as_py()
        return value


def _to_png(data: bytes) -> tuple[bytes, str]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return data, "image/jpeg"
    from PIL import Image

    from rsir.data.schema import decode_image

    array = decode_image(data)[:, :, :3].astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    array = ((array - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array if array.shape[2] == 3 else array[:, :, 0]).save(buf, format="PNG")
    return buf.getvalue(), "image/png"


# ---------------------------------------------------------------------------------------
# Ingress
# ---------------------------------------------------------------------------------------

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
    """Validates requests, asks the encoders for query vectors, scores the archives."""

    def __init__(self, cfg: dict[str, Any], recipe: dict[str, Any], image_encoder: Any,
                 text_encoder: Any) -> None:
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
        self.archives: dict[str, Loaded] = {}
        self.text_top_k = Batcher(self._text_batch, self.cfg.ingress.max_batch_size)
        self.top_k = Batcher(self._top_k_batch, self.cfg.ingress.max_batch_size)
        self.swaps = 0
        self._warned: set[tuple[str, str]] = set()
        self._poll_once()
        shard_roots = [r for r in (self.cfg.shards.images, self.cfg.shards.pairs) if r]
        self.thumbs = Thumbnails(shard_roots) if shard_roots else None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="archive-poller", daemon=True)
        self._poller.start()

    # -- archives ---------------------------------------------------------------------

    def _poll_once(self) -> None:
        from rsir.retrieval.archive import current_version

        if self.cfg.api_key_file:
            try:
                key = Path(self.cfg.api_key_file).read_text(encoding="utf-8").strip()
            except OSError:
                key = ""
            self.api_key = key or self.static_key

        for target, root in self.roots.items():
            try:
                version = current_version(root)
                loaded = self.archives.get(target)
                if loaded is not None and loaded.version == version:
                    continue
                new = _load(target, root)
            except Exception as err:  # noqa: BLE001 - keep serving the version we have
                if (target, str(err)) not in self._warned:
                    self._warned.add((target, str(err)))
                    log.warning("archive %s at %s not loaded: %s", target, root, err)
                continue
            # One reference assignment: a request sees the old dict or the new one.
            self.archives = {**self.archives, target: new}
            self.swaps += 1
            log.info("archive %s: now version %s (%d rows)", target, new.version, len(new.archive))

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            self._poll_once()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

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

    def _describe(self, target: str, loaded: Loaded, row: int, score: float,
                  archives: dict[str, Loaded]) -> dict[str, Any]:
        a = loaded.archive
        id_ = str(a.ids[row])
        item: dict[str, Any] = {"id": id_, "score": float(score)}
        if target == "captions":
            meta = {k: a.metadata[k][row] for k in ("text", "lang", "owner") if k in a.metadata}
            item.update(meta)
            owner = str(meta.get("owner", id_))
            item["thumbnail"] = self._thumb_url(owner)
        else:
            caps = archives["captions"].owner_texts.get(id_, []) if "captions" in archives else []
            item["captions"] = caps[:5]
            if "changed" in a.metadata:
                item["changed"] = a.metadata["changed"][row]
            item["thumbnail"] = self._thumb_url(id_)
            if target == "pairs":
                item["thumbnail_t2"] = self._thumb_url(id_, 2)
        return item

    async def _search(self, body: Any) -> dict[str, Any]:
        archives = self.archives  # one snapshot for the whole request
        req = parse_search(body, self.cfg.limits, self.cfg.default_k, self.bands, set(archives),
                           self.default_lambda)
        loaded = archives[req.target]
        vectors = loaded.archive.vectors
        n = len(vectors)
        if n == 0:
            raise ApiError(404, "target", f"the {req.target!r} archive is empty")
        k = min(req.k, n)
        if req.kind == "composed":
            qi, qt = await asyncio.gather(self._visual(req), self._text(req.text))
            if n < 2:
                raise ApiError(422, "target", "composed scoring needs at least 2 archive items")
            # Two passes over the archive: in a thread, off the event loop.
            top = await asyncio.to_thread(_composed_top_k, vectors, qi, qt, req.lam, k)
        else:
            n_cand = min(max(k, self.cfg.rerank.candidates) if req.rerank else k, n)
            if req.kind == "text":
                q, found = await self.text_top_k((loaded, req.text, n_cand))
            else:
                q = await self._visual(req)
                found = await self.top_k((loaded, q, n_cand))
            if found is None:
                raise ApiError(409, "target", f"archive dim {vectors.shape[1]} != model dim "
                               f"{q.shape[0]}; the archive was embedded by another model")
            s, idx = found
            top = [(int(i), float(v)) for i, v in zip(idx, s) if i >= 0]
            if req.rerank:
                pool = {"text": "captions", "image": "images", "image_pair": "pairs"}[req.kind]
                mr = await asyncio.to_thread(self._rerank, req.kind, q, vectors[[i for i, _ in top]],
                                             archives[pool].archive.vectors)
                order = np.argsort(-mr, kind="stable")
                top = [(top[j][0], float(mr[j])) for j in order]
            top = top[:k]
        results = [self._describe(req.target, loaded, r, s, archives) for r, s in top]
        return {"kind": req.kind, "target": req.target, "version": loaded.version,
                "k": req.k, "ids": [r["id"] for r in results],
                "scores": [r["score"] for r in results], "results": results}

    @staticmethod
    def _score(items: list[tuple[Loaded, np.ndarray, int]]) -> list[Found]:
        """Exact top-k of (archive, query, k) items: one matrix product per archive
        version among them; None where the query's dimension is not the archive's."""
        out: list[Found] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (loaded, q, _) in enumerate(items):
            if q.shape[0] == loaded.archive.vectors.shape[1]:
                groups.setdefault(id(loaded), []).append(i)
        for idx in groups.values():
            loaded = items[idx[0]][0]
            kmax = max(items[i][2] for i in idx)
            s, rows = loaded.searcher.search(np.stack([items[i][1] for i in idx]), kmax)
            for j, i in enumerate(idx):
                out[i] = (s[j, : items[i][2]], rows[j, : items[i][2]])
        return out

    async def _top_k_batch(self, items: list[tuple[Loaded, np.ndarray, int]]) -> list[Found]:
        # In a thread, so the event loop keeps accepting requests meanwhile.
        return await asyncio.to_thread(self._score, items)

    async def _text_batch(self, items: list[tuple[Loaded, str, int]]) -> list[tuple[np.ndarray, Found]]:
        """Text searches end to end: one encoder call for all the texts, one matrix
        product per archive version."""
        qs = await self.text_encoder.embed_many.remote([text for _, text, _ in items])
        qs = np.asarray(qs, dtype=np.float32)
        found = await self._top_k_batch([(loaded, q, k) for (loaded, _, k), q in zip(items, qs)])
        return list(zip(qs, found))

    def batch_counts(self) -> dict[str, tuple[int, int]]:
        """(batches, items) so far of the ingress batchers (for bench/serve.py)."""
        return {name: (b.batches, b.items) for name, b in
                (("text_top_k", self.text_top_k), ("top_k", self.top_k))}

    def _rerank(self, kind: str, q: np.ndarray, cand: np.ndarray, pool: np.ndarray) -> np.ndarray:
        from rsir.retrieval.rerank import multivariate_rerank

        rc = self.cfg.rerank
        if kind == "text":  # images are rows: candidates x (query + caption pool)
            sim = cand @ np.vstack([q[None], pool]).T
            kk = max(1, min(rc.candidates, *sim.shape))
            _, t2i = multivariate_rerank(sim, kk, rc.w_c1, rc.w_c2, ties=rc.ties)
            return t2i[:, 0]
        sim = np.vstack([q[None], pool]) @ cand.T  # (query + image pool) x caption candidates
        kk = max(1, min(rc.candidates, *sim.shape))
        i2t, _ = multivariate_rerank(sim, kk, rc.w_c1, rc.w_c2, ties=rc.ties)
        return i2t[0]

    async def _guard(self, request: Request, coro_fn) -> Response:
        try:
            self._auth(request)
            return JSONResponse(await coro_fn())
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
            return {"archives": {t: {"version": a.version, "count": len(a.archive),
                                     "dim": int(a.archive.vectors.shape[1]) if len(a.archive) else 0,
                                     "root": self.roots[t], "model": a.archive.manifest.get("model")}
                                 for t, a in self.archives.items()},
                    "swaps": self.swaps, "auth": self.api_key is not None,
                    "weicom_lambda": self.default_lambda,
                    "thumbnails": self.thumbs is not None}
        return await self._guard(request, run)

    @api.post("/v1/search")
    async def search(self, request: Request) -> Response:
        async def run() -> dict[str, Any]:
            return await self._search(await self._json(request))
        return await self._guard(request, run)

    @api.post("/v1/search/upload")
    async def search_upload(self, request: Request) -> Response:
        """Multipart form: fields kind, text, lambda, target, k, rerank, bands (comma
        separated); files image, image_t2."""
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
            png, media = await asyncio.to_thread(_to_png, data)
            return Response(png, media_type=media,
                            headers={"cache-control": "public, max-age=3600"})
        except ApiError as err:
            return _error(err)


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def resolve_paths(cfg: ServeConfig) -> ServeConfig:
    """Absolute paths, so replicas (whatever their working directory) find the files."""
    return dataclasses.replace(
        cfg, checkpoint=_abs(cfg.checkpoint), recipe=_abs(cfg.recipe),
        archives=dataclasses.replace(cfg.archives, **{
            k: _abs(v) for k, v in dataclasses.asdict(cfg.archives).items()}),
        shards=dataclasses.replace(cfg.shards, **{
            k: _abs(v) for k, v in dataclasses.asdict(cfg.shards).items()}),
        api_key_file=_abs(cfg.api_key_file),
    )


def load_recipe(cfg: ServeConfig) -> dict[str, Any]:
    """The model recipe: ``cfg.recipe`` when given, else the one saved in the checkpoint.
    Raises ``ValueError`` when the recipe needs a checkpoint that is not given
    (:func:`rsir.inference.resolve_checkpoint`)."""
    from rsir.inference import resolve_checkpoint

    if cfg.recipe:
        recipe = to_dict(load_config(cfg.recipe))
        resolve_checkpoint(from_dict(RecipeConfig, recipe, cfg.recipe), cfg.checkpoint)
        return recipe
    if not cfg.checkpoint:
        raise ValueError("serve config: neither 'checkpoint' nor 'recipe' is set; a "
                         "training-free recipe (pretrained towers) needs 'recipe'")
    import torch

    state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{cfg.checkpoint}: no 'config' in the checkpoint; set 'recipe'")
    return state["config"]


def _encoder_options(enc: EncoderConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": enc.num_cpus, "num_gpus": enc.num_gpus},
        "max_ongoing_requests": enc.max_ongoing_requests,
    }
    if enc.autoscaling:
        opts["autoscaling_config"] = dict(enc.autoscaling)
    else:
        opts["num_replicas"] = enc.num_replicas
    return opts


def build_app(cfg: ServeConfig):
    """The bound Serve application (ingress + two encoders) of a serving config."""
    cfg = resolve_paths(cfg)
    recipe = load_recipe(cfg)
    image = ImageEncoder.options(**_encoder_options(cfg.image_encoder)).bind(
        recipe, cfg.checkpoint, cfg.image_encoder.max_batch_size,
        cfg.image_encoder.batch_wait_timeout_s)
    text = TextEncoder.options(**_encoder_options(cfg.text_encoder)).bind(
        recipe, cfg.checkpoint, cfg.text_encoder.max_batch_size,
        cfg.text_encoder.batch_wait_timeout_s)
    ingress = Ingress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
    )
    return ingress.bind(to_dict(cfg), recipe, image, text)


def build_app_from_config(args: dict[str, Any]):
    """Serve application builder: ``args = {"config": "configs/serve.yaml"}`` (plus
    optional ``overrides``: a list of ``key.path=value``)."""
    cfg = load_config(args["config"], list(args.get("overrides", [])), cls=ServeConfig)
    return build_app(cfg)


def cli_main(args: Any) -> int:
    """``rsir serve --config configs/serve.yaml [key=value ...]``: run until interrupted."""
    from rsir.preflight import start_job
    from rsir.serve.preflight import check_serve

    cfg = load_config(args.config, list(getattr(args, "overrides", []) or []), cls=ServeConfig)
    local = start_job(check_serve(cfg), getattr(args, "address", None), 600.0,
                      env_vars=PROXY_ENV[cfg.proxy])
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name="rsir", route_prefix="/", blocking=False)
    front = cfg.proxy if local else "the cluster's Serve front"
    print(f"rsir serving on http://{cfg.host}:{cfg.port}/ behind {front} (docs: /docs)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        # A local Ray (Serve and HAProxy with it) ends with this process, without the
        # ingress replicas' 30 s drain, which is for load balancers in front of a cluster;
        # on a cluster only this application is taken down.
        if not local:
            serve.delete("rsir")
    return 0
