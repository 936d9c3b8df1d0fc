"""Multivariate rerank (MR) of a cross-modal similarity matrix, GaLR section III-D.

Written with whole-matrix sorts and gathers (no loop over queries). It reproduces the
authors' implementation (xiaoyuan1996/GaLR, ``postprocessing/rerank.py``,
``i2t_rerank_optim`` / ``t2i_rerank_optim``; their ``Wp2`` is ``w_c1`` and ``Wp1`` is
``w_c2``), with these points made explicit:

* ``c_s`` divides by the plain sum of the raw column ``sim[:, t]`` over ALL images
  (``np.sum(sim[:, t])``), not a softmax; for t2i it is the row sum over all texts.
* Their code silently raises k to at least 10 (``K1 = max(10, K1)``); here k is used as
  given, so results are identical for k >= 10 (the paper's k = 25).
* Ties. Tied reverse ranks among the k candidates are common (an image is often first in
  the rankings of several of its own captions), and their order decides ``r``. The authors
  order the candidates with ``np.argsort`` of the float64 reverse positions, numpy's
  default kind, which is not stable (numpy's SIMD sorts reorder ties even in 10 elements);
  their forward rankings are ``np.argsort(-sim)`` of the same kind. ``ties="numpy"`` (the
  default) makes exactly those calls, one row per query (numpy sorts each row of a 2-D
  argsort as the same 1-D call), so the scores equal theirs, ties included.
  ``ties="stable"`` orders every tie deterministically instead: tied similarities by lower
  index, tied reverse ranks by forward rank. Without ties both agree exactly.
* Ranks are taken on float32 similarities (as the authors' float32 outputs); ``c_s``
  is computed in float64 from those values and the result is float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from rsir.metrics.retrieval import as_numpy


def _stable_order_and_rank(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of float32 ``v``: stable descending order, and its inverse (rank of each item).

    A float32's bits, sign-folded, order like the float; negated and packed above the
    column index they give unique int64 keys whose ascending order is "descending value,
    ties by lower index". Sorting plain integers is several times faster than a stable
    argsort, and the index is read back from the key's low 32 bits.
    """
    bits = (v + np.float32(0.0)).view(np.int32)  # + 0.0 folds -0.0 onto +0.0
    ascending = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    keys = ascending.astype(np.int64)
    np.negative(keys, out=keys)  # in place: this matrix is the big temporary
    keys <<= 32
    keys |= np.arange(v.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    order = (keys & 0xFFFFFFFF).astype(np.intp)
    rank = np.empty(v.shape, dtype=np.intp)
    rank[np.arange(v.shape[0])[:, None], order] = np.arange(v.shape[1])
    return order, rank


def _numpy_order_and_rank(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the authors' ``np.argsort(-v)`` (numpy's default kind), and its inverse.
    (Float32 similarities tie often: 5000 values in one row hold a tie more often than not.)"""
    order = np.argsort(-v, axis=1)
    rank = np.empty(v.shape, dtype=np.intp)
    rank[np.arange(v.shape[0])[:, None], order] = np.arange(v.shape[1])
    return order, rank


def _by_row_blocks(fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                   v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` (a per-row order and rank) on blocks of rows in threads: numpy's sorts release
    the GIL, and each row's result is the same whichever block it is sorted in."""
    blocks = min(os.cpu_count() or 1, 8, v.shape[0])
    if blocks < 2:
        return fn(v)
    bounds = np.linspace(0, v.shape[0], blocks + 1).astype(int)
    with ThreadPoolExecutor(blocks) as pool:
        parts = list(pool.map(fn, [v[a:b] for a, b in zip(bounds[:-1], bounds[1:])]))
    return np.concatenate([o for o, _ in parts]), np.concatenate([r for _, r in parts])


def _one_direction(
    v: np.ndarray, order: np.ndarray, reverse_rank_t: np.ndarray, k: int,
    w_c1: float, w_c2: float, xi: float, ties: str,
) -> np.ndarray:
    """MR scores for queries = rows of ``v`` [Q, C]. ``order`` is each row's descending
    order; ``reverse_rank_t[c, q]`` is where q ranks in candidate c's ranking."""
    n_q = v.shape[0]
    rows = np.arange(n_q)[:, None]
    cand = order[:, :k]  # forward top-k, j = 0..k-1
    reverse = reverse_rank_t[cand, rows]
    if ties == "numpy":
        # The authors' ``np.argsort(address)``: float64 positions, default kind.
        by_reverse = np.argsort(reverse.astype(np.float64), axis=1)
    else:  # stable: ties keep forward order (unique composite key)
        by_reverse = np.argsort(reverse * k + np.arange(k), axis=1)
    r = np.empty_like(by_reverse)
    r[rows, by_reverse] = np.arange(k)
    decay = np.exp(-xi * (np.arange(k) + 1.0))
    c_s = v[rows, cand].astype(np.float64) / v.sum(axis=0, dtype=np.float64)[cand]
    out = np.zeros(v.shape, dtype=np.float32)
    out[rows, cand] = decay[None, :] + w_c1 * decay[r] + w_c2 * c_s
    return out


RerankTies = Literal["numpy", "stable"]
RERANK_TIES: tuple[str, ...] = ("numpy", "stable")


def multivariate_rerank(
    sim: Any, k: int = 25, w_c1: float = 0.5, w_c2: float = 1.25, xi: float = 0.05,
    ties: RerankTies = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
    """MR scores ``(i2t, t2i)``, both of ``sim``'s shape ``[N_images, N_texts]``.

    Image query i, its top-k texts t at forward rank j = 0..k-1:
    ``exp(-xi (j+1)) + w_c1 exp(-xi (r+1)) + w_c2 sim[i,t] / sum_rows sim[:,t]``, where r
    is t's position once the k candidates are ordered by where i ranks in t's ranking of
    all images; 0 outside the top-k. Rank i2t by rows of the first matrix and t2i by
    columns of the second (text->image is the same computation on ``sim.T``). ``ties``:
    ``numpy`` orders ties as the authors' code does, ``stable`` by index (module docstring).
    """
    if ties not in RERANK_TIES:
        raise ValueError(f"ties must be one of {list(RERANK_TIES)}, got {ties!r}")
    v = np.ascontiguousarray(as_numpy(sim), dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"sim must be [N_images, N_texts], got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("sim contains NaN")
    if not 1 <= k <= min(v.shape):
        raise ValueError(f"k must lie in [1, {min(v.shape)}], got {k}")
    vt = np.ascontiguousarray(v.T)
    # Two full sorts serve both directions: image rows give i2t candidates and t2i reverse
    # ranks; text rows (columns of sim) give t2i candidates and i2t reverse ranks.
    order_and_rank = _numpy_order_and_rank if ties == "numpy" else _stable_order_and_rank
    img_order, img_rank = _by_row_blocks(order_and_rank, v)
    txt_order, txt_rank = _by_row_blocks(order_and_rank, vt)
    i2t = _one_direction(v, img_order, txt_rank, k, w_c1, w_c2, xi, ties)
    t2i = _one_direction(vt, txt_order, img_rank, k, w_c1, w_c2, xi, ties)
    return i2t, np.ascontiguousarray(t2i.T)
