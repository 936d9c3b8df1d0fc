"""WEICOM against a hand computation; the PATTERNCOM protocol on a 7-image archive."""

from __future__ import annotations

import numpy as np
import pytest

from rsir.retrieval.composed import (
    average,
    composed_scores,
    image_only,
    lambda_sweep,
    normalize_similarities,
    patterncom_eval,
    text_only,
    weicom,
)

PHI1 = 0.8413447460685429  # standard-normal CDF at 1


def test_weicom_hand_computed() -> None:
    img = np.array([[1.0, 2.0, 3.0]])  # mean 2, unbiased std 1 -> z = -1, 0, 1
    txt = np.array([[3.0, 1.0, 2.0]])  # z = 1, -1, 0
    assert normalize_similarities(img) == pytest.approx(np.array([[1 - PHI1, 0.5, PHI1]]))
    expected = [
        0.25 * PHI1 + 0.75 * (1 - PHI1),
        0.25 * (1 - PHI1) + 0.75 * 0.5,
        0.25 * 0.5 + 0.75 * PHI1,
    ]
    assert weicom(img, txt, 0.25)[0] == pytest.approx(expected)
    assert composed_scores("weicom", img, txt, 0.25)[0] == pytest.approx(expected)
    # Constant rows carry no information: 0.5 everywhere, not NaN.
    assert normalize_similarities(np.ones((1, 4)))[0].tolist() == [0.5] * 4


def test_baselines() -> None:
    img, txt = np.array([[0.2, 0.4]]), np.array([[0.6, 0.0]])
    assert average(img, txt)[0] == pytest.approx([0.4, 0.2])
    assert text_only(img, txt)[0].tolist() == [0.6, 0.0]
    assert image_only(img, txt)[0].tolist() == [0.2, 0.4]
    with pytest.raises(KeyError, match="valid"):
        composed_scores("nope", img, txt)
    with pytest.raises(ValueError):
        weicom(img, txt, 1.5)


# Archive: pool images 0-3 (3 has no shape), a lake 4, a ferry terminal 5 and a harbor 6
# (both merged into "pier" for relevance).
IDS = [f"img{i}" for i in range(7)]
CLASSES = ["swimmingpool"] * 4 + ["lake", "ferryterminal", "harbor"]
ATTRS = [
    {"shape": "rect"}, {"shape": "oval"}, {"shape": "oval"}, {},
    {"shape": "oval"}, {"color": "red"}, {"color": "blue"},
]
IMAGE_SIMS = np.array([
    [1.0, 0.2, 0.9, 0.5, 0.8, 0.0, 0.0],
    [0.3, 1.0, 0.6, 0.1, 0.2, 0.0, 0.0],
    [0.7, 0.5, 1.0, 0.1, 0.2, 0.0, 0.0],
    [0.0] * 7,
    [0.0] * 7,
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.4],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 1.0],
])
TEXT_SIMS = {
    "oval": np.array([0.1, 0.9, 0.8, 0.0, 0.95, 0.0, 0.0]),
    "rect": np.array([0.9, 0.1, 0.2, 0.3, 0.0, 0.0, 0.0]),
    "blue": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.7]),
    "red": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.5]),
}


def test_patterncom_image_only_hand_computed() -> None:
    res = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, TEXT_SIMS, method="image_only")
    # shape queries: (0, oval) positives {1, 2} at ranks 5 and 2 -> (1/2 + 2/5) / 2;
    # (1, rect) positive 0 at rank 3 -> 1/3; (2, rect) positive 0 at rank 2 -> 1/2.
    # The lake (only "oval" in its class) makes no query.
    assert res["n_queries"] == {"color": 2, "shape": 3}
    assert res["per_attribute"]["shape"] == pytest.approx(100 * (0.45 + 1 / 3 + 0.5) / 3)
    # color: merged pier class; each query finds the other image at rank 2.
    assert res["per_attribute"]["color"] == pytest.approx(50.0)
    assert res["mAP"] == pytest.approx((100 * (0.45 + 1 / 3 + 0.5) / 3 + 50.0) / 2)
    assert ("img0", "shape", "oval", pytest.approx(0.45)) in res["queries"]


def test_patterncom_text_only_and_callable_text_sims() -> None:
    def encode(texts: list[str]) -> np.ndarray:
        return np.stack([TEXT_SIMS[t] for t in texts])

    res = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, encode, method="text_only")
    # (0, oval): positives 1, 2 at ranks 2, 3 -> (1/2 + 2/3) / 2; rect queries: rank 1.
    assert res["per_attribute"]["shape"] == pytest.approx(100 * ((0.5 + 2 / 3) / 2 + 2) / 3)
    assert res["per_attribute"]["color"] == pytest.approx(100.0)


def test_lambda_sweep_endpoints_match_unimodal_rankings() -> None:
    table = lambda_sweep(IDS, CLASSES, ATTRS, IMAGE_SIMS, TEXT_SIMS)
    assert list(table) == [round(0.1 * i, 1) for i in range(11)]
    img = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, TEXT_SIMS, method="image_only")
    txt = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, TEXT_SIMS, method="text_only")
    # Phi(z) is monotone per row: lambda 0 ranks like the image, lambda 1 like the text.
    assert table[0.0] == pytest.approx({**img["per_attribute"], "avg": img["mAP"]})
    assert table[1.0] == pytest.approx({**txt["per_attribute"], "avg": txt["mAP"]})


def test_composed_gallery_examples_follow_the_text_at_lambda_one() -> None:
    from rsir.report import composed_examples

    def encode(texts: list[str]) -> np.ndarray:
        return np.stack([TEXT_SIMS[t] for t in texts])

    ex = composed_examples(IDS, CLASSES, ATTRS, IMAGE_SIMS, encode, lam=1.0, k=5)
    assert [(e["query"], e["attribute"], e["text"]) for e in ex] == [
        ("img6", "color", "red"), ("img1", "shape", "rect")]
    # λ = 1 ranks by Φ(z) of the text row: "red" puts the ferry terminal first (same merged
    # class "pier", colour red -> relevant); "rect" puts pool img0 first, then img3 (no shape).
    assert ex[0]["top"][0] == "img5" and ex[0]["relevant"][0]
    assert ex[1]["top"] == ["img0", "img3", "img2", "img1", "img4"]
    assert ex[1]["relevant"] == [True, False, False, False, False]


def test_prepared_campaign_trial_equals_weicom_for_every_lambda() -> None:
    from rsir.tune.posthoc import prepare_weicom, score_weicom

    payload = {"ids": IDS, "classes": CLASSES, "attributes": ATTRS, "image_sims": IMAGE_SIMS,
               "text_sims": TEXT_SIMS}
    prepared = prepare_weicom(payload)
    for lam in (0.0, 0.3, 0.7, 1.0):
        direct = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, TEXT_SIMS, "weicom", lam)
        trial = score_weicom(prepared, lam)
        assert trial["val_mAP"] == pytest.approx(direct["mAP"], abs=1e-12)
        assert trial["val_mAP_shape"] == pytest.approx(direct["per_attribute"]["shape"], abs=1e-12)
