"""R@K / mR (expected over random tie order), pessimistic ranks, chance level, AP / mAP."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rsir.metrics.retrieval import (
    average_precision,
    chance_recall,
    cross_modal_recall,
    i2t_ranks,
    mean_average_precision,
    t2i_ranks,
)

# 3 images x 4 texts; texts 0, 1 describe image 0, text 2 image 1, text 3 image 2.
SIM = np.array([
    [0.9, 0.1, 0.8, 0.2],
    [0.5, 0.6, 0.7, 0.1],
    [0.3, 0.3, 0.3, 0.3],  # image 2 ties its caption with every other text
])
TEXT_IMAGE = np.array([0, 0, 1, 2])


def test_recall_hand_computed_with_ties() -> None:
    # i2t ranks: image 0 -> 0, image 1 -> 0, image 2 -> 3 (three negatives tie at 0.3).
    assert i2t_ranks(SIM, TEXT_IMAGE).tolist() == [0, 0, 3]
    # t2i ranks: text 0 -> 0, text 1 -> 2 (0.6 and 0.3 beat 0.1), text 2 -> 1, text 3 -> 0.
    assert t2i_ranks(SIM, TEXT_IMAGE).tolist() == [0, 2, 1, 0]
    res = cross_modal_recall(SIM, TEXT_IMAGE, ks=(1, 2, 5))
    # Image 2's caption ties with three negatives: in random order it is first with
    # probability 1/4, in the top 2 with 2/4. Images 0 and 1 always hit.
    assert res["i2t"] == pytest.approx({1: 100 * 2.25 / 3, 2: 100 * 2.5 / 3, 5: 100.0})
    assert res["t2i"] == pytest.approx({1: 50.0, 2: 75.0, 5: 100.0})
    assert res["mR"] == pytest.approx((75 + 250 / 3 + 100 + 50 + 75 + 100) / 6)


def test_recall_restricted_to_query_images() -> None:
    # Queries from images 1 and 2 only; image 0 and its captions stay in the rankings.
    res = cross_modal_recall(SIM, TEXT_IMAGE, ks=(1, 2), query_images=[False, True, True])
    # i2t: image 1 hits at rank 0; image 2 ties with three negatives (1/4 at K=1, 2/4 at K=2).
    assert res["i2t"] == pytest.approx({1: 100 * 1.25 / 2, 2: 100 * 1.5 / 2})
    # t2i: text 2 (image 1) ranks second behind image 0; text 3 (image 2) ranks first.
    assert res["t2i"] == pytest.approx({1: 50.0, 2: 100.0})
    with pytest.raises(ValueError, match="no query"):
        cross_modal_recall(SIM, TEXT_IMAGE, query_images=[False, False, False])


def test_recall_accepts_torch_and_ties_between_positives() -> None:
    # Image 0's two captions tie at 0.9: only the negative at 0.95 is ahead -> rank 1.
    sim = torch.tensor([[0.9, 0.9, 0.95], [0.0, 0.0, 1.0]])
    assert i2t_ranks(sim, [0, 0, 1]).tolist() == [1, 0]
    res = cross_modal_recall(sim, torch.tensor([0, 0, 1]), ks=(1,))
    assert res["i2t"][1] == 50.0
    # t2i: text 0 and 1 -> image 0 beats 0.0, text 2 -> image 1 -> all hits.
    assert res["t2i"][1] == 100.0


def test_perfect_ranking_and_image_without_caption() -> None:
    sim = np.eye(4)[:, :3]  # image 3 has no caption: excluded from i2t, distractor for t2i
    res = cross_modal_recall(sim, [0, 1, 2], ks=(1, 5))
    assert res["i2t"] == {1: 100.0, 5: 100.0}
    assert res["t2i"] == {1: 100.0, 5: 100.0}
    assert res["mR"] == 100.0
    assert i2t_ranks(sim, [0, 1, 2]).tolist() == [0, 0, 0, -1]


def _loop_ranks(sim: np.ndarray, text_image: np.ndarray) -> tuple[list[int], list[int]]:
    """Per-query loop: pessimistic rank = negatives scoring >= the best positive."""
    i2t, t2i = [], []
    for i in range(sim.shape[0]):
        pos = text_image == i
        best = sim[i, pos].max()
        i2t.append(int(np.sum(sim[i, ~pos] >= best)))
    for t in range(sim.shape[1]):
        own = text_image[t]
        others = np.delete(sim[:, t], own)
        t2i.append(int(np.sum(others >= sim[own, t])))
    return i2t, t2i


def test_vectorised_ranks_equal_loop_on_tied_random_matrix() -> None:
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 5, size=(40, 200)).astype(np.float32)  # many ties
    text_image = np.repeat(np.arange(40), 5)
    i2t, t2i = _loop_ranks(sim, text_image)
    assert i2t_ranks(sim, text_image).tolist() == i2t
    assert t2i_ranks(sim, text_image).tolist() == t2i


def test_constant_scores_give_exactly_chance() -> None:
    # With every score tied, the expected recall of a random tie order is chance level.
    text_image = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    sim = np.zeros((5, 10))  # image 4 has no caption: a distractor only
    res = cross_modal_recall(sim, text_image, ks=(1, 3, 6))
    chance = chance_recall(5, 10, text_image, ks=(1, 3, 6))
    assert res["i2t"] == pytest.approx(chance["i2t"])
    assert res["t2i"] == pytest.approx(chance["t2i"])


def test_chance_recall_hand_and_enumeration() -> None:
    # 2 images, 3 texts: image 0 has 2 captions, image 1 has 1.
    res = chance_recall(2, 3, [0, 0, 1], ks=(1, 2))
    # K=1: (1 - 1/3 + 1 - 2/3) / 2; K=2: (1 + 1 - 1/3) / 2.
    assert res["i2t"] == pytest.approx({1: 50.0, 2: 250 / 3})
    assert res["t2i"] == pytest.approx({1: 50.0, 2: 100.0})
    # Exhaustive check against every ordering of 5 texts (hit rate of a random ranking).
    text_image = np.array([0, 0, 0, 1, 2])
    for k in (1, 2, 3):
        hits = [
            np.mean([any(perm[t] < k for t in np.flatnonzero(text_image == i)) for i in range(3)])
            for perm in itertools.permutations(range(5))
        ]
        assert chance_recall(3, 5, text_image, ks=(k,))["i2t"][k] == pytest.approx(100 * np.mean(hits))


def test_average_precision_hand_ties_and_no_positive() -> None:
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # Tie at 0.5: the negative is ranked first (pessimistic) -> AP = 1/2.
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0.5, 0.4], [0, 0]))
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    positives = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=bool)
    # The query with no positive is excluded: mean of 0.8333 and 1.0.
    assert mean_average_precision(scores, positives) == pytest.approx(100 * (5 / 6 + 1) / 2)
    with pytest.raises(ValueError):
        mean_average_precision(scores[1:2], positives[1:2])


def test_ranking_metrics_hand_computed() -> None:
    from rsir.metrics.retrieval import ranking_metrics

    # Ranking: items 3, 0, 4, 1, 2 (scores descending); positives {0, 1, 2}: hits at 2, 4, 5.
    scores = np.array([[0.8, 0.4, 0.1, 0.9, 0.5]])
    positives = np.array([[True, True, True, False, False]])
    m = ranking_metrics(scores, positives, ks=(1, 2, 4))
    assert m["AP"][0] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert [m[f"P@{k}"][0] for k in (1, 2, 4)] == pytest.approx([0.0, 1 / 2, 2 / 4])
    # R@k divides by every positive of the query (3), not by min(k, 3)
    assert [m[f"R@{k}"][0] for k in (1, 2, 4)] == pytest.approx([0.0, 1 / 3, 2 / 3])
    # k beyond the archive: all hits, still divided by k
    assert ranking_metrics(scores, positives, ks=(10,))["P@10"][0] == pytest.approx(0.3)
    # a tie is pessimistic: the non-positive tied with item 0 is ranked first
    tied = ranking_metrics(np.array([[0.5, 0.5, 0.1]]), np.array([[True, False, False]]), ks=(1,))
    assert tied["P@1"][0] == 0.0 and tied["AP"][0] == pytest.approx(0.5)
