"""Where the search runs: what a shard answers for a batch of queries over its block of
rows, and what the ingress does with the shards' answers (merge, rerank). The math is
rsir.retrieval's (filters, shards, composed, rerank); this module only places it.

A batch is a list of :class:`Query`; every shard answers each query of the batch for its
own rows (:func:`answer`), the ingress merges the lists (:func:`merge_hits`).
"""

import dataclasses
from datetime import timezone
from typing import Any

import numpy as np

from rsir.retrieval.filters import SearchFilter
from rsir.serve.archives import Part, ShardParts
from rsir.serve.config import RerankConfig


@dataclasses.dataclass
class Query:
    """One query as every shard sees it.

    ``op``: ``top_k`` (inner product with ``q``), ``composed`` (WEICOM of ``qi`` and ``qt``
    standardised with the whole archive's ``stats``), ``stats`` (the sums WEICOM needs of
    this shard's similarities to ``qi`` and ``qt``), ``pool_sims`` (this shard's vectors
    against the rows of ``cand``, for the rerank's neighbourhood)."""

    op: str
    target: str
    version: str
    k: int = 0
    q: np.ndarray | None = None
    qi: np.ndarray | None = None
    qt: np.ndarray | None = None
    lam: float = 0.5
    stats: np.ndarray | None = None  # [2, Q=1, 3]: image, text
    filter: SearchFilter | None = None
    with_vectors: bool = False
    cand: np.ndarray | None = None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def geometry_json(wkb: bytes | None) -> dict[str, Any] | None:
    if not wkb:
        return None
    import shapely
    from shapely.geometry import mapping

    geom = mapping(shapely.from_wkb(wkb))
    return {"type": geom["type"], "coordinates": _lists(geom["coordinates"])}


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def describe(row: dict[str, Any], target: str) -> dict[str, Any]:
    """The JSON of one hit from its row (rsir.retrieval.archive.RowBlock.take): id, the
    target's fields, and its geography and dates."""
    item: dict[str, Any] = {"id": row["id"]}
    if target == "captions":
        item.update({k: row[k] for k in ("text", "lang", "owner") if k in row})
    elif "changed" in row:
        item["changed"] = row["changed"]
    item.update(footprint=geometry_json(row.get("footprint")), bbox=row.get("bbox"),
                acquired=_iso(row.get("acquired")), acquired_t2=_iso(row.get("acquired_t2")),
                class_name=row.get("class_name"), sensor=row.get("sensor"))
    return item


def _hits(part: Part, target: str, scores: np.ndarray, rows: np.ndarray,
          with_vectors: bool) -> dict[str, Any]:
    keep = rows >= 0
    scores, rows = scores[keep], rows[keep]
    return {"scores": scores.astype(np.float32),
            "hits": [describe(row, target) for row in part.rows.take(rows)],
            "vectors": part.vectors[rows] if with_vectors else None}


def answer(parts: ShardParts, queries: list[Query], exact_max: int) -> list[Any]:
    """A shard's answers to a batch, in order: hits (``scores``, ``hits``, ``vectors``) for
    ``top_k`` / ``composed``, [2, 1, 3] sums for ``stats``, [n, c] for ``pool_sims``.
    ``top_k`` queries of one version and filter are scored as one matrix product."""
    from rsir.retrieval.composed import similarity_stats, weicom_from_stats
    from rsir.retrieval.filters import filtered_top_k, top_k_of_scores

    out: list[Any] = [None] * len(queries)
    groups: dict[tuple[str, str, SearchFilter | None], list[int]] = {}
    for i, qr in enumerate(queries):
        part = parts.get(qr.target, qr.version)
        if qr.op == "top_k":
            groups.setdefault((qr.target, qr.version, qr.filter), []).append(i)
        elif qr.op == "stats":
            out[i] = np.stack([similarity_stats((part.vectors @ qr.qi)[None]),
                               similarity_stats((part.vectors @ qr.qt)[None])])
        elif qr.op == "composed":
            scores = weicom_from_stats((part.vectors @ qr.qi)[None], (part.vectors @ qr.qt)[None],
                                       qr.lam, qr.stats[0], qr.stats[1])
            rows = part.table.candidates(qr.filter)
            if rows is not None:
                scores = scores[:, rows]
            s, r = top_k_of_scores(scores, qr.k, rows)
            out[i] = _hits(part, qr.target, s[0], r[0], qr.with_vectors)
        elif qr.op == "pool_sims":
            out[i] = part.vectors @ np.asarray(qr.cand, np.float32).T
        else:
            raise ValueError(f"unknown shard op {qr.op!r}")
    for (target, version, flt), idx in groups.items():
        part = parts.get(target, version)
        kmax = max(queries[i].k for i in idx)
        # An indexed part searches its ANN; few filter candidates are scored exactly.
        s, r = filtered_top_k(part.vectors, np.stack([queries[i].q for i in idx]), kmax,
                              part.table.candidates(flt), ann=part.ann,
                              exact_max=part.exact_max(exact_max))
        for j, i in enumerate(idx):
            k = queries[i].k
            out[i] = _hits(part, target, s[j, :k], r[j, :k], queries[i].with_vectors)
    return out


def merge_hits(answers: list[dict[str, Any]], k: int) -> tuple[list[float], list[dict], np.ndarray | None]:
    """The top ``k`` of one query over the shards that answered: scores, hits and (when
    asked for) the hits' vectors."""
    from rsir.retrieval.shards import merge_top_k

    width = max([len(a["scores"]) for a in answers] + [1])
    padded = [np.concatenate([a["scores"], np.full(width - len(a["scores"]), -np.inf, np.float32)])
              for a in answers]
    s, shard, pos = merge_top_k([p[None] for p in padded], k)
    keep = shard[0] >= 0
    picks = list(zip(shard[0][keep], pos[0][keep]))
    hits = [answers[a]["hits"][p] for a, p in picks]
    vectors = None
    if picks and answers[0]["vectors"] is not None:
        vectors = np.stack([answers[a]["vectors"][p] for a, p in picks])
    return [float(v) for v in s[0][keep]], hits, vectors


def rerank_scores(rc: RerankConfig, kind: str, q: np.ndarray, cand: np.ndarray,
                  pool_sims: np.ndarray) -> np.ndarray:
    """GaLR's multivariate rerank scores of the candidates ``cand`` [c, D] of a cross-modal
    query ``q``, the other modality's archive being the neighbourhood: ``pool_sims`` is
    that archive's vectors against the candidates, [P, c] (the shards' blocks stacked)."""
    from rsir.retrieval.rerank import multivariate_rerank

    if kind == "text":  # images are rows: candidates x (query + caption pool)
        sim = np.hstack([(cand @ q)[:, None], pool_sims.T])
        kk = max(1, min(rc.candidates, *sim.shape))
        _, t2i = multivariate_rerank(sim, kk, rc.w_c1, rc.w_c2, ties=rc.ties)
        return t2i[:, 0]
    sim = np.vstack([(cand @ q)[None], pool_sims])  # (query + image pool) x caption candidates
    kk = max(1, min(rc.candidates, *sim.shape))
    i2t, _ = multivariate_rerank(sim, kk, rc.w_c1, rc.w_c2, ties=rc.ties)
    return i2t[0]
