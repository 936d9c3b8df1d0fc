"""Where the ingress's scoring runs: batched exact top-k over the loaded archive versions,
WEICOM for composed queries, and the multivariate rerank (the math is in rsir.retrieval)."""

import numpy as np

from rsir.serve.archives import Found, Loaded
from rsir.serve.config import RerankConfig


def score_batch(items: list[tuple[Loaded, np.ndarray, int]]) -> list[Found]:
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


def composed_top_k(vectors: np.ndarray, qi: np.ndarray, qt: np.ndarray, lam: float,
                    k: int) -> list[tuple[int, float]]:
    """(row, score) of the k best WEICOM scores of an image + text query."""
    from rsir.retrieval.composed import weicom

    scores = weicom((vectors @ qi)[None], (vectors @ qt)[None], lam)[0]
    rows = np.argsort(-scores, kind="stable")[:k]
    return [(int(r), float(scores[r])) for r in rows]




def rerank_scores(rc: RerankConfig, kind: str, q: np.ndarray, cand: np.ndarray,
                  pool: np.ndarray) -> np.ndarray:
    """GaLR's multivariate rerank scores of the candidates ``cand`` of a cross-modal query
    ``q``, with the other modality's archive ``pool`` as the neighbourhood."""
    from rsir.retrieval.rerank import multivariate_rerank

    if kind == "text":  # images are rows: candidates x (query + caption pool)
        sim = cand @ np.vstack([q[None], pool]).T
        kk = max(1, min(rc.candidates, *sim.shape))
        _, t2i = multivariate_rerank(sim, kk, rc.w_c1, rc.w_c2)
        return t2i[:, 0]
    sim = np.vstack([q[None], pool]) @ cand.T  # (query + image pool) x caption candidates
    kk = max(1, min(rc.candidates, *sim.shape))
    i2t, _ = multivariate_rerank(sim, kk, rc.w_c1, rc.w_c2)
    return i2t[0]

