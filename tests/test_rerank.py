"""Multivariate rerank (GaLR III-D): hand case, equality with a per-query loop (stable ties)
and with the authors' code (their tie order, the default)."""

from __future__ import annotations

from math import exp

import numpy as np
import pytest

from rsir.retrieval.rerank import multivariate_rerank


def loop_rerank(sim: np.ndarray, k: int, w_c1: float = 0.5, w_c2: float = 1.25, xi: float = 0.05) -> np.ndarray:
    """The paper's equations, one image query at a time (i2t; t2i is this on sim.T).

    Tie rule made explicit: stable orders (lower index first, then forward rank).
    """
    sim = sim.astype(np.float32)
    out = np.zeros(sim.shape)
    col_sum = sim.sum(axis=0, dtype=np.float64)
    for i in range(sim.shape[0]):
        cand = np.argsort(-sim[i], kind="stable")[:k]
        # Where image i ranks in each candidate text's ranking of all images.
        reverse = [int(np.flatnonzero(np.argsort(-sim[:, t], kind="stable") == i)[0]) for t in cand]
        r_of = {int(t): r for r, t in enumerate(cand[np.argsort(reverse, kind="stable")])}
        for j, t in enumerate(cand):
            out[i, t] = exp(-xi * (j + 1)) + w_c1 * exp(-xi * (r_of[int(t)] + 1)) + w_c2 * sim[i, t] / col_sum[t]
    return out


def test_hand_computed_2x3() -> None:
    sim = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]])
    i2t, t2i = multivariate_rerank(sim, k=2)
    e1, e2 = exp(-0.05), exp(-0.1)
    # Image 0: forward t0, t1; reverse ranks 0, 1 -> same order.
    # Image 1: forward t0, t1; reverse ranks 1, 0 -> t1 first.
    expected_i2t = [
        [e1 + 0.5 * e1 + 1.25 * 0.9 / 1.7, e2 + 0.5 * e2 + 1.25 * 0.5 / 1.2, 0.0],
        [e1 + 0.5 * e2 + 1.25 * 0.8 / 1.7, e2 + 0.5 * e1 + 1.25 * 0.7 / 1.2, 0.0],
    ]
    assert i2t == pytest.approx(np.array(expected_i2t), abs=1e-6)
    # Text queries over 2 images with k=2: both images are candidates. t0: images 0, 1
    # (reverse: t0 is 1st for image 0, 1st for image 1); row sums 1.5 and 1.7.
    assert t2i[:, 0] == pytest.approx([e1 + 0.5 * e1 + 1.25 * 0.9 / 1.5, e2 + 0.5 * e2 + 1.25 * 0.8 / 1.7], abs=1e-6)


@pytest.mark.parametrize("rounding", [None, 1])
def test_equals_loop_on_random_matrices(rounding: int | None) -> None:
    rng = np.random.default_rng(3)
    sim = rng.standard_normal((30, 80))
    if rounding is not None:
        sim = np.round(sim, rounding)  # heavy ties in both rankings
    i2t, t2i = multivariate_rerank(sim, k=10, ties="stable")
    # float32 output (as the authors'): compare to float32 precision.
    assert i2t == pytest.approx(loop_rerank(sim, 10), rel=1e-6, abs=1e-6)
    assert t2i == pytest.approx(loop_rerank(sim.T, 10).T, rel=1e-6, abs=1e-6)
    # Exactly k scored entries per query (c_s can be negative: it divides by a raw sum).
    assert ((i2t != 0).sum(axis=1) == 10).all() and ((t2i != 0).sum(axis=0) == 10).all()


def test_validation() -> None:
    with pytest.raises(ValueError):
        multivariate_rerank(np.zeros((3, 4)), k=5)
    with pytest.raises(ValueError):
        multivariate_rerank(np.array([[np.nan, 1.0]]), k=1)


def _reverse_rank_ties(sim: np.ndarray, k: int) -> int:
    """How many image queries have tied reverse ranks among their k forward candidates."""
    col_rank = np.argsort(np.argsort(-sim, axis=0), axis=0)
    cand = np.argsort(-sim, axis=1)[:, :k]
    rev = np.take_along_axis(col_rank, cand, axis=1)  # rank of image i for text cand[i, j]
    return int(sum(len(np.unique(r)) < k for r in rev))


@pytest.mark.parametrize("k", [10, 25])
def test_equals_the_authors_code_with_tied_reverse_ranks(k: int) -> None:
    from galr_authors import authors_i2t, authors_t2i

    rng = np.random.default_rng(7)
    # Retrieval-like: each image's 5 captions score high for it, so an image is often
    # first in the rankings of several captions (tied reverse ranks).
    n_img = 40
    sim = rng.random((n_img, 5 * n_img)).astype(np.float32)
    sim[np.repeat(np.arange(n_img), 5), np.arange(5 * n_img)] += 1.0
    assert _reverse_rank_ties(sim, k) > n_img // 2  # the case this test is about
    w_c1, w_c2 = 0.7, 1.0
    i2t, t2i = multivariate_rerank(sim, k=k, w_c1=w_c1, w_c2=w_c2)
    np.testing.assert_allclose(i2t, authors_i2t(sim, k, w_c1, w_c2), atol=1e-5)
    np.testing.assert_allclose(t2i, authors_t2i(sim, k, w_c1, w_c2), atol=1e-5)
    # The stable order breaks those ties differently: the default is what makes it equal.
    i2t_stable, _ = multivariate_rerank(sim, k=k, w_c1=w_c1, w_c2=w_c2, ties="stable")
    assert np.abs(i2t_stable - authors_i2t(sim, k, w_c1, w_c2)).max() > 1e-3


def test_unknown_ties_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="ties"):
        multivariate_rerank(np.eye(3), k=2, ties="random")


def test_equals_the_authors_code_with_tied_similarities() -> None:
    from galr_authors import authors_i2t, authors_t2i

    # Similarities on a 0.1 grid: every row and column is full of ties, which numpy's
    # default argsort (not the stable one) orders.
    sim = np.round(np.random.default_rng(0).random((30, 90)), 1).astype(np.float32)
    i2t, t2i = multivariate_rerank(sim, k=12)
    np.testing.assert_allclose(i2t, authors_i2t(sim, 12, 0.5, 1.25), atol=1e-5)
    np.testing.assert_allclose(t2i, authors_t2i(sim, 12, 0.5, 1.25), atol=1e-5)
