"""Retrieval benchmarks, each against a baseline measured in the same run; prints ratios.

1. Exact top-k (rsir ExactSearcher) vs numpy argsort and vs FAISS IndexFlatIP,
   1M x 128 float32 archive, 1000 queries, k = 10.
2. Multivariate rerank on a 1000 x 5000 matrix vs the GaLR authors' loops
   (re-stated in tests/galr_authors.py), with both tie rules.
3. Caption-metric protocol: the nltk backend cached vs scoring every (hypothesis,
   references) afresh (Dubai-CC val+test); and the time of the coco (default) and nltk
   backends on the demo-sized case (the demo world's 1,050 val+test pairs, 5 rounds, top-5).

Run: ``PYTHONPATH=platform python bench/retrieval.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rsir.metrics.captions import (
    caption_retrieval_scores,
    caption_retrieval_scores_uncached,
    coco_available,
    score_caption_nltk,
)
from rsir.retrieval.rerank import multivariate_rerank
from rsir.retrieval.topk import ExactSearcher

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # galr_authors


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench_topk(n: int, d: int, n_q: int, k: int, argsort_q: int) -> None:
    rng = np.random.default_rng(0)
    archive = rng.standard_normal((n, d), dtype=np.float32)
    queries = rng.standard_normal((n_q, d), dtype=np.float32)
    (s_ex, i_ex), t_ex = timed(ExactSearcher(archive).search, queries, k)
    print(f"[topk] {n:,} x {d} archive, {n_q} queries, k={k}")
    print(f"  rsir exact (chunked matmul + running top-k): {t_ex:.2f} s  ({n_q / t_ex:,.0f} q/s)")
    # numpy argsort of the full score rows: only argsort_q queries (it is slow), per query.
    sub_idx, t_np = timed(lambda: np.argsort(-(queries[:argsort_q] @ archive.T), axis=1)[:, :k])
    np_qps = argsort_q / t_np
    print(f"  numpy matmul + argsort ({argsort_q} queries): {t_np:.2f} s  ({np_qps:,.0f} q/s)"
          f"  -> speed-up {n_q / t_ex / np_qps:.1f}x; same top-k: {bool((sub_idx == i_ex[:argsort_q]).all())}")
    try:
        import faiss
    except ImportError:
        print("  faiss not installed: FAISS comparison skipped")
        return
    index = faiss.IndexFlatIP(d)
    _, t_build = timed(index.add, archive)
    (s_f, i_f), t_f = timed(index.search, queries, k)
    agree = float(np.mean(i_f == i_ex))
    print(f"  faiss IndexFlatIP search: {t_f:.2f} s  ({n_q / t_f:,.0f} q/s; add {t_build:.2f} s)"
          f"  -> rsir/faiss throughput ratio {t_f / t_ex:.2f}x; index agreement {agree:.4f},"
          f" max score diff {np.abs(s_f - s_ex).max():.2e}")


def bench_mr(n_i: int, n_t: int, k: int) -> None:
    """Both tie rules against the authors' loops (tests/galr_authors.py), which they equal."""
    from galr_authors import authors_i2t, authors_t2i

    sim = np.random.default_rng(1).random((n_i, n_t)).astype(np.float32)
    print(f"[mr] {n_i} x {n_t}, k={k}")
    a_i2t, t_i2t = timed(authors_i2t, sim, k, 0.5, 1.25)
    a_t2i, t_t2i = timed(authors_t2i, sim, k, 0.5, 1.25)
    t_authors = t_i2t + t_t2i
    print(f"  authors' loops (i2t_rerank_optim + t2i_rerank_optim): {t_i2t:.2f} s + {t_t2i:.2f} s")
    for ties in ("numpy", "stable"):
        multivariate_rerank(sim[:50, :100], k=k, ties=ties)  # warm-up
        runs = [timed(multivariate_rerank, sim, k, ties=ties)[1] for _ in range(3)]
        i2t, t2i = multivariate_rerank(sim, k, ties=ties)
        diff = max(np.abs(a_i2t - i2t).max(), np.abs(a_t2i - t2i).max())
        print(f"  vectorised, ties={ties} (both directions) best of 3 {min(runs):.3f} s"
              f"  -> speed-up {t_authors / min(runs):.0f}x; max |diff| to the authors' {diff:.1e}")


def bench_captions(rounds: int, top_k: int) -> None:
    files = [SHARED / "captions" / "dubai_cc" / f for f in ("Validation_Dubai_CC.json", "Test_Dubai_CC.json")]
    if not all(f.is_file() for f in files):
        print(f"[captions] skipped: Dubai-CC captions not found under {SHARED}")
    else:
        caps = [[s["raw"] for s in img["sentences"]] for f in files for img in json.loads(f.read_text())["images"]]
        captions = [c for cs in caps for c in cs]
        text_pair = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
        changed = np.array(["no" not in " ".join(cs).lower().split() for cs in caps])
        sim = np.random.default_rng(2).standard_normal((len(caps), len(captions)))
        _, t_wn = timed(score_caption_nltk, "a road is built", ["roads are built"])  # loads WordNet once
        fast, t_fast = timed(caption_retrieval_scores, sim, text_pair, captions, changed, rounds, top_k,
                             backend="nltk")
        slow, t_slow = timed(caption_retrieval_scores_uncached, sim, text_pair, captions, changed, rounds, top_k)
        print(f"[captions] Dubai-CC val+test ({len(caps)} pairs, {len(captions)} captions), {rounds} rounds,"
              f" top-{top_k}, random similarities, nltk backend (WordNet load {t_wn:.1f} s excluded from both)")
        print(f"  cached protocol {t_fast:.2f} s vs scoring every pair afresh {t_slow:.2f} s"
              f"  -> speed-up {t_slow / t_fast:.1f}x; identical scores: {fast == slow}")
    bench_captions_demo_size(rounds, top_k)


def bench_captions_demo_size(rounds: int, top_k: int, n_world: int = 3000) -> None:
    """Both backends on the demo world's val+test pairs (English captions)."""
    from rsir.data.demo_world import assign_split, pair_row

    rows = [pair_row(i, 0, "eval") for i in range(n_world)
            if assign_split(i, n_world, 0.1, 0.25) != "train"]
    caps = [[c["text"] for c in r["captions"] if c["lang"] == "en"] for r in rows]
    captions = [c for cs in caps for c in cs]
    text_pair = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
    changed = np.array([r["changed"] for r in rows])
    # a little signal, so the top-k mixes relevant and irrelevant pairs
    sim = (np.random.default_rng(3).standard_normal((len(caps), len(captions)))
           + 1.5 * (text_pair[None] == np.arange(len(caps))[:, None]))
    header = (f"[captions] demo-sized: {len(caps)} pairs, {len(captions)} captions, {rounds} rounds,"
              f" top-{top_k} ({2 * rounds * top_k * len(caps)} (hypothesis, references) per protocol)")
    print(header)
    missing = coco_available()
    backends = ["nltk"] if missing else ["coco", "nltk"]
    if missing:
        print(f"  coco backend skipped: {missing}")
    for backend in backends:
        res, t = timed(caption_retrieval_scores, sim, text_pair, captions, changed, rounds, top_k,
                       backend=backend)
        full = res["scores"]["full"]["avg"]
        print(f"  {backend}: {t:.1f} s; full avg " + ", ".join(f"{m} {v:.3f}" for m, v in full.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--argsort-queries", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[], choices=["topk", "mr", "captions"])
    args = parser.parse_args(argv)
    if "topk" not in args.skip:
        bench_topk(args.n, 128, args.queries, 10, args.argsort_queries)
    if "mr" not in args.skip:
        bench_mr(1000, 5000, 25)
    if "captions" not in args.skip:
        bench_captions(5, 5)


if __name__ == "__main__":
    main()
