"""A tiny serving setup for tests and the benchmark: an untrained tiny model checkpoint,
demo-world shards, archives embedded with that model (no Ray needed), and the
environment of a Serve instance that shares the host with others."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from rsir.serve.config import PROXY_ENV


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_serve_env(proxy: str) -> dict[str, str]:
    """``PROXY_ENV[proxy]`` for a Serve instance of a test session or a benchmark: HAProxy's
    stats and metrics ports and Serve's fallback proxy port on free ports instead of the
    fixed 8404, 9101 and 8500 (so it can run beside ``rsir serve`` or another one), and
    ingress replicas that drain 1 s when stopped instead of 30 (the wait is for load
    balancers outside Serve, which these have none of)."""
    stats, metrics, fallback = free_ports(3)
    return {**PROXY_ENV[proxy], "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def tiny_checkpoint(path: str | Path, seed: int = 0) -> dict[str, Any]:
    """Save an untrained tiny dual encoder as an rsir checkpoint; returns its recipe dict."""
    import torch

    from rsir.config import DataConfig, RecipeConfig, to_dict
    from rsir.models import create_model

    torch.manual_seed(seed)
    cfg = RecipeConfig(name="serve-test", data=DataConfig(augment=False))
    model = create_model(cfg.model, cfg.loss)
    recipe = to_dict(cfg)
    torch.save({"model": model.state_dict(), "config": recipe}, path)
    return recipe


def make_fixture(out: str | Path, n_scenes: int = 16, n_pairs: int = 8, seed: int = 0) -> dict[str, Any]:
    """Checkpoint, shards and the three archives under ``out``; returns paths and rows."""
    import dataclasses

    from rsir.config import RecipeConfig, from_dict
    from rsir.data.demo_world import pair_row, scene_row
    from rsir.data.schema import write_shards
    from rsir.data.transforms import explode_captions, preprocess_batch
    from rsir.inference import ROW_METADATA, load_trained
    from rsir.retrieval.archive import publish_archive
    from rsir.retrieval.embed import embed_texts, embed_visual

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "model.pt"
    recipe = tiny_checkpoint(ckpt, seed)
    cfg, model = load_trained(recipe, str(ckpt))
    scenes = [with_geography(scene_row(i, seed, "test"), i, 10.0) for i in range(n_scenes)]
    pairs = [with_geography(pair_row(i, seed, "test"), i, 20.0) for i in range(n_pairs)]
    write_shards(scenes, out / "shards" / "single")
    write_shards(pairs, out / "shards" / "pairs")

    def columns(rows):
        return {k: [r[k] for r in rows] for k in ("id", "image", "image_t2", "bands")}

    single = preprocess_batch(columns(scenes), cfg.data, train=False, with_captions=False)
    pair_cfg = dataclasses.replace(cfg.data, task="pair")
    pair = preprocess_batch(columns(pairs), pair_cfg, train=False, with_captions=False)
    texts, langs, owner = explode_captions([r["captions"] for r in scenes], "en")
    manifest = {"model": cfg.model.name, "checkpoint": str(ckpt)}
    roots = {k: out / "archives" / k for k in ("images", "pairs", "captions")}

    def metadata(rows: list[dict[str, Any]], ids: list[str]) -> dict[str, list[Any]]:
        by_id = {r["id"]: r for r in rows}
        return {name: [by_id[i][name] for i in ids] for name in ("changed", *ROW_METADATA)}

    publish_archive(roots["images"], list(single["id"]), embed_visual(model, single),
                    {**manifest, "kind": "image"}, metadata(scenes, list(single["id"])))
    publish_archive(roots["pairs"], list(pair["id"]), embed_visual(model, pair),
                    {**manifest, "kind": "pair"}, metadata(pairs, list(pair["id"])))
    publish_archive(roots["captions"], [f"{scenes[o]['id']}#{i}" for i, o in enumerate(owner)],
                    embed_texts(model, texts), {**manifest, "kind": "caption"},
                    {"text": texts, "lang": langs, "owner": [scenes[o]["id"] for o in owner],
                     **metadata(scenes, [scenes[o]["id"] for o in owner])})
    from_dict(RecipeConfig, recipe)  # the recipe round-trips
    return {"checkpoint": str(ckpt), "recipe": recipe, "roots": {k: str(v) for k, v in roots.items()},
            "shards": {"images": str(out / "shards" / "single"), "pairs": str(out / "shards" / "pairs")},
            "scenes": scenes, "pairs": pairs, "texts": texts, "model": model, "cfg": cfg,
            "vectors": {"images": embed_visual(model, single)}}


def with_geography(row: dict[str, Any], index: int, lon0: float, lat0: float = 45.0,
                   cell: float = 0.1) -> dict[str, Any]:
    """A demo-world row laid on a grid of ``cell``-degree tiles, 4 a line, from (lon0,
    lat0), acquired a month after the one before from 2019-01-01 (a pair's second date 400
    days after its first), sensors alternating."""
    from shapely import to_wkb
    from shapely.geometry import box

    lon, lat = lon0 + cell * (index % 4), lat0 + cell * (index // 4)
    when = datetime(2019, 1, 1, tzinfo=timezone.utc) + timedelta(days=30 * index)
    return {**row, "bbox": [lon, lat, lon + cell, lat + cell],
            "footprint": to_wkb(box(lon, lat, lon + cell, lat + cell, ccw=True)),
            "crs": "EPSG:4326", "gsd_m": 10.0,
            "sensor": ("sentinel-2a", "landsat-8")[index % 2], "acquired": when,
            "acquired_t2": when + timedelta(days=400) if row.get("image_t2") else None}


def serve_config_dict(fx: dict[str, Any], port: int, **extra: Any) -> dict[str, Any]:
    """A ServeConfig dict for a fixture, sized for a 2-CPU machine; the archives in 2
    search shards."""
    cfg = {
        "checkpoint": fx["checkpoint"],
        "archives": dict(fx["roots"]),
        "shards": dict(fx["shards"]),
        "host": "127.0.0.1", "port": port, "api_key": None, "api_key_env": None,
        "api_key_file": str(Path(fx["checkpoint"]).parent / "api_key"),
        "poll_interval_s": 0.2,
        "image_encoder": {"num_cpus": 0.25, "max_batch_size": 16, "batch_wait_timeout_s": 0.005},
        "text_encoder": {"num_cpus": 0.25, "max_batch_size": 16, "batch_wait_timeout_s": 0.005},
        "ingress": {"num_cpus": 0.1},
        "limits": {"max_body_bytes": 2_000_000, "max_image_side": 512, "max_k": 50,
                   "max_text_chars": 300},
        "rerank": {"candidates": 5},
        "search": {"shards": 2, "num_cpus": 0.1, "timeout_s": 5.0},
    }
    cfg.update(extra)
    return cfg


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
