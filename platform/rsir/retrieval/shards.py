"""An archive split across search shards: which rows a shard holds, and the merge of the
shards' top-k lists into the archive's top-k (no Ray; the Serve code places shards).

Shard ``i`` of ``n`` holds a contiguous block of rows (``numpy.array_split`` order), so
a global row is the shard's first row plus the shard-local row, and shard ``i`` of one
archive version holds the same rows in every replica.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def shard_range(n_rows: int, shard: int, shards: int) -> tuple[int, int]:
    """``[start, end)`` of the rows shard ``shard`` of ``shards`` holds."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}: needs 0 <= shard < shards")
    base, extra = divmod(n_rows, shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def merge_top_k(scores: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-shard top lists ``scores[s]`` ([Q, k_s], decreasing, -inf padding) into
    the top ``k`` of each query: ``(scores [Q, k], shard [Q, k], position [Q, k])`` where
    ``position`` indexes the shard's list; padding slots have shard and position -1.
    Equal scores keep the lower shard first (a stable order)."""
    if not scores:
        raise ValueError("no shard lists to merge")
    n_q = {len(s) for s in scores}
    if len(n_q) != 1:
        raise ValueError(f"shard lists have different query counts: {sorted(n_q)}")
    (q,) = n_q
    lists = [np.asarray(s, dtype=np.float32).reshape(q, -1) for s in scores]
    all_s = np.concatenate(lists, axis=1)
    shard = np.concatenate([np.full(x.shape, i) for i, x in enumerate(lists)], axis=1)
    pos = np.concatenate([np.broadcast_to(np.arange(x.shape[1]), x.shape) for x in lists], axis=1)
    order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_shard = np.full((q, k), -1, dtype=np.int64)
    out_pos = np.full((q, k), -1, dtype=np.int64)
    kk = order.shape[1]
    top = np.take_along_axis(all_s, order, axis=1)
    real = np.isfinite(top)
    out_s[:, :kk] = top
    out_shard[:, :kk] = np.where(real, np.take_along_axis(shard, order, axis=1), -1)
    out_pos[:, :kk] = np.where(real, np.take_along_axis(pos, order, axis=1), -1)
    return out_s, out_shard, out_pos
