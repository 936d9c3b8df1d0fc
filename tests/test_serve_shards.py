"""The search shards' code without Ray: a shard's block of rows and versions, what it
answers, the ingress's merge of the answers, and when the ingress swaps a version."""

from __future__ import annotations

import numpy as np

from rsir.retrieval.archive import publish_archive
from rsir.retrieval.filters import exact_top_k, parse_filter
from rsir.serve.archives import ShardParts, VersionIndex
from rsir.serve.search import Query, answer, merge_hits


def unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def publish(root, n: int, seed: int) -> tuple[str, np.ndarray]:
    vec = unit(n, 8, seed)
    meta = {"bbox": [[i, 0.0, i + 1.0, 1.0] for i in range(n)], "class_name": ["a", "b"] * (n // 2)}
    return publish_archive(root, [f"r{i}" for i in range(n)], vec, {"model": "m"}, meta), vec


def test_shards_answer_their_blocks_and_merge_to_the_whole(tmp_path):
    root = str(tmp_path / "images")
    version, vec = publish(root, 10, 0)
    shards = [ShardParts({"images": root}, i, 3) for i in range(3)]
    for s in shards:
        s.poll_once()
    assert [len(s.get("images", version).rows) for s in shards] == [4, 3, 3]
    q = unit(2, 8, 1)
    f = parse_filter({"bbox": [2.5, 0, 7.5, 1], "class_name": "a"})  # rows 2..7, even: 2, 4, 6
    for flt, k in ((None, 4), (f, 3), (f, 10)):
        for j in range(2):
            answers = [answer(s, [Query("top_k", "images", version, k=k, q=q[j], filter=flt)],
                              1000)[0] for s in shards]
            scores, hits, _ = merge_hits(answers, k)
            rows = None if flt is None else np.array([2, 4, 6])
            want_s, want_r = exact_top_k(vec, q[j:j + 1], k, rows)
            keep = want_r[0] >= 0
            assert [h["id"] for h in hits] == [f"r{r}" for r in want_r[0][keep]]
            np.testing.assert_allclose(scores, want_s[0][keep], rtol=1e-5)
            assert all(h["bbox"][0] + 1 == h["bbox"][2] for h in hits)


def test_a_shard_keeps_two_versions_and_loads_a_named_one(tmp_path):
    root = str(tmp_path / "images")
    v1, _ = publish(root, 6, 0)
    shard = ShardParts({"images": root}, 0, 2)
    shard.poll_once()
    v2, _ = publish(root, 8, 1)
    shard.poll_once()
    assert shard.held() == {"images": sorted([v1, v2])}
    v3, _ = publish(root, 4, 2)
    shard.poll_once()
    assert shard.held() == {"images": sorted([v2, v3])}  # the first loaded went
    assert len(shard.get("images", v1).rows) == 3  # asked for again: loaded again, rows 0..2
    assert v1 in shard.held()["images"] and len(shard.held()["images"]) == 2


def test_the_ingress_serves_a_new_version_once_every_shard_holds_it(tmp_path):
    root = str(tmp_path / "images")
    v1, _ = publish(root, 6, 0)
    index = VersionIndex({"images": root})
    index.poll_once()
    assert index.serving["images"].version == v1 and index.serving["images"].rows == 6
    v2, _ = publish(root, 8, 1)
    index.poll_once()
    assert index.serving["images"].version == v1 and index.pending["images"].version == v2
    index.ready([{"images": [v1, v2]}, {"images": [v1]}])  # shard 1 still loading
    assert index.serving["images"].version == v1
    index.ready([{"images": [v1, v2]}, None])  # shard 1 did not answer
    assert index.serving["images"].version == v1
    index.ready([{"images": [v1, v2]}, {"images": [v1, v2]}])
    assert index.serving["images"].version == v2 and not index.pending
    assert index.swaps == 2
