"""Filtered search: recall@10 and time of the filtered top-k paths against exact filtered
search (the baseline, measured in the same run); prints ratios.

The archive: N clustered unit vectors (Gaussian clusters around random centres, like real
embeddings), each row a 0.01-degree tile on a grid, with an acquisition date. Filters:
bboxes holding about 1% and 10% of the archive, and a date interval holding about 30%.

Paths, per filter:
  exact       pre-filter (MetadataTable) + exact top-k over the candidates (the baseline)
  scan        exact top-k over the whole archive then the filter (the filter after the search:
              what a post-filter returns, fewer than k when the filter is selective)
  ivf+over    Oversampling over FAISS IVF-Flat (rsir.retrieval.topk.FaissSearcher):
              the CandidateSearcher seam an ANN index plugs into (exact fallback on)

Run: ``PYTHONPATH=platform python bench/filtered_search.py [--n 200000]``.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from rsir.retrieval.filters import MetadataTable, Oversampling, exact_top_k, parse_filter


def clustered(n: int, d: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def recall(got: np.ndarray, want: np.ndarray) -> float:
    hits = [len(set(g[g >= 0]) & set(w[w >= 0])) / max((w >= 0).sum(), 1) for g, w in zip(got, want)]
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=32)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vec = clustered(args.n, args.dim, 256, rng)
    q = clustered(args.queries, args.dim, 256, rng)
    side = int(np.ceil(np.sqrt(args.n)))
    i = np.arange(args.n)
    lon, lat = -10 + 0.01 * (i % side), 40 + 0.01 * (i // side)
    t0 = datetime(2018, 1, 1, tzinfo=timezone.utc)
    meta = {"bbox": np.stack([lon, lat, lon + 0.01, lat + 0.01], 1).tolist(),
            "acquired": [t0 + timedelta(days=int(x)) for x in rng.integers(0, 6 * 365, args.n)]}
    t = time.perf_counter()
    table = MetadataTable(meta, args.n)
    print(f"metadata table of {args.n} rows: {time.perf_counter() - t:.2f} s")
    span = 0.01 * side
    filters = {
        "bbox 1%": {"bbox": [-10, 40, -10 + 0.1 * span, 40 + 0.1 * span]},
        "bbox 10%": {"bbox": [-10, 40, -10 + 0.316 * span, 40 + 0.316 * span]},
        "dates 30%": {"datetime": "2019-06-01T00:00:00Z/2021-03-01T00:00:00Z"},
    }
    from rsir.retrieval.topk import FaissSearcher

    t = time.perf_counter()
    ivf = FaissSearcher(vec, index="ivf", nlist=args.nlist, nprobe=args.nprobe)
    print(f"IVF-Flat nlist={args.nlist} nprobe={args.nprobe} built in {time.perf_counter() - t:.1f} s")
    print(f"{'filter':10} {'pass':>7} {'path':9} {'recall@10':>9} {'ms/query':>9} {'x exact':>8} {'<k':>5}")
    for name, f in filters.items():
        flt = parse_filter(f)
        t = time.perf_counter()
        rows = table.candidates(flt)
        mask_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        want_s, want = exact_top_k(vec, q, args.k, rows)
        base = time.perf_counter() - t
        print(f"{name:10} {len(rows) / args.n:7.1%} {'exact':9} {1.0:9.3f} "
              f"{(base * 1e3 + mask_ms) / len(q):9.3f} {1.0:8.2f} {0:5d}  (mask {mask_ms:.1f} ms)")
        t = time.perf_counter()
        s, r = exact_top_k(vec, q, args.k)
        ok = np.isin(r, rows)
        post = np.where(ok, r, -1)
        dt = time.perf_counter() - t
        short = int(((post >= 0).sum(1) < args.k).sum())
        print(f"{'':10} {'':7} {'scan':9} {recall(post, want):9.3f} {dt * 1e3 / len(q):9.3f} "
              f"{dt / base:8.2f} {short:5d}")
        over = Oversampling(ivf, vec)
        t = time.perf_counter()
        s, r = over.search(q, args.k, rows)
        dt = time.perf_counter() - t
        short = int(((r >= 0).sum(1) < args.k).sum())
        print(f"{'':10} {'':7} {'ivf+over':9} {recall(r, want):9.3f} {dt * 1e3 / len(q):9.3f} "
              f"{dt / base:8.2f} {short:5d}  (exact fallbacks {over.exact_fallbacks})")


if __name__ == "__main__":
    main()
