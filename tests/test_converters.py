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
