"""An independent re-statement of the GaLR authors' MR rerank, as their code computes it.

xiaoyuan1996/GaLR ``postprocessing/rerank.py``: ``i2t_rerank_optim(sim, K1, Wp1, Wp2)``
and ``t2i_rerank_optim`` (= the i2t function on ``sim.T``, transposed back). Written here
loop by loop with the same numpy calls that decide the result: ``np.argsort(-sim, 1)``
and ``np.argsort(-sim, 0)`` of numpy's default kind, the reverse positions collected as
a float64 array and ordered by its default ``np.argsort``, ``K1 = max(10, K1)``. Used by
tests and bench/rerank.py as the reference; slow on purpose (their structure).
"""

from __future__ import annotations

import numpy as np


def authors_i2t(sim: np.ndarray, k: int, w_c1: float, w_c2: float) -> np.ndarray:
    """Their ``i2t_rerank_optim(sim, K1=k, Wp1=w_c2, Wp2=w_c1)``."""
    k = max(10, k)
    by_text = np.argsort(-sim, 1)  # per image: texts, best first
    by_image = np.argsort(-sim, 0)  # per text (column): images, best first
    out = np.zeros_like(sim, dtype=np.float32)
    for i in range(sim.shape[0]):
        positions = np.array([])
        for j in range(k):
            t = by_text[i][j]
            out[i][t] = w_c2 * (sim[i][t] / np.sum(sim[:, t]))
            out[i][t] += np.exp(-0.05 * (j + 1))
            positions = np.append(positions, np.where(by_image[:, t] == i)[0][0])
        for r, t in enumerate(by_text[i][:k][np.argsort(positions)]):
            out[i][t] += w_c1 * np.exp(-0.05 * (float(r) + 1))
    return out


def authors_t2i(sim: np.ndarray, k: int, w_c1: float, w_c2: float) -> np.ndarray:
    """Their ``t2i_rerank_optim``: the i2t computation on the transpose."""
    return authors_i2t(np.transpose(sim), k, w_c1, w_c2).T
