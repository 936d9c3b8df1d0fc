"""Geography in the shards: old shards still read; GeoTIFF scenes and STAC items -> tiles
whose footprints are checked against bounds computed by hand from the affine transform."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")
pytest.importorskip("pystac")

from rasterio.transform import Affine, from_origin  # noqa: E402

from rsir.data.contract import InputContract, inspect_archive  # noqa: E402
from rsir.data.converters.base import read_quarantine, read_tiff  # noqa: E402
from rsir.data.converters.geotiff import (  # noqa: E402
    TileOptions,
    convert_scenes,
    list_scenes,
    parse_datetime,
    product_metadata,
    tile_offsets,
)
from rsir.data.converters.stac import list_stac_scenes  # noqa: E402
from rsir.data.schema import (  # noqa: E402
    GEO_COLUMNS,
    SHARD_SCHEMA,
    decode_image,
    encode_image,
    iter_rows,
    make_row,
    read_table,
    write_shards,
)

UTC = timezone.utc
OLD_SCHEMA = pa.schema([f for f in SHARD_SCHEMA if f.name not in GEO_COLUMNS])


def _tile_origin(tile_id: str) -> tuple[int, int]:
    """``scene/y000256_x000512`` -> (row 256, col 512)."""
    y, x = tile_id.rsplit("/", 1)[1].split("_")
    return int(y[1:]), int(x[1:])


def write_tif(path: Path, bands: np.ndarray, transform: Affine, crs: str, *, nodata: float | None = None,
              tags: dict[str, str] | None = None) -> Path:
    """A GeoTIFF of ``[C, H, W]`` pixels on a known grid."""
    count, height, width = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=bands.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(bands)
        if tags:
            dst.update_tags(**tags)
    return path


# ---------------------------------------------------------------------------------------
# Schema: geography columns, and shards written before them
# ---------------------------------------------------------------------------------------


def _old_rows(n: int) -> list[dict]:
    image = encode_image(np.full((8, 8, 3), 7, np.uint8))
    return [{k: v for k, v in make_row(id=f"old{i}", split="train" if i % 2 else "test", image=image,
                                        captions=[{"text": f"c{i}", "lang": "en"}]).items()
             if k not in GEO_COLUMNS} for i in range(n)]


def _write_old_and_new(tmp_path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(_old_rows(6), schema=OLD_SCHEMA), tmp_path / "part-00000.parquet")
    image = encode_image(np.zeros((8, 8, 3), np.uint8))
    new = make_row(id="new0", split="train", image=image, captions=[{"text": "x", "lang": "en"}],
                   bbox=[1.0, 2.0, 3.0, 4.0], crs="EPSG:4326", gsd_m=10.0, sensor="landsat-8",
                   acquired=datetime(2020, 1, 6, tzinfo=UTC))
    write_shards([new], tmp_path, prefix="part-00001")
    return tmp_path


def test_old_shards_read_with_null_geography(tmp_path):
    path = _write_old_and_new(tmp_path)
    assert pq.read_schema(path / "part-00000.parquet").names == OLD_SCHEMA.names
    table = read_table(path)
    assert table.schema.names == SHARD_SCHEMA.names
    assert table.num_rows == 7
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert all(by_id[f"old{i}"][c] is None for i in range(6) for c in GEO_COLUMNS)
    assert by_id["new0"]["bbox"] == [1.0, 2.0, 3.0, 4.0]
    assert by_id["new0"]["acquired"] == datetime(2020, 1, 6, tzinfo=UTC)
    # A box filter is Arrow compute on the bbox column (old rows' null boxes never pass).
    min_lon, max_lat = pc.list_element(table["bbox"], 0), pc.list_element(table["bbox"], 3)
    inside = pc.and_(pc.greater_equal(min_lon, 0.5), pc.less_equal(max_lat, 4.0))
    assert table.filter(inside).column("id").to_pylist() == ["new0"]
    only_old = read_table(path / "part-00000.parquet", columns=["id", "bbox", "acquired"], split="train")
    assert only_old.column("id").to_pylist() == ["old1", "old3", "old5"]
    assert only_old.column("bbox").null_count == 3
    rows = list(iter_rows(path, split="train"))
    assert [r["id"] for r in rows] == ["old1", "old3", "old5", "new0"]
    assert all(set(r) == set(SHARD_SCHEMA.names) for r in rows)
    assert rows[0]["sensor"] is None and rows[3]["sensor"] == "landsat-8"
    summary = inspect_archive(path)
    assert summary.rows == {"test": 3, "train": 4}
    assert summary.captions == {"en": {"captions": 7, "rows": 7}}


def test_make_row_rejects_a_naive_time_and_a_short_bbox():
    with pytest.raises(ValueError, match="acquired_t2 2020-01-06T00:00:00 has no time zone"):
        make_row(id="a", split="train", image=b"x", acquired_t2=datetime(2020, 1, 6))
    with pytest.raises(ValueError, match="expected \\[min_lon, min_lat, max_lon, max_lat\\]"):
        make_row(id="a", split="train", image=b"x", bbox=[1.0, 2.0])


def test_geoparquet_metadata_names_the_wkb_footprint(tmp_path):
    path = _write_old_and_new(tmp_path)
    geo = json.loads(pq.read_schema(path / "part-00001-00000.parquet").metadata[b"geo"])
    assert geo["primary_column"] == "footprint"
    assert geo["columns"]["footprint"]["encoding"] == "WKB"


@pytest.mark.ray
def test_old_shards_read_through_ray_data(tmp_path, ray_session):
    from rsir.data.pipeline import read_split

    path = _write_old_and_new(tmp_path)
    contract = InputContract(recipe="r", task="image", bands=("R", "G", "B"), languages=("en",))
    ds = read_split(str(path), "train", contract.columns)
    ids = sorted(r["id"] for r in ds.take_all())
    assert ids == ["new0", "old1", "old3", "old5"]


# ---------------------------------------------------------------------------------------
# Hand-computed geography: the affine transform, and UTM -> lon/lat by Snyder's formulas
# ---------------------------------------------------------------------------------------


def utm_to_lonlat(easting: float, northing: float, zone: int) -> tuple[float, float]:
    """Inverse transverse Mercator on WGS84, northern hemisphere (Snyder 1987, eqs. 8-12..8-25)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    lon0 = math.radians(-183 + 6 * zone)
    m = northing / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (mu + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
            + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
            + (151 * e1**3 / 96) * math.sin(6 * mu) + (1097 * e1**4 / 512) * math.sin(8 * mu))
    c1 = ep2 * math.cos(phi1) ** 2
    t1 = math.tan(phi1) ** 2
    n1 = a / math.sqrt(1 - e2 * math.sin(phi1) ** 2)
    r1 = a * (1 - e2) / (1 - e2 * math.sin(phi1) ** 2) ** 1.5
    d = (easting - 500000.0) / (n1 * k0)
    lat = phi1 - (n1 * math.tan(phi1) / r1) * (
        d**2 / 2 - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720)
    lon = lon0 + (d - (1 + 2 * t1 + c1) * d**3 / 6
                  + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120) / math.cos(phi1)
    return math.degrees(lon), math.degrees(lat)


def hand_footprint(row: int, col: int, size: int, a: float, e: float, x0: float, y0: float,
                   zone: int) -> tuple[list[tuple[float, float]], list[float]]:
    """The tile's four corners in lon/lat, and its bbox over 21 points per edge (as densified)."""
    def lonlat(c: float, r: float) -> tuple[float, float]:
        return utm_to_lonlat(x0 + c * a, y0 + r * e, zone)

    corners = [lonlat(col, row), lonlat(col + size, row), lonlat(col + size, row + size),
               lonlat(col, row + size)]
    steps = [i / 22 for i in range(23)]
    edge = ([lonlat(col + t * size, row) for t in steps] + [lonlat(col + t * size, row + size) for t in steps]
            + [lonlat(col, row + t * size) for t in steps] + [lonlat(col + size, row + t * size) for t in steps])
    lons, lats = [p[0] for p in edge], [p[1] for p in edge]
    return corners, [min(lons), min(lats), max(lons), max(lats)]


@pytest.mark.parametrize("name, bands, n_tiles", [
    ("RGB.byte.tif", ["R", "G", "B"], 12),  # 791x718: columns 0,256,512,535 x rows 0,256,462
    ("rgbn.tif", ["R", "G", "B", "NIR"], 6),  # 515x403: columns 0,256,259 x rows 0,147
])
def test_real_geotiffs_tile_with_hand_computed_footprints(shared_data, tmp_path, name, bands, n_tiles):
    src = shared_data / "images" / "multispectral" / name
    with rasterio.open(src) as ds:
        transform, width, height = ds.transform, ds.width, ds.height
        assert ds.crs.to_epsg() == 32618
    whole = read_tiff(src)  # an independent reader (tifffile) for the pixels
    result = convert_scenes(list_scenes(src), tmp_path, TileOptions(tile_size=256))
    assert (result.converted, result.quarantined) == (n_tiles, 0)
    rows = read_table(tmp_path).to_pylist()
    origins = sorted(_tile_origin(r["id"]) for r in rows)
    assert origins == [(r, c) for r in tile_offsets(height, 256, 256) for c in tile_offsets(width, 256, 256)]
    for row in rows:
        r, c = _tile_origin(row["id"])
        assert row["bands"] == bands and row["crs"] == "EPSG:32618"
        assert row["gsd_m"] == pytest.approx(math.sqrt(transform.a * -transform.e), rel=1e-12)
        np.testing.assert_array_equal(decode_image(row["image"]), whole[r:r + 256, c:c + 256])
        corners, bbox = hand_footprint(r, c, 256, transform.a, transform.e, transform.c, transform.f, 18)
        assert row["bbox"] == pytest.approx(bbox, abs=2e-6)  # degrees: ~0.2 m
        polygon = shapely.from_wkb(row["footprint"])
        assert polygon.exterior.is_ccw
        vertices = list(polygon.exterior.coords)[:-1]
        # The same four corners, in some rotation of the ring (counter-clockwise from the file's
        # clockwise top-left, top-right, bottom-right, bottom-left).
        expected = corners[::-1]
        start = min(range(4), key=lambda i: math.dist(vertices[0], expected[i]))
        for got, want in zip(vertices, expected[start:] + expected[:start]):
            assert got == pytest.approx(want, abs=2e-6)


# ---------------------------------------------------------------------------------------
# Generated scenes
# ---------------------------------------------------------------------------------------


def test_wgs84_scene_exact_bounds_nodata_tiles_and_tags(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 4000, size=(4, 500, 600), dtype=np.uint16)
    pixels[:, :256, :256] = 0  # the top-left tile holds only nodata
    transform = from_origin(10.0, 50.0, 0.001, 0.001)
    src = write_tif(tmp_path / "scene.tif", pixels, transform, "EPSG:4326", nodata=0,
                    tags={"ACQUISITION_DATE": "2021-07-04T10:20:30Z", "SENSOR": "Sentinel-2B",
                          "TIFFTAG_DATETIME": "2023:01:01 00:00:00"})
    out = tmp_path / "out"
    result = convert_scenes(list_scenes(src), out, TileOptions(tile_size=256))
    assert (result.converted, result.quarantined) == (5, 1)  # columns 0,256,344 x rows 0,244
    bad = read_quarantine(out).to_pylist()
    assert [(b["record"], b["reason"]) for b in bad] == [
        ("scene/y000000_x000000", "nodata-only tile (scene: every pixel is nodata)")]
    for row in read_table(out).to_pylist():
        r, c = _tile_origin(row["id"])
        west, north = 10.0 + c * 0.001, 50.0 + r * -0.001
        east, south = 10.0 + (c + 256) * 0.001, 50.0 + (r + 256) * -0.001
        assert row["bbox"] == [west, south, east, north]
        ring = shapely.from_wkb(row["footprint"]).exterior
        assert ring.is_ccw and len(ring.coords) == 5
        assert set(ring.coords) == {(west, south), (east, south), (east, north), (west, north)}
        image = decode_image(row["image"])
        assert image.dtype == np.uint16 and row["bands"] == ["R", "G", "B", "NIR"]
        np.testing.assert_array_equal(image, np.moveaxis(pixels[:, r:r + 256, c:c + 256], 0, -1))
        assert row["acquired"] == datetime(2021, 7, 4, 10, 20, 30, tzinfo=UTC)
        assert row["sensor"] == "sentinel-2b" and row["crs"] == "EPSG:4326"
        centre_lat = 50.0 - 0.25
        assert row["gsd_m"] == pytest.approx(
            0.001 * math.sqrt(math.cos(math.radians(centre_lat))) * 6371008.8 * math.pi / 180, rel=1e-9)
        assert row["acquired_t2"] is None and row["image_t2"] is None


def _landsat_band_folder(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(1)
    product = "LC08_L1TP_044034_20200106_20200113_01_T1"
    transform = from_origin(500000.0, 4200000.0, 30.0, 30.0)
    bands = {}
    for band in ("B10", "B3", "B2", "B4"):  # listed out of order on purpose
        bands[band] = rng.integers(0, 60000, size=(1, 300, 300), dtype=np.uint16)
        write_tif(folder / f"{product}_{band}.TIF", bands[band], transform, "EPSG:32610")
    return bands


def test_landsat_band_folder_is_one_scene_named_from_its_product_id(tmp_path):
    bands = _landsat_band_folder(tmp_path / "landsat")
    scenes = list_scenes(tmp_path / "landsat")
    assert [s.id for s in scenes] == ["LC08_L1TP_044034_20200106_20200113_01_T1"]
    out = tmp_path / "out"
    result = convert_scenes(scenes, out, TileOptions(tile_size=200, stride=100))
    assert (result.converted, result.quarantined) == (4, 0)  # offsets 0,100 on each axis
    rows = read_table(out).to_pylist()
    stacked = np.concatenate([bands[b] for b in ("B2", "B3", "B4", "B10")], axis=0)
    for row in rows:
        r, c = _tile_origin(row["id"])
        assert row["bands"] == ["B2", "B3", "B4", "B10"]
        assert row["sensor"] == "landsat-8" and row["crs"] == "EPSG:32610" and row["gsd_m"] == 30.0
        assert row["acquired"] == datetime(2020, 1, 6, tzinfo=UTC)
        np.testing.assert_array_equal(decode_image(row["image"]),
                                      np.moveaxis(stacked[:, r:r + 200, c:c + 200], 0, -1))
    # --bands keeps the named bands in the given order
    out2 = tmp_path / "out2"
    convert_scenes(scenes, out2, TileOptions(tile_size=300, bands=("B4", "B2")))
    (row,) = read_table(out2).to_pylist()
    assert row["bands"] == ["B4", "B2"]
    np.testing.assert_array_equal(decode_image(row["image"])[..., 0], bands["B4"][0])
    out3 = tmp_path / "out3"
    assert convert_scenes(scenes, out3, TileOptions(tile_size=300, bands=("NIR",))).quarantined == 1
    assert read_quarantine(out3).column("reason").to_pylist() == [
        "scene: no band NIR (bands: B2, B3, B4, B10)"]


def test_bad_scenes_are_quarantined_with_the_reason(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    write_tif(folder / "T1_B2.tif", np.ones((1, 64, 64), np.uint8), from_origin(0, 0, 10, 10), "EPSG:32631")
    write_tif(folder / "T1_B3.tif", np.ones((1, 64, 64), np.uint8), from_origin(0, 0, 20, 20), "EPSG:32631")
    write_tif(folder / "small.tif", np.ones((3, 40, 50), np.uint8), from_origin(0, 0, 10, 10), "EPSG:32631")
    write_tif(folder / "dated.tif", np.ones((3, 64, 64), np.uint8), from_origin(0, 0, 10, 10), "EPSG:32631",
              tags={"ACQUISITION_DATE": "soon"})
    result = convert_scenes(list_scenes(folder), tmp_path / "out", TileOptions(tile_size=64))
    assert (result.converted, result.quarantined) == (0, 3)
    reasons = dict(zip(*read_quarantine(tmp_path / "out").select(["record", "reason"]).to_pydict().values()))
    assert reasons["small"] == "scene is 50x40 pixels, smaller than a 64x64 tile"
    assert reasons["dated"] == "scene: dated.tif: tag ACQUISITION_DATE: not a date/time: 'soon'"
    assert reasons["T1"].startswith("scene: T1_B3.tif is on another grid (64x64, EPSG:32631, "
                                    "(20.0, 0.0, 0.0, 0.0, -20.0, 0.0)) than T1_B2.tif")


def test_t2_makes_pair_tiles_with_both_dates(tmp_path):
    transform = from_origin(-3.0, 40.0, 0.0001, 0.0001)
    rng = np.random.default_rng(2)
    first = rng.integers(1, 255, size=(3, 128, 256), dtype=np.uint8)
    second = rng.integers(1, 255, size=(3, 128, 256), dtype=np.uint8)
    second[:, :, 128:] = 0  # the second tile of the second date is nodata
    t1 = write_tif(tmp_path / "S2A_MSIL2A_20210615T103021_N0300_R108_T30TVK_20210615T134032.tif",
                   first, transform, "EPSG:4326", nodata=0)
    t2 = write_tif(tmp_path / "S2B_MSIL2A_20230620T103031_N0509_R108_T30TVK_20230620T140000.tif",
                   second, transform, "EPSG:4326", nodata=0)
    scenes = list_scenes(t1, t2)
    result = convert_scenes(scenes, tmp_path / "out", TileOptions(tile_size=128))
    assert (result.converted, result.quarantined) == (1, 1)
    (row,) = read_table(tmp_path / "out").to_pylist()
    np.testing.assert_array_equal(decode_image(row["image"]), np.moveaxis(first[:, :, :128], 0, -1))
    np.testing.assert_array_equal(decode_image(row["image_t2"]), np.moveaxis(second[:, :, :128], 0, -1))
    assert row["acquired"] == datetime(2021, 6, 15, 10, 30, 21, tzinfo=UTC)
    assert row["acquired_t2"] == datetime(2023, 6, 20, 10, 30, 31, tzinfo=UTC)
    assert row["sensor"] == "sentinel-2a"
    assert read_quarantine(tmp_path / "out").column("reason").to_pylist() == [
        "nodata-only tile (t2: every pixel is nodata)"]
    shifted = write_tif(tmp_path / "shifted.tif", second, from_origin(-2.9, 40.0, 0.0001, 0.0001),
                        "EPSG:4326")
    result = convert_scenes(list_scenes(t1, shifted), tmp_path / "out2", TileOptions(tile_size=128))
    assert result.converted == 0
    assert read_quarantine(tmp_path / "out2").column("reason")[0].as_py().startswith(
        "the dates are not co-registered: t1 is 256x128 EPSG:4326 (0.0001, 0.0, -3.0,")


def test_rerun_skips_done_scenes_and_redoes_a_changed_one(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    transform = from_origin(0.0, 10.0, 0.01, 0.01)
    for name in ("a", "b"):
        write_tif(folder / f"{name}.tif", np.full((1, 64, 64), 5, np.uint8), transform, "EPSG:4326")
    out = tmp_path / "out"
    first = convert_scenes(list_scenes(folder), out, TileOptions(tile_size=32))
    assert (first.converted, first.chunks_written, first.chunks_skipped) == (8, 2, 0)
    again = convert_scenes(list_scenes(folder), out, TileOptions(tile_size=32))
    assert (again.converted, again.chunks_written, again.chunks_skipped) == (8, 0, 2)
    write_tif(folder / "b.tif", np.full((1, 64, 64), 9, np.uint8), transform, "EPSG:4326")
    os.utime(folder / "b.tif", ns=(1, 1))  # a new mtime even within the clock's resolution
    redo = convert_scenes(list_scenes(folder), out, TileOptions(tile_size=32))
    assert (redo.converted, redo.chunks_written, redo.chunks_skipped) == (8, 1, 1)
    table = read_table(out)
    assert table.num_rows == 8 and len(set(table.column("id").to_pylist())) == 8
    (folder / "b.tif").unlink()
    assert convert_scenes(list_scenes(folder), out, TileOptions(tile_size=32)).converted == 4
    assert read_table(out).num_rows == 4


def test_product_ids_and_time_formats():
    assert product_metadata("LC08_L1TP_044034_20200106_20200113_01_T1_B2.TIF") == (
        "landsat-8", datetime(2020, 1, 6, tzinfo=UTC))
    # Pre-collection id: year 2000 (a leap year), day 123 = 2 May.
    assert product_metadata("LE70440342000123EDC00.tif") == ("landsat-7", datetime(2000, 5, 2, tzinfo=UTC))
    assert product_metadata("S2B_MSIL1C_20191231T235959_N0208.tif") == (
        "sentinel-2b", datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert product_metadata("T32TMT_20210615T103021_B02.tif") == (
        "sentinel-2", datetime(2021, 6, 15, 10, 30, 21, tzinfo=UTC))
    assert product_metadata("RGB.byte.tif") == (None, None)
    assert parse_datetime("2020:01:06 15:30:00") == datetime(2020, 1, 6, 15, 30, tzinfo=UTC)
    assert parse_datetime("2020-01-06T17:30:00+02:00") == datetime(2020, 1, 6, 15, 30, tzinfo=UTC)
    assert parse_datetime("2020-01-06T15:30:00.123456789Z") == datetime(2020, 1, 6, 15, 30, 0, 123456, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a date/time: 'yesterday'"):
        parse_datetime("yesterday")
    assert tile_offsets(791, 256, 256) == [0, 256, 512, 535]
    assert tile_offsets(512, 256, 128) == [0, 128, 256]
    assert tile_offsets(100, 256, 256) == []


# ---------------------------------------------------------------------------------------
# STAC
# ---------------------------------------------------------------------------------------


def test_stac_items_give_time_sensor_gsd_and_clip_to_their_geometry(tmp_path):
    transform = from_origin(20.0, 45.0, 0.001, 0.001)
    rng = np.random.default_rng(3)
    multi = rng.integers(1, 255, size=(3, 128, 256), dtype=np.uint8)
    write_tif(tmp_path / "multi.tif", multi, transform, "EPSG:4326")
    b02 = rng.integers(1, 9000, size=(1, 128, 128), dtype=np.uint16)
    b03 = rng.integers(1, 9000, size=(1, 128, 128), dtype=np.uint16)
    write_tif(tmp_path / "b02.tif", b02, transform, "EPSG:4326")
    write_tif(tmp_path / "b03.tif", b03, transform, "EPSG:4326")
    # The first item's geometry covers only the western tile (lon 20.0 .. 20.1).
    west = {"type": "Polygon", "coordinates": [[[20.0, 44.872], [20.1, 44.872], [20.1, 45.0],
                                                [20.0, 45.0], [20.0, 44.872]]]}
    whole = {"type": "Polygon", "coordinates": [[[20.0, 44.872], [20.128, 44.872], [20.128, 45.0],
                                                 [20.0, 45.0], [20.0, 44.872]]]}
    def item(item_id, geometry, props, assets):
        return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": geometry,
                "bbox": [20.0, 44.872, 20.256, 45.0], "properties": props, "links": [], "assets": assets}
    collection = {"type": "FeatureCollection", "features": [
        item("multi", west, {"datetime": "2022-03-04T05:06:07Z", "platform": "landsat-9", "gsd": 30},
             {"image": {"href": "multi.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
              "thumb": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}}),
        item("bands", whole, {"datetime": None, "start_datetime": "2021-01-02T00:00:00Z",
                              "end_datetime": "2021-01-03T00:00:00Z", "constellation": "Sentinel-2",
                              "eo:gsd": 10.0},
             {"B03": {"href": str(tmp_path / "b03.tif"), "type": "image/tiff",
                      "eo:bands": [{"name": "green"}]},
              "B02": {"href": "b02.tif", "type": "image/tiff", "eo:bands": [{"name": "blue"}]}}),
    ]}
    path = tmp_path / "items.json"
    path.write_text(json.dumps(collection))
    scenes = list_stac_scenes(path)
    out = tmp_path / "out"
    result = convert_scenes(scenes, out, TileOptions(dataset="stac", tile_size=128))
    assert (result.converted, result.quarantined) == (2, 1)
    assert read_quarantine(out).select(["record", "reason"]).to_pylist() == [
        {"record": "multi/y000000_x000128", "reason": "tile lies outside the item's geometry"}]
    rows = {r["id"]: r for r in read_table(out).to_pylist()}
    first = rows["multi/y000000_x000000"]
    assert first["acquired"] == datetime(2022, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert (first["sensor"], first["gsd_m"], first["bands"]) == ("landsat-9", 30.0, ["R", "G", "B"])
    assert first["bbox"] == [20.0, 45.0 - 0.128, 20.0 + 0.128, 45.0]
    np.testing.assert_array_equal(decode_image(first["image"]), np.moveaxis(multi[:, :, :128], 0, -1))
    second = rows["bands/y000000_x000000"]
    assert (second["sensor"], second["gsd_m"], second["bands"]) == ("sentinel-2", 10.0, ["blue", "green"])
    assert second["acquired"] == datetime(2021, 1, 2, tzinfo=UTC)
    np.testing.assert_array_equal(decode_image(second["image"]), np.moveaxis(np.concatenate([b02, b03]), 0, -1))


def test_cli_converts_geotiff_locally(tmp_path, capsys):
    from rsir.cli import main

    transform = from_origin(0.0, 10.0, 0.01, 0.01)
    src = write_tif(tmp_path / "a.tif", np.full((3, 64, 64), 5, np.uint8), transform, "EPSG:4326")
    code = main(["convert", "geotiff", "--src", str(src), "--out", str(tmp_path / "out"),
                 "--tile-size", "32", "--stride", "16", "--local", "--no-progress"])
    assert code == 0
    assert "geotiff: 1 scenes, converted 9 tiles, quarantined 0 (0.0%)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert summary["options"]["stride"] == 16 and summary["scenes"] == ["a"]


@pytest.mark.ray
def test_ray_data_job_writes_what_the_local_run_writes(tmp_path, ray_session):
    from rsir.ingest import convert_scenes_ray

    bands = _landsat_band_folder(tmp_path / "landsat")
    assert bands
    transform = from_origin(10.0, 50.0, 0.001, 0.001)
    write_tif(tmp_path / "landsat" / "other.tif", np.full((3, 200, 200), 3, np.uint8), transform, "EPSG:4326")
    scenes = list_scenes(tmp_path / "landsat")
    local = convert_scenes(scenes, tmp_path / "local", TileOptions(tile_size=100))
    distributed = convert_scenes_ray(scenes, tmp_path / "ray", TileOptions(tile_size=100))
    assert (distributed.converted, distributed.chunks_written) == (local.converted, 2) == (13, 2)
    cols = ["id", "bbox", "footprint", "bands", "image", "acquired", "sensor"]
    assert read_table(tmp_path / "ray", columns=cols).sort_by("id").equals(
        read_table(tmp_path / "local", columns=cols).sort_by("id"))
    # The CLI runs the same job on the Ray it finds; a re-run skips both scenes.
    from rsir.cli import main

    assert main(["convert", "geotiff", "--src", str(tmp_path / "landsat"), "--out", str(tmp_path / "ray"),
                 "--tile-size", "100", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "ray" / "_SUCCESS").read_text())
    assert (summary["converted"], summary["chunks"]) == (13, 2)
    assert convert_scenes_ray(scenes, tmp_path / "ray", TileOptions(tile_size=100)).chunks_skipped == 2


def test_cli_refuses_options_the_source_does_not_read(tmp_path, capsys):
    from rsir.cli import main

    with pytest.raises(SystemExit):
        main(["convert", "levir-cc", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--t2", "x"])
    assert "convert levir-cc: --t2 is geotiff / stac option only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "geotiff", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--objects", "x"])
    assert "convert geotiff: --objects is a dataset layout's option only" in capsys.readouterr().err


def test_real_scene_collar_tiles_are_quarantined_as_nodata(shared_data, tmp_path):
    src = shared_data / "images" / "multispectral" / "RGB.byte.tif"  # nodata 0 around the rotated scene
    whole = read_tiff(src)
    offsets_y, offsets_x = tile_offsets(whole.shape[0], 64, 64), tile_offsets(whole.shape[1], 64, 64)
    empty = {f"RGB.byte/y{r:06d}_x{c:06d}" for r in offsets_y for c in offsets_x
             if not whole[r:r + 64, c:c + 64].any()}
    assert empty  # the collar's corners hold whole tiles of nodata
    result = convert_scenes(list_scenes(src), tmp_path, TileOptions(tile_size=64))
    assert result.quarantined == len(empty)
    assert result.converted == len(offsets_y) * len(offsets_x) - len(empty)
    bad = read_quarantine(tmp_path).to_pylist()
    assert {b["record"] for b in bad} == empty
    assert {b["reason"] for b in bad} == {"nodata-only tile (scene: every pixel is nodata)"}
