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


# ---------------------------------------------------------------------------------------
# Translations, objects from files, Dubai-CCD band statistics
# ---------------------------------------------------------------------------------------


def test_translations_on_real_images(shared_data: Path, tmp_path: Path) -> None:
    import hashlib
    import json

    maker = load_maker("rsicd_real")
    paths = maker.make(tmp_path / "data", shared_data)
    tr = paths["translations"]
    # The files hold decomposed French and the shadda before the fatha; rows must not.
    assert "e\u0301" in (tr / "fr.json").read_text(encoding="utf-8")
    assert "\u0651\u064e" in (tr / "ar.json").read_text(encoding="utf-8")
    converter = CONVERTERS.build("rsicd", src=paths["src"],
                                 translations={lang: tr / f"{lang}.json" for lang in ("ar", "fr", "it")})
    result = run_conversion(converter, tmp_path / "out")
    assert (result.converted, result.quarantined) == (3, 2)
    assert quarantine_reasons(tmp_path / "out") == {
        "rsicd/dsifn_0_2": f"it: no translation of dsifn_0_2.png in {tr / 'it.json'}",
        "rsicd/dsifn_1_1": f"ar: 1 sentences for dsifn_1_1.png in {tr / 'ar.json'}, 2 in English",
    }
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    assert sorted(rows) == ["rsicd/dsifn_2_4", "rsicd/levir_test_102", "rsicd/levir_test_113"]
    for rid, row in rows.items():
        name = rid.split("/")[1] + ".png"
        assert row["captions"] == [{"text": t, "lang": lang} for lang in ("en", "ar", "fr", "it")
                                   for t in maker.CAPTIONS[lang][name]]
    captions = rows["rsicd/levir_test_113"]["captions"]
    assert captions[1]["text"] == "a parking lot beside a caf\u00e9 ."  # NFC for English too
    assert captions[3]["text"] == "موقف سي\u064e\u0651ارات بجانب مقهى ."
    assert captions[4]["text"] == "un terrain nu se trouve \u00e0 c\u00f4t\u00e9 de quelques b\u00e2timents ."
    assert decode_image(rows["rsicd/levir_test_113"]["image"]).shape == (384, 768, 3)
    # The conversion records each translation's sha256, and a changed file re-converts.
    options = json.loads((tmp_path / "out/_SUCCESS").read_text())["options"]
    assert {lang: t["sha256"] for lang, t in options["translations"].items()} == {
        lang: hashlib.sha256((tr / f"{lang}.json").read_bytes()).hexdigest() for lang in ("ar", "fr", "it")}
    again = run_conversion(converter, tmp_path / "out")
    assert (again.chunks_written, again.chunks_skipped) == (0, 1)
    fr = (tr / "fr.json").read_text(encoding="utf-8")
    (tr / "fr.json").write_text(fr.replace("un parking", "un grand parking"), encoding="utf-8")
    converter = CONVERTERS.build("rsicd", src=paths["src"],
                                 translations={lang: tr / f"{lang}.json" for lang in ("ar", "fr", "it")})
    changed = run_conversion(converter, tmp_path / "out")
    assert (changed.chunks_written, changed.chunks_skipped) == (1, 0)
    row = next(r for r in read_table(tmp_path / "out").to_pylist() if r["id"] == "rsicd/levir_test_113")
    assert row["captions"][5] == {"text": "un grand parking \u00e0 c\u00f4t\u00e9 d'un caf\u00e9 .", "lang": "fr"}


FRENCH = {  # the real RSICD precomp captions of the fixture's good images, translated
    "many planes are parked next to a long building in an airport .":
        "de nombreux avions sont garés à côté d'un long bâtiment dans un aéroport .",
    "some planes are parked in an airport .": "quelques avions sont garés dans un aéroport .",
    "the airport here is full of airplanes and containers .":
        "l'aéroport ici est plein d'avions et de conteneurs .",
    "many planes are parked in an airport near many runways .":
        "de nombreux avions sont garés dans un aéroport près de nombreuses pistes .",
    "there are many planes with same size in the airport .":
        "il y a beaucoup d'avions de même taille dans l'aéroport .",
    "the airport is very large .": "l'aéroport est très grand .",
    "next to the airport is green grass .": "à côté de l'aéroport, il y a de l'herbe verte .",
    "green grass on both sides of the runway .": "de l'herbe verte des deux côtés de la piste .",
    "the aircraft parked on the tarmac white .": "les avions blancs garés sur le tarmac .",
    "there are a lot of bare land around the airport .": "il y a beaucoup de terrain nu autour de l'aéroport .",
    "the airport has a lot of white planes .": "l'aéroport a beaucoup d'avions blancs .",
}


def test_precomp_translations(shared_data: Path, tmp_path: Path) -> None:
    load_maker("precomp").make(tmp_path / "src", shared_data, "rsicd")
    fr = tmp_path / "fr"
    fr.mkdir()
    for split in ("train", "test"):  # line for line, so the English filename files group them
        lines = (tmp_path / "src" / f"{split}_caps.txt").read_bytes().splitlines()
        translated = [FRENCH.get(line.decode("utf-8", "replace").strip(), "?") for line in lines]
        (fr / f"{split}_caps.txt").write_text("\n".join(translated) + "\n", encoding="utf-8")
    converter = CONVERTERS.build("rsicd-precomp", src=tmp_path / "src", translations={"fr": fr})
    result = run_conversion(converter, tmp_path / "out")
    assert (result.converted, result.quarantined) == (3, 3)  # the fixture's 3 bad records
    for row in read_table(tmp_path / "out").to_pylist():
        english = [c["text"] for c in row["captions"] if c["lang"] == "en"]
        assert len(english) == 5
        assert [c for c in row["captions"] if c["lang"] == "fr"] == [
            {"text": FRENCH[t], "lang": "fr"} for t in english]
    # A translation with its own filename file: one image left out, one with 4 lines.
    names = (tmp_path / "src/test_filename.txt").read_text().splitlines()
    caps = (fr / "test_caps.txt").read_text(encoding="utf-8").splitlines()
    keep = [i for i, n in enumerate(names) if n != "airport_349.jpg"][1:]  # airport_348: 4 lines
    (fr / "test_filename.txt").write_text("\n".join(names[i] for i in keep) + "\n")
    (fr / "test_caps.txt").write_text("\n".join(caps[i] for i in keep) + "\n", encoding="utf-8")
    converter = CONVERTERS.build("rsicd-precomp", src=tmp_path / "src", translations={"fr": fr})
    run_conversion(converter, tmp_path / "out")
    reasons = quarantine_reasons(tmp_path / "out")
    assert reasons["rsicd/airport_348"] == (
        f"fr: 4 sentences for test/airport_348.jpg in {fr / 'test_caps.txt'}, 5 in English")
    assert reasons["rsicd/airport_349"] == f"fr: no translation of test/airport_349.jpg in {fr}"


def test_objects_from_dota_and_coco_files(shared_data: Path, tmp_path: Path, capsys) -> None:
    from rsir.cli import main as rsir_main

    paths = load_maker("rsicd_real").make(tmp_path / "data", shared_data)
    result = run_conversion(CONVERTERS.build("rsicd", src=paths["src"], objects=paths["dota"]),
                            tmp_path / "dota")
    assert (result.converted, result.quarantined, result.with_objects) == (3, 2, 2)
    assert quarantine_reasons(tmp_path / "dota") == {
        "rsicd/dsifn_1_1": "dsifn_1_1.txt:4: vertex (300, 20) is outside the 256x256 image",
        "rsicd/dsifn_2_4": "dsifn_2_4.txt:1: 8 fields, expected 'x1 y1 x2 y2 x3 y3 x4 y4 category [difficult]'",
    }
    objects = {r["id"]: r["objects"] for r in read_table(tmp_path / "dota").to_pylist()}

    def approx(objs: list[dict]) -> list[dict]:  # stored as float32
        return [{**o, "box": pytest.approx(o["box"], abs=1e-6), "score": pytest.approx(o["score"])}
                for o in objs]

    assert objects == {
        "rsicd/levir_test_102": approx([
            {"box": [10 / 256, 20 / 256, 50 / 256, 60 / 256], "category": "small-vehicle", "score": 1.0},
            {"box": [100 / 256, 100 / 256, 150 / 256, 140 / 256], "category": "storage-tank", "score": 1.0}]),
        # 768 wide, 384 high: x over the width, y over the height
        "rsicd/levir_test_113": approx([
            {"box": [0.0, 0.0, 1.0, 1.0], "category": "plane", "score": 1.0},
            {"box": [0.5, 0.25, 0.625, 0.5], "category": "harbor", "score": 1.0}]),
        "rsicd/dsifn_0_2": [],  # no label file: no objects
    }
    # An edited label file changes the fingerprint: the chunk is converted again.
    (paths["dota"] / "dsifn_2_4.txt").write_text("1 2 3 4 5 6 7 8 bridge 0\n")
    again = run_conversion(CONVERTERS.build("rsicd", src=paths["src"], objects=paths["dota"]),
                           tmp_path / "dota")
    assert (again.chunks_written, again.converted, again.with_objects) == (1, 4, 3)

    # The same through the CLI with the COCO JSON: scores kept, sizes checked.
    argv = ["convert", "rsicd", "--src", str(paths["src"]), "--out", str(tmp_path / "coco"),
            "--objects", str(paths["coco"]), "--no-progress", "--max-bad-fraction", "0.5"]
    assert rsir_main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"rsicd: 2 of 4 rows have objects from {paths['coco']}"
    assert quarantine_reasons(tmp_path / "coco") == {
        "rsicd/dsifn_1_1": "coco.json: dsifn_1_1.png is 512x512 in the JSON, 256x256 decoded"}
    objects = {r["id"]: r["objects"] for r in read_table(tmp_path / "coco").to_pylist()}
    assert objects == {
        "rsicd/levir_test_102": approx([
            {"box": [10 / 256, 20 / 256, 50 / 256, 60 / 256], "category": "large-vehicle", "score": 0.9}]),
        "rsicd/levir_test_113": approx([
            {"box": [0.5, 0.25, 0.625, 0.5], "category": "harbor", "score": 1.0}]),
        "rsicd/dsifn_0_2": [], "rsicd/dsifn_2_4": [],
    }


def test_dubai_ccd_band_stats_of_the_training_pairs(shared_data: Path, tmp_path: Path) -> None:
    import json

    tifffile = pytest.importorskip("tifffile")
    load_maker("dubai_ccd").make(tmp_path / "src", shared_data)
    out = tmp_path / "out"
    run_conversion(CONVERTERS.build("dubai-ccd", src=tmp_path / "src"), out, chunk_size=4)
    stats = json.loads((out / "_meta/band_stats.json").read_text())
    # numpy on the source tiles of the converted training pairs (the quarantined one is out)
    train = sorted(r["id"].split("/")[1] for r in read_table(out).to_pylist() if r["split"] == "train")
    assert len(train) == 2
    bands = ["R", "G", "B", "NIR", "SWIR", "MIR"]
    pixels = []
    for tile in train:
        for date in ("500_2000", "500_2010"):
            folder = tmp_path / "src/imgs_tiles"
            stack = np.concatenate([tifffile.imread(folder / "RGB" / date / f"{tile}.tif")]
                                   + [tifffile.imread(folder / b / date / f"{tile}.tif")[:, :, None]
                                      for b in ("NIR", "SWIR", "MIR")], axis=2)
            pixels.append(stack.reshape(-1, 6) / 255.0)
    pixels = np.concatenate(pixels)
    assert stats["bands"] == bands and stats["split"] == "train"
    assert stats["n_pixels"] == pixels.shape[0] == 2 * 2 * 50 * 50
    np.testing.assert_allclose(stats["mean"], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(0), rtol=1e-9)
    # A re-run that skips every chunk rebuilds the same file from the manifests.
    first = (out / "_meta/band_stats.json").read_text()
    again = run_conversion(CONVERTERS.build("dubai-ccd", src=tmp_path / "src"), out, chunk_size=4)
    assert again.chunks_written == 0 and (out / "_meta/band_stats.json").read_text() == first
    # and a recipe normalises with them, in its own band order
    from rsir.config import load_config
    from test_config import REPO

    cfg = load_config(REPO / "configs/dubaiccd_gff_sub.yaml", [f"data.shards={out}", "data.bands=[MIR, R]"])
    assert cfg.data.mean == pytest.approx([pixels[:, 5].mean(), pixels[:, 0].mean()], rel=1e-12)
    assert cfg.data.std == pytest.approx([pixels[:, 5].std(), pixels[:, 0].std()], rel=1e-9)


@pytest.mark.parametrize("dataset", ["dubai-ccd", "levir-cc"])
def test_change_caption_translations(shared_data: Path, tmp_path: Path, dataset: str) -> None:
    """Dubai-CCD: a folder with its three caption files; LEVIR-CC: one JSON."""
    import json

    if dataset == "dubai-ccd":
        pytest.importorskip("tifffile")
    expected = load_maker(dataset.replace("-", "_")).make(tmp_path / "src", shared_data)
    it = tmp_path / "it"
    it.mkdir()
    files = (sorted((tmp_path / "src/description_jsontr_te_val").glob("*.json")) if dataset == "dubai-ccd"
             else [tmp_path / "src/LevirCCcaptions.json"])
    for file in files:
        data = json.loads(file.read_bytes().decode("utf-8", "replace"))
        for item in data["images"]:
            item["sentences"] = [{"raw": f"frase {i} della coppia {item['filename']}"}
                                 for i in range(len(item["sentences"]))]
        if file == files[-1]:
            dropped = data["images"].pop(0)["filename"]
        (it / file.name).write_text(json.dumps(data))
    path = it if dataset == "dubai-ccd" else it / files[0].name
    run_conversion(CONVERTERS.build(dataset, src=tmp_path / "src", translations={"it": path}),
                   tmp_path / "out")
    reasons = quarantine_reasons(tmp_path / "out")
    assert reasons.pop(f"{dataset}/{Path(dropped).stem}") == f"it: no translation of {dropped} in {path}"
    assert_reasons(reasons, expected["bad"])
    rows = read_table(tmp_path / "out").to_pylist()
    assert len(rows) == len(expected["good"]) - 1
    suffix = ".tif" if dataset == "dubai-ccd" else ".png"
    for row in rows:
        filename = row["id"].split("/")[1] + suffix
        assert [c for c in row["captions"] if c["lang"] == "it"] == [
            {"text": f"frase {i} della coppia {filename}", "lang": "it"} for i in range(5)]


def test_translations_are_checked_up_front(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError, match="patternnet has no captions to translate"):
        CONVERTERS.build("patternnet", src=tmp_path / "src", translations={"fr": tmp_path})
    with pytest.raises(ValueError, match="translation language 'EN' is not an ISO 639-1 code"):
        CONVERTERS.build("rsicd", src=tmp_path / "src", translations={"EN": tmp_path})
    with pytest.raises(FileNotFoundError, match="fr translation .*/missing.json does not exist"):
        CONVERTERS.build("rsicd", src=tmp_path / "src", translations={"fr": tmp_path / "missing.json"})
