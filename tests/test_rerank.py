"""Multivariate rerank (GaLR III-D): hand case and equality with a per-query loop."""

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
    i2t, t2i = multivariate_rerank(sim, k=10)
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
