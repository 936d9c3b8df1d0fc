"""Retrieval metrics: cross-modal R@K / mR, their chance level, AP / mAP and P@k / R@k.

Ties never depend on sort stability or archive order. ``i2t_ranks`` / ``t2i_ranks`` and
AP resolve them pessimistically (an item scoring exactly as high as a relevant one is
ranked before it). ``cross_modal_recall`` reports the *expected* R@K when tied items are
ordered at random, the same assumption as ``chance_recall``: identical caption strings
(common in real datasets) get identical embeddings, and no model can order them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Rows (or columns) compared at once: bounds the temporary boolean block to ~64 MB.
_BLOCK_ELEMENTS = 1 << 26


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of a numpy array, a torch tensor (any device) or a nested list."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_sim(sim: Any, text_image: Any) -> tuple[np.ndarray, np.ndarray]:
    sim = as_numpy(sim)
    text_image = as_numpy(text_image).astype(np.int64, copy=False)
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D [images, texts], got shape {sim.shape}")
    n_images, n_texts = sim.shape
    if text_image.shape != (n_texts,):
        raise ValueError(f"text_image must have one entry per text ({n_texts}), got {text_image.shape}")
    if n_texts and (text_image.min() < 0 or text_image.max() >= n_images):
        raise ValueError(f"text_image values must lie in [0, {n_images})")
    return sim, text_image


def _i2t_counts(sim: Any, text_image: Any) -> tuple[np.ndarray, ...]:
    """Per image: texts of other images scoring > / == its best caption, and its own
    captions tied at that best score."""
    sim, text_image = _check_sim(sim, text_image)
    n_images, n_texts = sim.shape
    pos_scores = sim[text_image, np.arange(n_texts)]
    best = np.full(n_images, -np.inf, dtype=np.float64)
    np.maximum.at(best, text_image, pos_scores)
    # Captions of i that tie with its best caption are positives, not competitors.
    tied_pos = np.zeros(n_images, dtype=np.int64)
    np.add.at(tied_pos, text_image, pos_scores >= best[text_image])
    gt = np.empty(n_images, dtype=np.int64)
    ge = np.empty(n_images, dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(n_texts, 1))
    for start in range(0, n_images, step):  # blocks of rows, not one query at a time
        block = slice(start, start + step)
        gt[block] = (sim[block] > best[block, None]).sum(axis=1)
        ge[block] = (sim[block] >= best[block, None]).sum(axis=1)
    has_caption = np.bincount(text_image, minlength=n_images) > 0
    return gt, ge - gt - tied_pos, tied_pos, has_caption


def _t2i_counts(sim: Any, text_image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per text: other images scoring > / == its own image."""
    sim, text_image = _check_sim(sim, text_image)
    n_images, n_texts = sim.shape
    pos_scores = sim[text_image, np.arange(n_texts)]
    gt = np.empty(n_texts, dtype=np.int64)
    ge = np.empty(n_texts, dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(n_images, 1))
    for start in range(0, n_texts, step):  # blocks of columns
        block = slice(start, start + step)
        gt[block] = (sim[:, block] > pos_scores[None, block]).sum(axis=0)
        ge[block] = (sim[:, block] >= pos_scores[None, block]).sum(axis=0)
    return gt, ge - gt - 1


def i2t_ranks(sim: Any, text_image: Any) -> np.ndarray:
    """0-based pessimistic rank of each image's best caption among all texts.

    rank[i] = number of texts of *other* images scoring >= the best caption of image i,
    so a hit at K is ``rank < K``. Images with no caption get rank -1 (no positive).
    """
    gt, tied_neg, _, has_caption = _i2t_counts(sim, text_image)
    return np.where(has_caption, gt + tied_neg, -1)


def t2i_ranks(sim: Any, text_image: Any) -> np.ndarray:
    """0-based pessimistic rank of each text's image: other images scoring >= it."""
    gt, tied = _t2i_counts(sim, text_image)
    return gt + tied


def _expected_hits(gt: np.ndarray, tied_neg: np.ndarray, tied_pos: np.ndarray, k: int) -> np.ndarray:
    """P(a positive is in the top k) when the ``tied_neg + tied_pos`` tied items are
    shuffled: 1 - C(n - p, s) / C(n, s) with s = k - gt free slots."""
    slots = np.clip(k - gt, 0, None).astype(np.float64)
    n = (tied_neg + tied_pos).astype(np.float64)
    miss = np.ones_like(n)
    for j in range(int(tied_pos.max(initial=0))):
        active = tied_pos > j
        miss[active] *= np.clip((n[active] - slots[active] - j) / (n[active] - j), 0.0, None)
    return 1.0 - miss


def cross_modal_recall(
    sim: Any, text_image: Any, ks: Sequence[int] = (1, 5, 10), query_images: Any = None
) -> dict[str, Any]:
    """R@K in both directions and their mean mR, in percent.

    ``sim`` is ``[n_images, n_texts]`` (numpy or torch); ``text_image[t]`` is the image
    of text t. image->text is a hit when ANY caption of the image is in the top K;
    text->image when the text's image is in the top K. Tied items count in random order
    (the expected recall; see the module docstring). Images without any caption are left
    out of the i2t mean (they remain distractors for t2i). ``query_images`` (a boolean mask
    over images) restricts the queries to those images and their captions, every item
    still ranked: e.g. the change queries of a bitemporal archive. Returns
    ``{"i2t": {k: r}, "t2i": {k: r}, "mR": m}``.
    """
    gt, tied_neg, tied_pos, has_caption = _i2t_counts(sim, text_image)
    text_query = np.ones(len(as_numpy(text_image)), dtype=bool)
    if query_images is not None:
        query_images = as_numpy(query_images).astype(bool)
        has_caption = has_caption & query_images
        text_query = query_images[as_numpy(text_image).astype(np.int64)]
    if not has_caption.any():
        raise ValueError("no query has a positive: recall is undefined")
    gt, tied_neg, tied_pos = gt[has_caption], tied_neg[has_caption], tied_pos[has_caption]
    i2t = {int(k): float(100.0 * _expected_hits(gt, tied_neg, tied_pos, k).mean()) for k in ks}
    t_gt, t_tied = _t2i_counts(sim, text_image)
    t_gt, t_tied = t_gt[text_query], t_tied[text_query]
    ones = np.ones_like(t_gt)
    t2i = {int(k): float(100.0 * _expected_hits(t_gt, t_tied, ones, k).mean()) for k in ks}
    m_r = float(np.mean(list(i2t.values()) + list(t2i.values())))
    return {"i2t": i2t, "t2i": t2i, "mR": m_r}


def chance_recall(
    n_images: int, n_texts: int, text_image: Any, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, Any]:
    """Expected R@K (percent) of a uniformly random ranking, same layout as cross_modal_recall.

    image->text, image with c captions among T texts: P(hit@K) = 1 - C(T-c, K) / C(T, K)
    (hypergeometric), averaged over images that have captions. text->image: K / N.
    """
    text_image = as_numpy(text_image).astype(np.int64, copy=False)
    if text_image.shape != (n_texts,):
        raise ValueError(f"text_image must have {n_texts} entries, got {text_image.shape}")
    counts = np.bincount(text_image, minlength=n_images)[:n_images]
    counts = counts[counts > 0]
    i2t = {}
    for k in ks:
        kk = min(int(k), n_texts)
        # C(T-c, K) / C(T, K) = prod_{j<c} (T-K-j) / (T-j); a factor <= 0 means certain hit.
        miss = np.ones(counts.shape, dtype=np.float64)
        for j in range(int(counts.max())):
            active = counts > j
            miss[active] *= np.clip((n_texts - kk - j) / (n_texts - j), 0.0, None)
        i2t[int(k)] = float(100.0 * np.mean(1.0 - miss))
    t2i = {int(k): float(100.0 * min(int(k), n_images) / n_images) for k in ks}
    m_r = float(np.mean(list(i2t.values()) + list(t2i.values())))
    return {"i2t": i2t, "t2i": t2i, "mR": m_r}


def _ranked_relevance(scores: Any, positives: Any) -> tuple[np.ndarray, bool]:
    """``[Q, N]`` relevance of the ranked items (pessimistic ties), and whether the input
    was one query ``[N]``."""
    scores = as_numpy(scores).astype(np.float64, copy=False)
    positives = as_numpy(positives).astype(bool, copy=False)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    squeeze = scores.ndim == 1
    scores2 = np.atleast_2d(scores)
    pos2 = np.atleast_2d(positives)
    # lexsort: last key is primary (descending score); then False before True.
    order = np.lexsort((pos2, -scores2), axis=-1)
    return np.take_along_axis(pos2, order, axis=-1), squeeze


def _average_precision_ranked(rel: np.ndarray) -> np.ndarray:
    hits = np.cumsum(rel, axis=-1)
    precision = hits / np.arange(1, rel.shape[-1] + 1)
    n_pos = rel.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (precision * rel).sum(axis=-1) / n_pos, np.nan)


def average_precision(scores: Any, positives: Any) -> np.ndarray | float:
    """AP in [0, 1] over the full ranking of ``scores`` (``[N]`` or ``[Q, N]``).

    AP = mean over positives of precision at the positive's rank. Ties are pessimistic:
    within equal scores, non-positives are ranked first. A query without any positive
    gets NaN (undefined), which :func:`mean_average_precision` leaves out of the mean.
    """
    rel, squeeze = _ranked_relevance(scores, positives)
    ap = _average_precision_ranked(rel)
    return float(ap[0]) if squeeze else ap


def ranking_metrics(scores: Any, positives: Any, ks: Sequence[int] = (5, 10, 15, 20)
                    ) -> dict[str, np.ndarray]:
    """Per query (rows of ``[Q, N]``), in [0, 1]: ``AP`` and, for each k, ``P@k`` = hits in
    the top k / k and ``R@k`` = hits in the top k / all positives of the query (the
    definitions of the PATTERNCOM authors' ``metrics_calc``, over the full ranking). Ties
    pessimistic as :func:`average_precision`; a query with no positive gets NaN AP and
    R@k (P@k stays 0)."""
    rel, _ = _ranked_relevance(np.atleast_2d(as_numpy(scores)), np.atleast_2d(as_numpy(positives)))
    out = {"AP": _average_precision_ranked(rel)}
    hits = np.cumsum(rel, axis=-1)
    n_pos = hits[:, -1] if rel.shape[-1] else np.zeros(len(rel), np.int64)
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        at_k = hits[:, min(k, rel.shape[-1]) - 1] if rel.shape[-1] else np.zeros(len(rel))
        out[f"P@{k}"] = at_k / k
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"R@{k}"] = np.where(n_pos > 0, at_k / np.maximum(n_pos, 1), np.nan)
    return out


def mean_average_precision(scores: Any, positives: Any) -> float:
    """mAP in percent over queries (rows); queries with no positive are excluded."""
    ap = np.atleast_1d(average_precision(scores, positives))
    if np.all(np.isnan(ap)):
        raise ValueError("no query has a positive: mAP is undefined")
    return float(100.0 * np.nanmean(ap))
