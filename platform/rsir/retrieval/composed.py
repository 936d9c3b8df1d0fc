"""Composed (image + text) retrieval: WEICOM, its baselines, and the PATTERNCOM protocol.

WEICOM (Psomas et al., "Composed Image Retrieval for Remote Sensing") is training-free:
each query's similarities to the archive are standardised over the archive, mapped
through the standard-normal CDF so that both modalities live on [0, 1] with the same
spread, then mixed as ``lam * text + (1 - lam) * image``. The protocol below follows the
authors' public evaluation code (github.com/billpsomas/rscir, evaluate.py / utils.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import ndtr

from rsir.data.patterncom import (  # noqa: F401 - the benchmark's rule, re-exported here
    PATTERNCOM_CLASS_MAPPING,
    PATTERNCOM_KS,
    PATTERNCOM_QUERY_CLASS_MERGES,
    query_texts,
)
from rsir.metrics.retrieval import as_numpy, ranking_metrics

DEFAULT_LAMBDAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def _pair(image_sims: Any, text_sims: Any) -> tuple[np.ndarray, np.ndarray]:
    image_sims = as_numpy(image_sims).astype(np.float64, copy=False)
    text_sims = as_numpy(text_sims).astype(np.float64, copy=False)
    if image_sims.shape != text_sims.shape or image_sims.ndim != 2:
        raise ValueError(
            f"image_sims and text_sims must both be [Q, N]; got {image_sims.shape}, {text_sims.shape}"
        )
    return image_sims, text_sims


def normalize_similarities(sims: Any) -> np.ndarray:
    """Per row: standardise over the N archive items (mean, unbiased std) then Phi(z).

    ddof=1 as ``torch.std`` in the authors' ``norm_cdf``. A constant row (std 0) carries
    no ranking information and maps to 0.5 everywhere instead of NaN.
    """
    sims = as_numpy(sims).astype(np.float64, copy=False)
    if sims.shape[-1] < 2:
        raise ValueError("need at least 2 archive items to standardise similarities")
    mean = sims.mean(axis=-1, keepdims=True)
    std = sims.std(axis=-1, ddof=1, keepdims=True)
    z = np.divide(sims - mean, std, out=np.zeros_like(sims), where=std > 0)
    return ndtr(z)


def linear_mix(image_sims: Any, text_sims: Any, lam: float) -> np.ndarray:
    """``lam * text + (1 - lam) * image``: WEICOM once both are Φ-normalised, which a
    campaign does once (:func:`normalize_similarities`) so that each λ only mixes."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    image_sims, text_sims = _pair(image_sims, text_sims)
    return lam * text_sims + (1.0 - lam) * image_sims


def weicom(image_sims: Any, text_sims: Any, lam: float) -> np.ndarray:
    """WEICOM scores ``[Q, N]``: ``lam * Phi(z_text) + (1 - lam) * Phi(z_image)``."""
    image_sims, text_sims = _pair(image_sims, text_sims)
    return linear_mix(normalize_similarities(image_sims), normalize_similarities(text_sims), lam)


def similarity_stats(sims: Any) -> np.ndarray:
    """Per row ``[count, sum, sum of squares]`` (float64, ``[Q, 3]``): what
    :func:`weicom_from_stats` needs of an archive part, so that an archive split in
    shards is standardised over all of it (the stats of the parts add up)."""
    sims = np.atleast_2d(as_numpy(sims).astype(np.float64, copy=False))
    return np.stack([np.full(len(sims), sims.shape[1], np.float64), sims.sum(axis=1),
                     (sims * sims).sum(axis=1)], axis=1)


def _normalize_with_stats(sims: np.ndarray, stats: np.ndarray) -> np.ndarray:
    n, total, squares = stats[:, :1], stats[:, 1:2], stats[:, 2:3]
    if (n < 2).any():
        raise ValueError("need at least 2 archive items to standardise similarities")
    mean = total / n
    std = np.sqrt(np.maximum(squares - n * mean * mean, 0.0) / (n - 1))
    z = np.divide(sims - mean, std, out=np.zeros_like(sims), where=std > 1e-12)
    return ndtr(z)


def weicom_from_stats(image_sims: Any, text_sims: Any, lam: float, image_stats: Any,
                      text_stats: Any) -> np.ndarray:
    """:func:`weicom` of a part ``[Q, n]`` of the archive, standardised with the whole
    archive's :func:`similarity_stats` (summed over its parts) instead of the part's own."""
    image_sims, text_sims = _pair(image_sims, text_sims)
    return linear_mix(_normalize_with_stats(image_sims, np.asarray(image_stats, np.float64)),
                      _normalize_with_stats(text_sims, np.asarray(text_stats, np.float64)), lam)


def text_only(image_sims: Any, text_sims: Any, lam: float = 0.0) -> np.ndarray:
    """Baseline: rank by the query text alone (``lam`` ignored)."""
    return _pair(image_sims, text_sims)[1]


def image_only(image_sims: Any, text_sims: Any, lam: float = 0.0) -> np.ndarray:
    """Baseline: rank by the query image alone (``lam`` ignored)."""
    return _pair(image_sims, text_sims)[0]


def average(image_sims: Any, text_sims: Any, lam: float = 0.0) -> np.ndarray:
    """Baseline: mean of the raw (unnormalised) similarities (``lam`` ignored)."""
    image_sims, text_sims = _pair(image_sims, text_sims)
    return 0.5 * (image_sims + text_sims)


ComposedScorer = Callable[[Any, Any, float], np.ndarray]

SCORERS: dict[str, ComposedScorer] = {
    "weicom": weicom,
    "linear_mix": linear_mix,
    "text_only": text_only,
    "image_only": image_only,
    "average": average,
}


def composed_scores(method: str, image_sims: Any, text_sims: Any, lam: float = 0.5) -> np.ndarray:
    """Scores ``[Q, N]`` of a registered scoring method (see ``SCORERS``)."""
    if method not in SCORERS:
        raise KeyError(f"unknown composed scoring method {method!r}; valid: {sorted(SCORERS)}")
    return SCORERS[method](image_sims, text_sims, lam)


TextSims = Callable[[Sequence[str]], Any] | Mapping[str, Any]


def _text_matrix(text_sims: TextSims, texts: list[str], n: int) -> np.ndarray:
    if callable(text_sims):
        mat = as_numpy(text_sims(texts))
    else:
        mat = np.stack([as_numpy(text_sims[t]) for t in texts]) if texts else np.zeros((0, n))
    mat = mat.astype(np.float64, copy=False)
    if mat.shape != (len(texts), n):
        raise ValueError(f"text similarities must be [{len(texts)}, {n}], got {mat.shape}")
    return mat


@dataclass(frozen=True)
class AttributeQueries:
    """The composed queries of one attribute: query image ``q_idx[j]`` with value
    ``values[v_idx[j]]``; ``value_code[i]`` is image i's value (-1: not annotated)."""

    name: str
    values: list[str]
    value_code: np.ndarray
    q_idx: np.ndarray
    v_idx: np.ndarray
    text_sims: np.ndarray  # [len(values), N]


def _mean(per_attribute: Mapping[str, float]) -> float:
    return float(np.mean(list(per_attribute.values())))


@dataclass(frozen=True)
class ComposedQueries:
    """Every PATTERNCOM query of an archive, resolved once (:func:`composed_queries`);
    :meth:`evaluate` scores them for one method and λ. A campaign builds this once and
    each trial only evaluates."""

    ids: list[str]
    class_code: np.ndarray
    attributes: list[AttributeQueries]

    def map_text_sims(self, fn: Callable[[np.ndarray], np.ndarray]) -> ComposedQueries:
        """The same queries with ``fn`` applied to each attribute's text similarities."""
        return replace(self, attributes=[replace(a, text_sims=fn(a.text_sims)) for a in self.attributes])

    def evaluate(self, image_sims: Any, method: str = "weicom", lam: float = 0.5,
                 batch_size: int = 256, ks: Sequence[int] = PATTERNCOM_KS) -> dict[str, Any]:
        """mAP, P@k and R@k (percent) per attribute and overall; see :func:`patterncom_eval`.
        An unknown ``method`` is the ``KeyError`` of :func:`composed_scores`."""
        per_attribute: dict[str, float] = {}
        at_k: dict[str, dict[str, float]] = {}
        n_queries: dict[str, int] = {}
        records: list[tuple[str, str, str, float]] = []
        cc = self.class_code
        for a in self.attributes:
            sums = {name: np.empty(len(a.q_idx)) for name in
                    ["AP", *(f"{m}@{k}" for m in ("P", "R") for k in ks)]}
            for start in range(0, len(a.q_idx), batch_size):  # batches of queries, vectorised inside
                qb, vb = a.q_idx[start:start + batch_size], a.v_idx[start:start + batch_size]
                img = as_numpy(image_sims[qb]).astype(np.float64, copy=False)
                scores = composed_scores(method, img, a.text_sims[vb], lam)
                positives = (cc[None, :] == cc[qb, None]) & (a.value_code[None, :] == vb[:, None])
                for name, values in ranking_metrics(scores, positives, ks).items():
                    sums[name][start:start + batch_size] = values
            aps = sums.pop("AP")
            per_attribute[a.name] = float(100.0 * np.mean(aps))
            at_k[a.name] = {name: float(100.0 * np.mean(v)) for name, v in sums.items()}
            n_queries[a.name] = len(aps)
            records.extend((self.ids[i], a.name, a.values[v], float(ap))
                           for i, v, ap in zip(a.q_idx, a.v_idx, aps))
        names = [f"{m}@{k}" for m in ("P", "R") for k in ks]
        return {
            "per_attribute": per_attribute,
            "mAP": _mean(per_attribute),
            "at_k": at_k,
            "at_k_mean": {name: _mean({a: v[name] for a, v in at_k.items()}) for name in names},
            "n_queries": n_queries,
            "queries": records,
        }


def composed_queries(
    ids: Sequence[str],
    classes: Sequence[str],
    attributes: Sequence[Mapping[str, str]],
    text_sims: TextSims,
    class_mapping: Mapping[str, str] | None = None,
    query_merges: Mapping[str, Mapping[str, str]] | None = None,
) -> ComposedQueries:
    """The PATTERNCOM queries of an archive as in the authors' code (see
    :func:`patterncom_eval`), with each query text's similarities resolved."""
    n = len(ids)
    if not (len(classes) == len(attributes) == n):
        raise ValueError("ids, classes and attributes must have one entry per image")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    mapping = PATTERNCOM_CLASS_MAPPING if class_mapping is None else class_mapping
    merged = [mapping.get(c, c) for c in classes]
    class_code = np.unique(np.asarray(merged, dtype=str), return_inverse=True)[1]
    out: list[AttributeQueries] = []
    for attr in sorted({a for attrs in attributes for a in attrs}):
        value = [attrs.get(attr) for attrs in attributes]
        values = sorted({v for v in value if v is not None})
        code_of = {v: c for c, v in enumerate(values)}
        value_code = np.array([code_of.get(v, -1) for v in value])
        pairs = [(i, code_of[text]) for i, text in query_texts(attr, classes, value, query_merges)]
        if pairs:
            q_idx, v_idx = (np.array(x) for x in zip(*pairs))
            out.append(AttributeQueries(attr, values, value_code, q_idx, v_idx,
                                        _text_matrix(text_sims, values, n)))
    if not out:
        raise ValueError("no composed query: no class group has two values of an attribute")
    return ComposedQueries(list(ids), class_code, out)


def patterncom_eval(
    ids: Sequence[str],
    classes: Sequence[str],
    attributes: Sequence[Mapping[str, str]],
    image_sims: Any,
    text_sims: TextSims,
    method: str = "weicom",
    lam: float = 0.5,
    class_mapping: Mapping[str, str] | None = None,
    batch_size: int = 256,
    query_merges: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """mAP, P@k and R@k (percent) per attribute and overall on a PATTERNCOM-style benchmark.

    Archive of N images: ``ids[i]``, ``classes[i]``, ``attributes[i]`` (attribute name ->
    value, only for the attributes annotated on that image), ``image_sims`` ``[N, N]``
    (row i: query image i against the archive; a memmap works). ``text_sims`` gives the
    similarity of a query text (the attribute value string) to the N images: a function
    ``texts -> [len(texts), N]`` or a mapping ``text -> [N]``.

    As in the authors' code: for attribute a, every image annotated with a is a query;
    its query texts are the other values of a in its group "a + class", classes merged
    per attribute by ``query_merges`` (:func:`query_texts`); a retrieved image is relevant
    when it is annotated with a, has the same class under the global ``class_mapping``
    (default :data:`PATTERNCOM_CLASS_MAPPING`) and that value. The query image stays in
    the ranking (it is never relevant). AP, P@k and R@k (k of :data:`PATTERNCOM_KS`; R@k
    over all the query's positives) are over the full ranking, averaged over all (image,
    text) queries of an attribute, then over attributes. Every query has >= 1 positive
    (the image whose value is its text).

    Returns ``{"per_attribute": {a: mAP}, "mAP": mean, "at_k": {a: {"P@5": ..}},
    "at_k_mean": {"P@5": ..}, "n_queries": {a: n}, "queries": [(id, attribute, text, AP)]}``.
    """
    if method not in SCORERS:
        raise KeyError(f"unknown composed scoring method {method!r}; valid: {sorted(SCORERS)}")
    queries = composed_queries(ids, classes, attributes, text_sims, class_mapping, query_merges)
    return queries.evaluate(image_sims, method, lam, batch_size)


def lambda_sweep(
    ids: Sequence[str],
    classes: Sequence[str],
    attributes: Sequence[Mapping[str, str]],
    image_sims: Any,
    text_sims: TextSims,
    lams: Sequence[float] = DEFAULT_LAMBDAS,
    class_mapping: Mapping[str, str] | None = None,
) -> dict[float, dict[str, float]]:
    """WEICOM mAP per attribute (and ``"avg"``) for each λ, as in the paper's Table 3.

    ``text_sims`` is resolved once (a callable may run a text encoder) and reused.
    """
    queries = composed_queries(ids, classes, attributes, text_sims, class_mapping)
    table: dict[float, dict[str, float]] = {}
    for lam in lams:
        res = queries.evaluate(image_sims, "weicom", lam, ks=())
        table[float(lam)] = {**res["per_attribute"], "avg": res["mAP"]}
    return table
