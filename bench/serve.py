"""Serve benchmark: text -> image search over a 100k-vector archive on loopback, with and
without dynamic batching of the text encoder (max_batch_size 1 vs N), in one run.

    python bench/serve.py [--vectors 100000] [--requests 400] [--concurrency 16] [--batch 32]

Prints p50 / p99 latency and req/s of each setting and the ratio batched / unbatched.
The model is the untrained tiny dual encoder (the cost of a query does not depend on
the weights); the archive holds random unit vectors.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, texts: list[str], n: int, concurrency: int) -> dict[str, float]:
    import requests

    lat: list[float] = []
    errors = [0]
    counter = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        s = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            r = s.post(url + "/v1/search", json={"kind": "text", "text": texts[i % len(texts)],
                                                 "target": "images", "k": 10}, timeout=60)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                errors[0] += r.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    a = np.asarray(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "rps": n / wall, "errors": errors[0], "n": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args(argv)

    import ray
    import requests
    from ray import serve

    from rsir.config import from_dict
    from rsir.data.demo_world import scene_row
    from rsir.retrieval.archive import publish_archive
    from rsir.serve.app import build_app
    from rsir.serve.config import ServeConfig
    from rsir.serve.fixture import random_unit, tiny_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="rsir-bench-serve-"))
    tiny_checkpoint(tmp / "model.pt")
    publish_archive(tmp / "images", [f"r-{i:06d}" for i in range(args.vectors)],
                    random_unit(args.vectors, 128), {"model": "dual_encoder", "kind": "image"})
    texts = [c["text"] for i in range(50) for c in scene_row(i, 0, "test")["captions"]
             if c["lang"] == "en"]
    if not ray.is_initialized():
        # address="local": its own instance, never a cluster someone else is using
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
                 log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    results = {}
    try:
        for batch in (1, args.batch):
            enc = {"num_cpus": 0.5, "max_batch_size": batch, "batch_wait_timeout_s": 0.005}
            cfg = from_dict(ServeConfig, {
                "checkpoint": str(tmp / "model.pt"), "archives": {"images": str(tmp / "images")},
                "api_key_env": None, "text_encoder": enc, "image_encoder": {"num_cpus": 0.1},
                "ingress": {"num_cpus": 0.25, "max_batch_size": batch}})
            serve.run(build_app(cfg), name="bench", route_prefix="/")
            while True:
                h = requests.get(url + "/v1/archives", timeout=10).json()
                if h.get("archives", {}).get("images", {}).get("count") == args.vectors:
                    break
                time.sleep(0.2)
            load(url, texts, 2 * args.concurrency, args.concurrency)  # warm-up
            results[batch] = load(url, texts, args.requests, args.concurrency)
            r = results[batch]
            print(f"max_batch_size={batch:>3}: p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                  f"{r['rps']:7.1f} req/s  errors {r['errors']}/{r['n']}", flush=True)
    finally:
        serve.shutdown()
    one, many = results[1], results[args.batch]
    print(f"archive {args.vectors} vectors, {args.requests} requests, concurrency {args.concurrency}")
    print(f"ratio batched/unbatched: throughput x{many['rps'] / one['rps']:.2f}, "
          f"p50 x{many['p50_ms'] / one['p50_ms']:.2f}, p99 x{many['p99_ms'] / one['p99_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
