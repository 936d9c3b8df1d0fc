"""Each converter on a tiny fixture in its dataset's real layout (real annotations where shared)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rsir.data.converters import CONVERTERS, read_quarantine, run_conversion
from rsir.data.schema import attributes_dict, decode_image, read_table
from test_converters import load_maker


def quarantine_reasons(out: Path) -> dict[str, str]:
    return {r["record"]: r["reason"] for r in read_quarantine(out).to_pylist()}


def assert_reasons(found: dict[str, str], expected: dict[str, str]) -> None:
    assert sorted(found) == sorted(expected)
    for record, reason in expected.items():
        assert reason in found[record], (record, found[record])


def test_levir_cc(shared_data: Path, tmp_path: Path) -> None:
    expected = load_maker("levir_cc").make(tmp_path / "src", shared_data)
    result = run_conversion(CONVERTERS.build("levir-cc", src=tmp_path / "src"), tmp_path / "out")
    assert (result.converted, result.quarantined) == (7, 6)
    assert_reasons(quarantine_reasons(tmp_path / "out"), expected["bad"])
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    assert {i: r["changed"] for i, r in rows.items()} == expected["good"]
    assert Counter(r["changed"] for r in rows.values()) == Counter({False: 4, True: 3})
    assert Counter(r["split"] for r in rows.values()) == Counter({"val": 3, "train": 2, "test": 2})
    for row in rows.values():
        assert len(row["captions"]) == 5 and {c["lang"] for c in row["captions"]} == {"en"}
        assert row["bands"] == ["R", "G", "B"]
        a, b = decode_image(row["image"]), decode_image(row["image_t2"])
        assert a.shape == b.shape == (256, 256, 3)
    assert rows["levir-cc/val_900001"]["source"] == "images/val/A/val_900001.png"
    # Real PNG pairs are stored byte for byte.
    src_png = tmp_path / "src/images/val/B/val_900001.png"
    assert rows["levir-cc/val_900001"]["image_t2"] == src_png.read_bytes()


def test_dubai_ccd_six_bands(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tifffile")
    expected = load_maker("dubai_ccd").make(tmp_path / "src", shared_data)
    result = run_conversion(CONVERTERS.build("dubai-ccd", src=tmp_path / "src"), tmp_path / "out")
    assert (result.converted, result.quarantined) == (7, 2)
    assert_reasons(quarantine_reasons(tmp_path / "out"), expected["bad"])
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    assert sorted(rows) == sorted(expected["good"])
    assert Counter(r["split"] for r in rows.values()) == Counter({"train": 2, "val": 3, "test": 2})
    for row in rows.values():
        assert row["bands"] == ["R", "G", "B", "NIR", "SWIR", "MIR"]
        assert row["image"][:6] == b"\x93NUMPY"
        a, b = decode_image(row["image"]), decode_image(row["image_t2"])
        assert a.shape == b.shape == (50, 50, 6) and a.dtype == np.uint8
        assert len(row["captions"]) == 5
    # The RGB bands are the real Landsat crop written into the tile.
    tile = rows["dubai-ccd/1x4"]
    import tifffile

    rgb = tifffile.imread(tmp_path / "src/imgs_tiles/RGB/500_2000/1x4.tif")
    np.testing.assert_array_equal(decode_image(tile["image"])[:, :, :3], rgb)
    # Change flags from the caption rule: only 9x46 ("The crossroads was extended.", ...)
    # describes a change; the others say "Nothing has changed." five ways.
    assert {i: r["changed"] for i, r in rows.items()} == {
        "dubai-ccd/1x4": False, "dubai-ccd/5x31": False, "dubai-ccd/8x34": False,
        "dubai-ccd/8x50": False, "dubai-ccd/9x46": True, "dubai-ccd/0x0": False,
        "dubai-ccd/6x35": False,
    }


@pytest.mark.parametrize("dataset", ["rsicd", "rsitmd", "ucm", "sydney"])
def test_precomp(shared_data: Path, tmp_path: Path, dataset: str) -> None:
    if dataset != "rsicd":
        pytest.importorskip("tifffile")
    expected = load_maker("precomp").make(tmp_path / "src", shared_data, dataset)
    converter = CONVERTERS.build(f"{dataset}-precomp", src=tmp_path / "src")
    result = run_conversion(converter, tmp_path / "out")
    # Per split 3 images; train: 1 corrupt, 1 non-UTF-8 caption; test: 1 missing image.
    # RSITMD adds its real training image whose five caption lines are empty.
    assert (result.converted, result.quarantined) == (3, 4 if dataset == "rsitmd" else 3)
    assert_reasons(quarantine_reasons(tmp_path / "out"), expected["bad"])
    rows = read_table(tmp_path / "out").to_pylist()
    assert {r["id"]: (r["split"], len(r["captions"])) for r in rows} == expected["good"]
    assert all(n == 5 for _, n in expected["good"].values())
    for row in rows:
        assert decode_image(row["image"]).shape == (8, 8, 3) and row["bands"] == ["R", "G", "B"]
        assert all(c["text"] and c["lang"] == "en" for c in row["captions"])
    # The captions are the real lines of the released file.
    first = next(r for r in rows if r["split"] == "test")
    lines = (tmp_path / "src/test_caps.txt").read_text().splitlines()
    assert [c["text"] for c in first["captions"]] == [line.strip() for line in lines[:5]]


@pytest.mark.parametrize("dataset", ["rsicd", "ucm-captions", "sydney-captions", "rsitmd"])
def test_karpathy_json(tmp_path: Path, dataset: str) -> None:
    if dataset != "rsicd":
        pytest.importorskip("tifffile")
    expected = load_maker("karpathy").make(tmp_path / "src", dataset)
    result = run_conversion(CONVERTERS.build(dataset, src=tmp_path / "src"), tmp_path / "out")
    assert (result.converted, result.quarantined) == (4, 3)
    assert_reasons(quarantine_reasons(tmp_path / "out"), expected["bad"])
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    assert {i: r["split"] for i, r in rows.items()} == expected["good"]
    for rid, row in rows.items():
        assert len(row["captions"]) == 5
        keywords = attributes_dict(row["attributes"]).get("keywords")
        assert keywords == (f"scene, keyword{rid.split('_')[-1]}" if dataset == "rsitmd" else None)


def test_patternnet_and_composed_queries(tmp_path: Path) -> None:
    expected = load_maker("patternnet").make(tmp_path / "src")
    result = run_conversion(CONVERTERS.build("patternnet", src=tmp_path / "src"), tmp_path / "out")
    assert (result.converted, result.quarantined) == (expected["n_images"], 3)
    assert result.extra_tables == {"composed_queries": 9}
    assert_reasons(quarantine_reasons(tmp_path / "out"), expected["bad"])
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    assert len(rows) == 15 and {r["split"] for r in rows.values()} == {"test"}
    assert rows["patternnet/denseresidential001"]["class_name"] == "denseresidential"
    assert attributes_dict(rows["patternnet/airplane001"]["attributes"]) == {"color": "white", "shape": "swept"}
    assert attributes_dict(rows["patternnet/airplane004"]["attributes"]) == {"shape": "straight"}
    assert rows["patternnet/parkinglot002"]["captions"] == []

    queries = pq.read_table(tmp_path / "out/_meta/composed_queries.parquet").to_pylist()
    found = {(q["attribute"], q["query_image"].split("/")[1] + ".jpg", q["text"]):
             [p.split("/")[1] for p in q["positives"]] for q in queries}
    assert found == expected["queries"]
    q = next(q for q in queries if q["query_image"] == "patternnet/sparseresidential004")
    assert (q["query_class"], q["query_value"], q["query_id"]) == (
        "residential", "sparse", "density/patternnet/sparseresidential004/dense")

    # The evaluation's own PATTERNCOM protocol forms the same number of queries per attribute.
    pytest.importorskip("scipy")
    from rsir.retrieval.composed import patterncom_eval

    ids = list(rows)
    classes = [rows[i]["class_name"] for i in ids]
    attrs = [attributes_dict(rows[i]["attributes"]) for i in ids]
    sims = np.random.default_rng(0).random((len(ids), len(ids)))
    text_sims = {v: np.random.default_rng(1).random(len(ids)) for a in attrs for v in a.values()}
    res = patterncom_eval(ids, classes, attrs, sims, text_sims)
    assert res["n_queries"] == dict(Counter(q["attribute"] for q in queries)) == {"color": 5, "density": 2, "shape": 2}


def test_patternnet_reconversion_follows_a_changed_patterncom_csv(tmp_path: Path) -> None:
    load_maker("patternnet").make(tmp_path / "src")
    out = tmp_path / "out"
    run_conversion(CONVERTERS.build("patternnet", src=tmp_path / "src"), out, chunk_size=4)
    again = run_conversion(CONVERTERS.build("patternnet", src=tmp_path / "src"), out, chunk_size=4)
    assert again.chunks_written == 0 and again.chunks_skipped == 4  # nothing changed: skipped
    before = pq.read_table(out / "_meta/composed_queries.parquet").to_pylist()

    csv_path = tmp_path / "src/PatternCom/shape.csv"
    csv_path.write_text(csv_path.read_text().replace("airplane004.jpg,shape,straight",
                                                     "airplane004.jpg,shape,swept"))
    third = run_conversion(CONVERTERS.build("patternnet", src=tmp_path / "src"), out, chunk_size=4)
    assert third.chunks_skipped == 0 and third.chunks_written == 4  # the CSV is in the fingerprint
    rows = {r["id"]: r for r in read_table(out).to_pylist()}
    assert attributes_dict(rows["patternnet/airplane004"]["attributes"]) == {"shape": "swept"}
    after = pq.read_table(out / "_meta/composed_queries.parquet").to_pylist()
    # both airplanes are "swept" now: no shape query is left
    assert {q["attribute"] for q in before} == {"color", "density", "shape"}
    assert {q["attribute"] for q in after} == {"color", "density"}
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["options"]["patterncom_sha256"]["shape.csv"] == hashlib.sha256(
        csv_path.read_bytes()).hexdigest()
