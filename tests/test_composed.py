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
# (both merged into "pier", for relevance and, for existence, for forming queries).
IDS = [f"img{i}" for i in range(7)]
CLASSES = ["swimmingpool"] * 4 + ["lake", "ferryterminal", "harbor"]
ATTRS = [
    {"shape": "rect"}, {"shape": "oval"}, {"shape": "oval"}, {},
    {"shape": "oval"}, {"existence": "ships"}, {"existence": "empty"},
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
    "empty": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.7]),
    "ships": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.5]),
}


def test_patterncom_image_only_hand_computed() -> None:
    res = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, TEXT_SIMS, method="image_only")
    # shape queries: (0, oval) positives {1, 2} at ranks 5 and 2 -> (1/2 + 2/5) / 2;
    # (1, rect) positive 0 at rank 3 -> 1/3; (2, rect) positive 0 at rank 2 -> 1/2.
    # The lake (only "oval" in its class) makes no query.
    assert res["n_queries"] == {"existence": 2, "shape": 3}
    assert res["per_attribute"]["shape"] == pytest.approx(100 * (0.45 + 1 / 3 + 0.5) / 3)
    # existence: merged pier class; each query finds the other image at rank 2.
    assert res["per_attribute"]["existence"] == pytest.approx(50.0)
    assert res["mAP"] == pytest.approx((100 * (0.45 + 1 / 3 + 0.5) / 3 + 50.0) / 2)
    assert ("img0", "shape", "oval", pytest.approx(0.45)) in res["queries"]
    # P@k = hits in the top k / k, R@k = hits / all positives (k beyond N=7 still divides by k):
    # shape hits in the top 5: 2, 1, 1 of 2, 1, 1 positives.
    shape = res["at_k"]["shape"]
    assert shape["P@5"] == pytest.approx(100 * (2 / 5 + 1 / 5 + 1 / 5) / 3)
    assert shape["P@10"] == pytest.approx(100 * (2 / 10 + 1 / 10 + 1 / 10) / 3)
    assert shape["R@5"] == pytest.approx(100.0) and set(shape) == {
        f"{m}@{k}" for m in "PR" for k in (5, 10, 15, 20)}
    assert res["at_k"]["existence"]["P@5"] == pytest.approx(100 * 1 / 5)
    assert res["at_k_mean"]["P@5"] == pytest.approx((shape["P@5"] + 20.0) / 2)


def test_patterncom_text_only_and_callable_text_sims() -> None:
    def encode(texts: list[str]) -> np.ndarray:
        return np.stack([TEXT_SIMS[t] for t in texts])

    res = patterncom_eval(IDS, CLASSES, ATTRS, IMAGE_SIMS, encode, method="text_only")
    # (0, oval): positives 1, 2 at ranks 2, 3 -> (1/2 + 2/3) / 2; rect queries: rank 1.
    assert res["per_attribute"]["shape"] == pytest.approx(100 * ((0.5 + 2 / 3) / 2 + 2) / 3)
    assert res["per_attribute"]["existence"] == pytest.approx(100.0)


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
        ("img6", "existence", "ships"), ("img1", "shape", "rect")]
    # λ = 1 ranks by Φ(z) of the text row: "ships" puts the ferry terminal first (same merged
    # class "pier", value "ships" -> relevant); "rect" puts pool img0 first, then img3 (no shape).
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


# ---------------------------------------------------------------------------------------
# The authors' query rule and metrics, re-implemented straight from billpsomas/rscir
# (evaluate.py: read_csv, create_prompts, metrics_calc, calculate_rankings; utils.py:
# class_mapping, fix_query_attributelabels, norm_cdf), on a generated PatternNet layout
# where merging per attribute and merging globally form different queries.
# ---------------------------------------------------------------------------------------

AUTHORS_CLASS_MAPPING = {
    "denseresidential": "residential", "sparseresidential": "residential",
    "closedroad": "road", "intersection": "road", "bridge": "roadpass", "overpass": "roadpass",
    "ferryterminal": "pier", "harbor": "pier", "parkingspace": "parking", "parkinglot": "parking",
}


def authors_fix_query_attributelabels(attribute: str, labels: list[str]) -> list[str]:
    replacements = {
        "density": [("densitydenseresidential", "densityresidential"),
                    ("densitysparseresidential", "densityresidential")],
        "shape": [("shapeclosedroad", "shaperoad"), ("shapeintersection", "shaperoad")],
        "context": [("contextbridge", "contextroadpass"), ("contextoverpass", "contextroadpass")],
        "existence": [("existenceferryterminal", "existencepier"),
                      ("existenceharbor", "existencepier"),
                      ("existenceparkingspace", "existenceparking"),
                      ("existenceparkinglot", "existenceparking")],
    }
    for old, new in replacements.get(attribute, []):
        labels = [x.replace(old, new) for x in labels]
    return labels


def authors_queries(csv_dir, attribute: str):
    """(query file, prompt) -> [relevant files] of one attribute CSV, as evaluate.py."""
    import csv
    import re

    with open(csv_dir / f"{attribute}.csv", newline="") as f:
        rows = list(csv.reader(f))
    filenames = [r[0] for r in rows]
    attributes = [r[1] for r in rows]
    values = [r[2] for r in rows]
    labels = [re.split(r"\d", path)[0] for path in filenames]
    attributelabels = authors_fix_query_attributelabels(
        attribute, [x + labels[i] for i, x in enumerate(attributes)])
    paired = list(zip(attributelabels, values))
    category_to_attributes: dict[str, set[str]] = {}
    for category, value in paired:
        category_to_attributes.setdefault(category, set()).add(value)
    prompts = [list(category_to_attributes[category] - {value}) for category, value in paired]
    out = {}
    for i, query_file in enumerate(filenames):
        query_class = AUTHORS_CLASS_MAPPING.get(labels[i], labels[i])
        for prompt in prompts[i]:
            out[(query_file, prompt)] = sorted(
                filenames[j] for j in range(len(filenames))
                if values[j] == prompt and AUTHORS_CLASS_MAPPING.get(labels[j], labels[j]) == query_class)
    return out


def authors_metrics(sim_img, sim_text, lam, is_positive, at=(5, 10, 15, 20)):
    """metrics_calc of one query under "Weighted Similarities Norm" (no rounding)."""
    import math

    def norm_cdf(v):
        mean, std = v.mean(), v.std(ddof=1)
        return [0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2.0)))) for x in v]

    scores = [(1 - lam) * a + lam * b for a, b in zip(norm_cdf(sim_img), norm_cdf(sim_text))]
    rankings = sorted(range(len(scores)), key=lambda i: -scores[i])
    is_relevant = [is_positive[i] for i in rankings]
    precisions, relevant_count = [], 0
    for k, rel in enumerate(is_relevant, start=1):
        if rel:
            relevant_count += 1
            precisions.append(relevant_count / k)
    metrics = {"AP": sum(precisions) / len(precisions) if precisions else 0}
    total_relevant = sum(is_relevant)
    for k in at:
        metrics[f"P@{k}"] = sum(is_relevant[:k]) / k
        metrics[f"R@{k}"] = sum(is_relevant[:k]) / total_relevant
    return metrics


def _generated_patternnet(root, seed: int = 0):
    """Every merged class plus two plain ones, 6 images each; each attribute annotates a
    random half of the images with one of 3 values."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folders = ["dense_residential", "sparse_residential", "closed_road", "intersection", "bridge",
               "overpass", "ferry_terminal", "harbor", "parking_space", "parking_lot", "airplane",
               "runway"]
    files = []
    for folder in folders:
        for i in range(1, 7):
            path = root / "images" / folder / f"{folder.replace('_', '')}{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            files.append(path.name)
    (root / "PatternCom").mkdir()
    attributes = ("color", "shape", "density", "context", "existence", "quantity")
    for attribute in attributes:
        chosen = [f for f in files if rng.random() < 0.5]
        lines = [f"{f},{attribute},{attribute}{rng.integers(3)}" for f in chosen]
        (root / "PatternCom" / f"{attribute}.csv").write_text("\n".join(lines) + "\n")
    return attributes


def test_queries_and_metrics_equal_the_authors_code_on_a_generated_layout(tmp_path) -> None:
    import pyarrow.parquet as pq

    from rsir.data.converters import CONVERTERS, run_conversion
    from rsir.data.schema import attributes_dict, read_table

    attributes = _generated_patternnet(tmp_path / "src")
    run_conversion(CONVERTERS.build("patternnet", src=tmp_path / "src"), tmp_path / "out")
    table = pq.read_table(tmp_path / "out/_meta/composed_queries.parquet").to_pylist()
    ours = {(q["attribute"], q["query_image"].split("/")[1] + ".jpg", q["text"]):
            [p.split("/")[1] + ".jpg" for p in q["positives"]] for q in table}
    theirs = {(a, f, t): pos for a in attributes
              for (f, t), pos in authors_queries(tmp_path / "src/PatternCom", a).items()}
    assert ours == theirs

    # The evaluation forms the same queries from the shard rows, and scores them as the
    # authors' metrics_calc does.
    rows = read_table(tmp_path / "out").to_pylist()
    ids = [r["id"] for r in rows]
    classes = [r["class_name"] for r in rows]
    attrs = [attributes_dict(r["attributes"]) for r in rows]
    rng = np.random.default_rng(1)
    image_sims = rng.random((len(ids), len(ids)))
    values = sorted({v for a in attrs for v in a.values()})
    text_sims = dict(zip(values, rng.random((len(values), len(ids)))))
    lam = 0.6
    res = patterncom_eval(ids, classes, attrs, image_sims, text_sims, "weicom", lam)
    index = {i.split("/")[1] + ".jpg": n for n, i in enumerate(ids)}
    expected: dict[str, dict[str, list[float]]] = {}
    for (attribute, query_file, text), positives in theirs.items():
        is_positive = np.isin(np.arange(len(ids)), [index[p] for p in positives])
        m = authors_metrics(image_sims[index[query_file]], text_sims[text], lam, is_positive)
        for name, v in m.items():
            expected.setdefault(attribute, {}).setdefault(name, []).append(v)
    assert res["n_queries"] == {a: len(m["AP"]) for a, m in expected.items()}
    for attribute, m in expected.items():
        assert res["per_attribute"][attribute] == pytest.approx(100 * np.mean(m["AP"]), abs=1e-9)
        for name in m:
            if name != "AP":
                assert res["at_k"][attribute][name] == pytest.approx(100 * np.mean(m[name]), abs=1e-9)

    # The layout tells the two readings apart: merging the query groups globally (the rule
    # this replaced) forms other queries.
    from rsir.retrieval.composed import PATTERNCOM_CLASS_MAPPING, composed_queries

    everywhere = {a: PATTERNCOM_CLASS_MAPPING for a in attributes}
    global_reading = composed_queries(ids, classes, attrs, text_sims, query_merges=everywhere)
    per_attribute = composed_queries(ids, classes, attrs, text_sims)
    assert sum(len(a.q_idx) for a in global_reading.attributes) > sum(
        len(a.q_idx) for a in per_attribute.attributes) == len(theirs)
