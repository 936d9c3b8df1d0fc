"""Converters: shared rules (change flag, TIFF bands, validation), resumable writes, the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest

from rsir.cli import main as rsir_main
from rsir.data.converters import CONVERTERS, infer_changed, read_quarantine, run_conversion
from rsir.data.converters.base import read_image
from rsir.data.schema import decode_image, read_table

DATA = Path(__file__).parent / "data"


def load_maker(dataset: str) -> ModuleType:
    """``tests/data/<dataset>/make_data.py`` as a module (the folders are not packages)."""
    spec = importlib.util.spec_from_file_location(f"make_{dataset}", DATA / dataset / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registry_lists_every_dataset() -> None:
    assert CONVERTERS.names() == [
        "dubai-ccd", "levir-cc", "patternnet", "rsicd", "rsicd-precomp", "rsitmd",
        "rsitmd-precomp", "sydney-captions", "sydney-precomp", "ucm-captions", "ucm-precomp",
    ]
    with pytest.raises(KeyError, match="valid: dubai-ccd, levir-cc"):
        CONVERTERS.get("levir")


def test_change_rule_reproduces_levir_inferred_flags(shared_data: Path) -> None:
    data = json.loads((shared_data / "captions/levir_cc/LevirCCcaptions.reconstructed.json").read_text())
    flags = [infer_changed(s["raw"] for s in im["sentences"]) for im in data["images"]]
    assert len(flags) == 10077
    assert sum(f == bool(im["changeflag_inferred"]) for f, im in zip(flags, data["images"])) == 10077
    assert sum(flags) == 5038
    assert infer_changed(["Nothing has changed.", "All is the same.", "A road was built.",
                          "No change to mention.", "Some houses appear."]) is False
    assert infer_changed(["Nothing has changed.", "A road was built.", "Houses appear."]) is True


def test_real_geotiffs_keep_every_band(shared_data: Path) -> None:
    pytest.importorskip("tifffile")
    rgb, raw = read_image(shared_data / "images/multispectral/RGB.byte.tif")
    assert raw is None and rgb.shape == (718, 791, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), [29.948, 44.516, 48.113], atol=1e-3)
    rgbn, _ = read_image(shared_data / "images/multispectral/rgbn.tif")  # LZW: needs imagecodecs
    assert rgbn.shape == (403, 515, 4)
    np.testing.assert_allclose(rgbn.reshape(-1, 4).mean(0), [119.604, 125.665, 125.035, 116.102],
                               atol=1e-3)


def test_resume_is_idempotent_and_redoes_only_unfinished_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    expected = load_maker("karpathy").make(src, "rsicd")
    out = tmp_path / "out"
    converter = CONVERTERS.build("rsicd", src=src)
    first = run_conversion(converter, out, chunk_size=2)
    assert (first.converted, first.quarantined, first.chunks_written) == (4, 3, 4)
    shards = sorted(out.glob("part-*.parquet"))
    # Chunks 2 and 3 hold only bad records: no shard, but a manifest and quarantine part.
    assert [p.name for p in shards] == ["part-00000-00000.parquet", "part-00001-00000.parquet"]
    assert len(list(out.glob("_meta/chunks/*.json"))) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in shards}

    again = run_conversion(converter, out, chunk_size=2)
    assert (again.converted, again.quarantined, again.chunks_written, again.chunks_skipped) == (4, 3, 0, 4)
    assert {p: p.stat().st_mtime_ns for p in sorted(out.glob("part-*.parquet"))} == mtimes

    # A run that died after writing chunk 1's shard but before its manifest.
    (out / "_meta/chunks/00001.json").unlink()
    resumed = run_conversion(converter, out, chunk_size=2)
    assert (resumed.chunks_written, resumed.chunks_skipped) == (1, 3)
    table = read_table(out)
    assert table.num_rows == 4 and len(set(table["id"].to_pylist())) == 4
    assert sorted(table["id"].to_pylist()) == sorted(expected["good"])
    assert read_quarantine(out).num_rows == 3

    # Fewer records (a smaller --limit) removes the chunks beyond the new last one.
    smaller = run_conversion(converter, out, chunk_size=2, limit=1)
    assert (smaller.converted, smaller.quarantined) == (3, 1)
    assert read_table(out).num_rows == 3
    assert len(list(out.glob("part-*.parquet"))) == 2
    assert json.loads((out / "_SUCCESS").read_text())["converted"] == 3


def test_cli_prints_counts_and_fails_on_too_many_bad(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    load_maker("karpathy").make(src, "ucm-captions")
    pytest.importorskip("tifffile")
    argv = ["convert", "ucm-captions", "--src", str(src), "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert rsir_main(argv) == 1  # 3 of 7 records are bad, more than the default 0.05
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ucm-captions: converted 4, quarantined 3 (42.9%)")
    assert "more than --max-bad-fraction 0.05" in lines[1]
    assert rsir_main([*argv, "--max-bad-fraction", "0.5"]) == 0
    assert "skipped 1" in capsys.readouterr().out
    row = read_table(tmp_path / "out").to_pylist()[0]
    assert decode_image(row["image"]).shape == (8, 8, 3)
    assert pq.read_table(tmp_path / "out/_meta/quarantine.parquet").column_names == [
        "dataset", "record", "source_path", "reason"]


# ---------------------------------------------------------------------------------------
# Objects from label files, translations, band statistics (pure parts)
# ---------------------------------------------------------------------------------------


def test_dota_labels_become_fraction_boxes() -> None:
    from rsir.data.converters.objects import LabelError, parse_dota

    text = ("imagesource:GoogleEarth\ngsd:0.146\n"
            "100 50 300 60 290 150 90 140 Large-Vehicle 0\n\n"
            "0 0 400 0 400 200 0 200 plane\n")
    assert parse_dota(text, 400, 200, "P1.txt") == [
        {"box": [90 / 400, 50 / 200, 300 / 400, 150 / 200], "category": "large-vehicle", "score": 1.0},
        {"box": [0.0, 0.0, 1.0, 1.0], "category": "plane", "score": 1.0},
    ]
    bad = {
        "1 2 3 4 5 6 7 8\n": "P1.txt:1: 8 fields, expected 'x1 y1 x2 y2 x3 y3 x4 y4 category [difficult]'",
        "gsd:1\n1 2 3 4 5 six 7 8 ship 0\n": "P1.txt:2: coordinate 'six' is not a number",
        "1 2 3 4 5 6 7 nan ship 0\n": "P1.txt:1: coordinate 'nan' is not finite",
        "1 2 3 4 5 6 7 8 ship 2\n": "P1.txt:1: difficult '2' is not 0 or 1",
        "1 2 3 4 401 6 7 8 ship 0\n": "P1.txt:1: vertex (401, 6) is outside the 400x200 image",
        "1 -2 3 4 5 6 7 8 ship 0\n": "P1.txt:1: vertex (1, -2) is outside the 400x200 image",
    }
    for text, reason in bad.items():
        with pytest.raises(LabelError) as err:
            parse_dota(text, 400, 200, "P1.txt")
        assert str(err.value) == reason


def test_coco_labels_become_fraction_boxes() -> None:
    from rsir.data.converters.objects import LabelError, coco_objects, index_coco

    data = {
        "images": [{"id": 7, "file_name": "train/P7.png", "width": 400, "height": 200},
                   {"id": 8, "file_name": "P8.jpg", "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [40, 20, 100, 50], "category_id": 2, "score": 0.25},
            {"id": 2, "image_id": 7, "bbox": [0, 0, 400, 200], "category_id": 5},
        ],
        "categories": [{"id": 2, "name": "Storage Tank"}, {"id": 5, "name": "soccer ball field"}],
    }
    images, categories = index_coco(data, "det.json")
    assert sorted(images) == ["P7", "P8"] and images["P8"].annotations == ()
    assert coco_objects(images["P7"], categories, 400, 200, "det.json") == [
        {"box": [0.1, 0.1, 0.35, 0.35], "category": "storage-tank", "score": 0.25},
        {"box": [0.0, 0.0, 1.0, 1.0], "category": "soccer-ball-field", "score": 1.0},
    ]
    with pytest.raises(LabelError, match=r"^det.json: train/P7.png is 400x200 in the JSON, 200x400 decoded$"):
        coco_objects(images["P7"], categories, 200, 400, "det.json")
    broken = [({"bbox": [390, 0, 20, 10], "category_id": 2}, "vertex (410, 10) is outside the 400x200 image"),
              ({"bbox": [0, 0, 10], "category_id": 2}, "bbox [0, 0, 10] is not [x, y, w, h]"),
              ({"bbox": [0, 0, -1, 10], "category_id": 2}, "bbox [0, 0, -1, 10] has a negative size"),
              ({"bbox": [0, 0, 1, 1], "category_id": 9}, "category_id 9 is not in categories"),
              ({"bbox": [0, 0, 1, 1], "category_id": 2, "score": 1.5}, "score 1.5 is outside [0, 1]")]
    for ann, reason in broken:
        data["annotations"] = [{"id": 3, "image_id": 7, **ann}]
        images, categories = index_coco(data, "det.json")
        with pytest.raises(LabelError) as err:
            coco_objects(images["P7"], categories, 400, 200, "det.json")
        assert str(err.value) == f"det.json: annotation 3 of train/P7.png: {reason}"
    data["images"].append({"id": 9, "file_name": "val/P7.tif", "width": 1, "height": 1})
    with pytest.raises(LabelError, match="'train/P7.png' and 'val/P7.tif' share the stem 'P7'"):
        index_coco(data, "det.json")


def test_dota_names_normalise_to_galrs_categories() -> None:
    from rsir.data.converters.objects import normalize_category
    from rsir.models.galr import DOTA_CATEGORIES

    # DOTA-v1.0 label files' own spellings, and COCO-style ones with spaces and capitals.
    in_files = ["plane", "ship", "storage-tank", "baseball-diamond", "tennis-court",
                "basketball-court", "ground-track-field", "harbor", "bridge", "large-vehicle",
                "small-vehicle", "helicopter", "roundabout", "soccer-ball-field", "swimming-pool"]
    assert [normalize_category(n) for n in in_files] == list(DOTA_CATEGORIES)
    assert [normalize_category(n) for n in ("Large Vehicle", " Ground  Track Field ", "PLANE")] == [
        "large-vehicle", "ground-track-field", "plane"]


def test_band_sums_scale_as_the_models_input() -> None:
    from rsir.data.converters.base import band_sums
    from rsir.data.transforms import to_tensor

    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
                  rng.integers(0, 65536, (4, 4, 2), dtype=np.uint16),
                  rng.random((3, 2, 4)).astype(np.float32)):
        total, squares, n = band_sums(array)
        x = to_tensor(array).double().reshape(array.shape[2], -1)
        assert n == array.shape[0] * array.shape[1]
        np.testing.assert_allclose(total, x.sum(1).numpy(), rtol=1e-6)
        np.testing.assert_allclose(squares, (x**2).sum(1).numpy(), rtol=1e-6)


def test_translation_arguments() -> None:
    from rsir.data.converters.cli import parse_translations

    assert parse_translations(["fr=a/fr.json", "ar=b=c"]) == {"fr": "a/fr.json", "ar": "b=c"}
    with pytest.raises(SystemExit, match="'fr': expected LANG=PATH"):
        parse_translations(["fr"])
    with pytest.raises(SystemExit, match="fr is given twice"):
        parse_translations(["fr=a", "fr=b"])


def test_cli_names_an_unknown_dataset_and_the_valid_ones(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        rsir_main(["convert", "rsicd_precomp", "--src", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'rsicd_precomp'" in err and "rsicd-precomp" in err and "geotiff" in err
    assert not (tmp_path / "out").exists()
