"""GeoTIFF scenes -> tiles with their geography (pure: rasterio, shapely; never Ray).

A :class:`Scene` is what one conversion task reads: one multi-band file, or a folder's
one-band files of one product (Landsat's ``<product id>_B2.TIF``, ``_B3.TIF``: band names
from the suffix), and for a bitemporal pair a second, co-registered date (``--t2``).
:func:`convert_scene` cuts it into ``tile_size`` windows every ``stride`` pixels (plus a last
row/column flush with the far edge, so every pixel is in a tile), reads each window alone
(``rasterio.windows.Window``: a scene is never whole in memory) and writes rows of
:data:`~rsir.data.schema.SHARD_SCHEMA` with the tile's WGS84 ``bbox`` and ``footprint``
(the window's corners through the affine transform, reprojected with
``rasterio.warp``), ``crs``, ``gsd_m``, ``sensor`` and ``acquired`` / ``acquired_t2``.

Acquisition time and sensor come from the file's tags (GDAL's ``IMAGERY`` domain
``ACQUISITIONDATETIME`` / ``SATELLITEID``, or ``ACQUISITION_DATE``-like tags), else from a
Landsat / Sentinel-2 product id in the file name, else ``TIFFTAG_DATETIME``; a STAC item
(:mod:`rsir.data.converters.stac`) gives them directly.

Bad input is quarantined with its reason, as by every converter: a tile whose pixels are
all nodata (per the file's nodata value or mask), a scene that cannot be tiled (no CRS,
smaller than a tile, band files or dates on different grids, a ``--bands`` name it lacks).
The output layout and resumability are :mod:`rsir.data.converters.base`'s with a chunk
per scene (its index in the listing): ``part-KKKKK-*.parquet``, ``_meta/chunks/KKKKK.json``
written last by the scene's task, skipped on a re-run while the scene's files and the
options are unchanged (:func:`convert_scenes` here, :func:`rsir.ingest.convert_scenes_ray`
on a cluster, both finished by :func:`finish_conversion`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rsir.data.converters.base import (
    DEFAULT_BANDS,
    TIFF_SUFFIXES,
    BadRecord,
    ConversionResult,
    _atomic_write_bytes,
    _chunk_files,
    _drop_stale_chunks,
    _write_quarantine,
    _write_table,
)
from rsir.data.schema import QUARANTINE_SCHEMA, ShardWriter, encode_image, make_row

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
# A one-band file of a product: <prefix>_B2.TIF, _B02.tif, _B8A.tif (Landsat, Sentinel-2).
BAND_FILE = re.compile(r"^(?P<prefix>.+)_(?P<band>B\d{1,2}A?)$", re.IGNORECASE)
# Landsat Collection product id: LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX (X: sensor letter).
LANDSAT_ID = re.compile(
    r"(?<![A-Z0-9])L[COTEM](?P<sat>0[1-9])_[A-Z0-9]{4}_\d{6}_(?P<date>\d{8})_\d{8}_\d{2}_[A-Z0-9]{2}")
# Pre-collection Landsat scene id: LXSPPPRRRYYYYDDDGSIVV (year and day of year).
LANDSAT_SCENE_ID = re.compile(r"(?<![A-Z0-9])L[COTEM](?P<sat>[1-9])\d{6}(?P<year>\d{4})(?P<doy>\d{3})[A-Z]{3}\d{2}")
# Sentinel-2 product id: S2A_MSIL2A_20210615T103021_...
SENTINEL2_ID = re.compile(r"(?<![A-Z0-9])S2(?P<unit>[A-D])_MSI(?:L1C|L2A)_(?P<time>\d{8}T\d{6})")
# A Sentinel-2 granule's band file: T32TMT_20210615T103021_B02 (tile, sensing time; no unit).
SENTINEL2_GRANULE = re.compile(r"(?<![A-Z0-9])T\d{2}[A-Z]{3}_(?P<time>\d{8}T\d{6})")
# Tags holding the acquisition time / platform, most specific first (compared uppercased).
DATE_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED",
             "DATETIME_ACQUIRED", "SENSING_TIME", "SENSING_DATE", "DATETIME_ORIGINAL")
SENSOR_TAGS = ("SATELLITEID", "SPACECRAFT_ID", "PLATFORM", "SATELLITE", "SENSOR", "SENSOR_ID",
               "INSTRUMENT")
EARTH_RADIUS_M = 6_371_008.8  # mean radius, for the metres of a degree


@dataclass(frozen=True)
class BandFile:
    """One raster file of a date; ``names`` its bands' names (None: from the file)."""

    path: str
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SceneDate:
    """The files of one acquisition, with what a catalogue (STAC) already says about it."""

    files: tuple[BandFile, ...]
    acquired: str | None = None  # ISO 8601; None: from the tags or the product id
    sensor: str | None = None
    gsd_m: float | None = None


@dataclass(frozen=True)
class Scene:
    """What one conversion task reads: one date, or two co-registered dates of a pair.

    ``geometry``: a catalogue's footprint (GeoJSON, WGS84); tiles outside it are quarantined.
    ``problems``: reasons found while listing (the whole scene is quarantined with them).
    """

    id: str
    dates: tuple[SceneDate, ...]
    source: str
    geometry: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scene:
        raw = json.loads(text)
        dates = tuple(
            SceneDate(files=tuple(BandFile(f["path"], tuple(f["names"]) if f["names"] else None)
                                  for f in d["files"]),
                      acquired=d["acquired"], sensor=d["sensor"], gsd_m=d["gsd_m"])
            for d in raw["dates"])
        return cls(id=raw["id"], dates=dates, source=raw["source"], geometry=raw["geometry"],
                   problems=tuple(raw["problems"]))


@dataclass(frozen=True)
class TileOptions:
    """What besides the scenes decides the output (in every scene's fingerprint)."""

    dataset: str = "geotiff"
    tile_size: int = 256
    stride: int | None = None  # None: tile_size (no overlap)
    bands: tuple[str, ...] | None = None  # None: every band, in the file's order
    split: str = "train"
    max_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile size {self.tile_size} must be a positive number of pixels")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride {self.stride} must be a positive number of pixels")

    @property
    def step(self) -> int:
        return self.stride or self.tile_size


# ---------------------------------------------------------------------------------------
# Listing scenes
# ---------------------------------------------------------------------------------------


def _band_key(name: str) -> tuple[int, str]:
    """B2 < B3 < B10 < B8A by number, then suffix."""
    digits = re.sub(r"\D", "", name)
    return int(digits or 0), name.upper()


def list_scenes(src: str | os.PathLike[str], t2: str | os.PathLike[str] | None = None) -> list[Scene]:
    """The scenes of a file or a folder (recursively), sorted; with ``t2``, pairs.

    In a folder, one-band files named ``<prefix>_B<n>`` make one scene per prefix (bands in
    number order); every other ``.tif`` is a scene. ``t2`` is listed the same way and its
    scenes pair with ``src``'s in sorted order (a different count is an error: which scene
    pairs with which would be a guess).
    """
    first = _list_dates(Path(src))
    if t2 is None:
        return [Scene(id=sid, dates=(date,), source=source) for sid, date, source in first]
    second = _list_dates(Path(t2))
    if len(first) != len(second):
        raise ValueError(f"--src {src} has {len(first)} scenes and --t2 {t2} has {len(second)}: "
                         "pairs need one second-date scene per scene")
    return [Scene(id=sid, dates=(d1, d2), source=f"{s1} | {s2}")
            for (sid, d1, s1), (_, d2, s2) in zip(first, second)]


def _list_dates(src: Path) -> list[tuple[str, SceneDate, str]]:
    if src.is_file():
        return [(src.stem, SceneDate(files=(BandFile(str(src)),)), str(src))]
    if not src.is_dir():
        raise FileNotFoundError(f"geotiff: {src} is neither a GeoTIFF nor a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"geotiff: no .tif/.tiff files under {src}")
    groups: dict[Path, list[tuple[str, Path]]] = {}
    singles: list[Path] = []
    for path in files:
        match = BAND_FILE.match(path.stem)
        if match:
            groups.setdefault(path.parent / match["prefix"], []).append((match["band"].upper(), path))
        else:
            singles.append(path)
    out: list[tuple[str, SceneDate, str]] = []
    for path in singles:
        out.append((path.relative_to(src).with_suffix("").as_posix(),
                    SceneDate(files=(BandFile(str(path)),)), str(path)))
    for prefix, bands in groups.items():
        bands.sort(key=lambda b: _band_key(b[0]))
        out.append((prefix.relative_to(src).as_posix(),
                    SceneDate(files=tuple(BandFile(str(p), (name,)) for name, p in bands)),
                    str(prefix) + "_B*"))
    return sorted(out, key=lambda s: s[0])


# ---------------------------------------------------------------------------------------
# Metadata: dates and sensors
# ---------------------------------------------------------------------------------------


def parse_datetime(text: str) -> datetime:
    """A tag's or catalogue's time as an aware UTC datetime (naive values are UTC).

    Accepts ISO 8601 (``2020-01-06T15:30:00Z``, a date alone), the TIFF form
    ``2020:01:06 15:30:00`` and compact ``20200106T153000``; raises ``ValueError`` otherwise.
    """
    value = text.strip().replace("Z", "+00:00")
    value = re.sub(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", value)  # TIFF's date form
    value = re.sub(r"^(\d{4})(\d{2})(\d{2})(?=T\d{6}|$)", r"\1-\2-\3", value)
    value = re.sub(r"T(\d{2})(\d{2})(\d{2})$", r"T\1:\2:\3", value)
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)  # nanoseconds -> microseconds
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a date/time: {text!r}") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def normalise_sensor(name: str) -> str:
    """``LANDSAT_8`` / ``Sentinel-2A`` -> ``landsat-8`` / ``sentinel-2a`` (STAC's spelling)."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def product_metadata(name: str) -> tuple[str | None, datetime | None]:
    """Sensor and acquisition time from a Landsat / Sentinel-2 product id in ``name``."""
    upper = name.upper()
    if m := LANDSAT_ID.search(upper):
        return f"landsat-{int(m['sat'])}", parse_datetime(m["date"])
    if m := LANDSAT_SCENE_ID.search(upper):
        year, doy = int(m["year"]), int(m["doy"])
        when = datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=doy - 1)
        if 1 <= doy and when.year == year:  # else not a day of that year: not an id
            return f"landsat-{int(m['sat'])}", when
    if m := SENTINEL2_ID.search(upper):
        return f"sentinel-2{m['unit'].lower()}", parse_datetime(m["time"])
    if m := SENTINEL2_GRANULE.search(upper):
        return "sentinel-2", parse_datetime(m["time"])
    return None, None


def tag_metadata(tags: Mapping[str, str]) -> tuple[str | None, datetime | None, datetime | None]:
    """Sensor, acquisition time, and ``TIFFTAG_DATETIME`` (the file's own time) from tags.

    An acquisition tag that does not parse is a :class:`BadRecord` (its value is named).
    """
    upper = {k.upper(): v for k, v in tags.items() if isinstance(v, str) and v.strip()}
    sensor = next((normalise_sensor(upper[k]) for k in SENSOR_TAGS if k in upper), None)
    acquired = None
    for key in DATE_TAGS:
        if key in upper:
            try:
                acquired = parse_datetime(upper[key])
            except ValueError as err:
                raise BadRecord(f"tag {key}: {err}") from None
            break
    file_time = None
    if "TIFFTAG_DATETIME" in upper:
        try:
            file_time = parse_datetime(upper["TIFFTAG_DATETIME"])
        except ValueError:
            log.warning("ignoring TIFFTAG_DATETIME %r (not a date)", upper["TIFFTAG_DATETIME"])
    return sensor, acquired, file_time


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------


def tile_offsets(size: int, tile: int, step: int) -> list[int]:
    """Window offsets along one axis: every ``step``, plus one flush with the far edge."""
    if size < tile:
        return []
    offsets = list(range(0, size - tile + 1, step))
    if offsets[-1] != size - tile:
        offsets.append(size - tile)
    return offsets


def crs_name(crs: Any) -> str:
    """``EPSG:32618`` (the authority code), or the WKT of a CRS that has none."""
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else crs.to_wkt()


def pixel_size_m(transform: Any, crs: Any, centre_lat: float) -> float:
    """Ground sample distance in metres: the geometric mean of a pixel's two sides."""
    side_x = math.hypot(transform.a, transform.d)
    side_y = math.hypot(transform.b, transform.e)
    if crs.is_geographic:
        metres_per_degree = EARTH_RADIUS_M * math.pi / 180
        return math.sqrt(side_x * math.cos(math.radians(centre_lat)) * side_y) * metres_per_degree
    return math.sqrt(side_x * side_y) * crs.linear_units_factor[1]


def window_footprint(window: Any, transform: Any, crs: Any) -> tuple[list[float], Any]:
    """A window's WGS84 bbox ``[min_lon, min_lat, max_lon, max_lat]`` and outline polygon.

    The outline is the window's four corners through the affine transform (so a rotated
    grid keeps its shape), reprojected vertex by vertex, counter-clockwise; the bbox is
    ``transform_bounds`` of the corners' extent, densified along the edges (a projected
    edge curves in lon/lat).
    """
    from rasterio.warp import transform_bounds, transform_geom
    from shapely.geometry import Polygon, shape
    from shapely.geometry.polygon import orient

    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    corners = [transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    bbox = list(transform_bounds(crs, WGS84, min(xs), min(ys), max(xs), max(ys), densify_pts=21))
    ring = Polygon(corners)
    outline = shape(transform_geom(crs, WGS84, ring.__geo_interface__))
    return bbox, orient(outline, 1.0)


# ---------------------------------------------------------------------------------------
# Reading a scene
# ---------------------------------------------------------------------------------------


@dataclass
class OpenDate:
    """A date's files open for windowed reads, checked to share one grid and dtype."""

    datasets: list[Any]
    reads: list[tuple[int, list[int]]]  # (dataset, 1-based band indexes) in output order
    bands: tuple[str, ...]
    sensor: str | None
    acquired: datetime | None
    gsd_m: float | None
    grid: tuple[Any, Any, int, int] = field(default=(None, None, 0, 0))  # crs, transform, w, h

    def read(self, window: Any) -> tuple[np.ndarray, bool]:
        """``[H, W, C]`` pixels of ``window`` and whether every pixel of every band is nodata."""
        parts, masks = [], []
        for k, indexes in self.reads:
            data = self.datasets[k].read(indexes, window=window, masked=True)
            parts.append(np.ma.getdata(data))
            masks.append(np.ma.getmaskarray(data))
        pixels = np.moveaxis(np.concatenate(parts, axis=0), 0, -1)
        return pixels, bool(np.concatenate(masks, axis=0).all())

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()


def _band_names(ds: Any, given: tuple[str, ...] | None, n_files: int, path: str) -> tuple[str, ...]:
    if given is not None:
        if len(given) != ds.count:
            raise BadRecord(f"{Path(path).name} has {ds.count} bands, named {len(given)} ({', '.join(given)})")
        return given
    described = tuple(d.strip() for d in ds.descriptions if d and d.strip())
    if len(described) == ds.count:
        return described
    if n_files == 1 and ds.count in DEFAULT_BANDS:
        return DEFAULT_BANDS[ds.count]
    stem = Path(path).stem if n_files > 1 else ""
    return tuple(f"{stem + '_' if stem else ''}b{i + 1}" for i in range(ds.count))


def open_date(date: SceneDate, wanted: tuple[str, ...] | None, label: str) -> OpenDate:
    """Open one date's files; raises :class:`BadRecord` naming the file that does not fit."""
    import rasterio

    datasets: list[Any] = []
    try:
        names: list[tuple[int, int, str]] = []  # (dataset, band index, name)
        grid = None
        dtype = None
        for k, band_file in enumerate(date.files):
            try:
                ds = rasterio.open(band_file.path)
            except rasterio.errors.RasterioIOError as err:
                raise BadRecord(f"{label}: cannot read {band_file.path}: {err}") from None
            datasets.append(ds)
            name = Path(band_file.path).name
            if ds.crs is None:
                raise BadRecord(f"{label}: {name} has no CRS (not georeferenced)")
            this = (ds.crs, ds.transform, ds.width, ds.height)
            if grid is None:
                grid, dtype = this, ds.dtypes[0]
            elif this != grid:
                raise BadRecord(f"{label}: {name} is on another grid ({ds.width}x{ds.height}, "
                                f"{crs_name(ds.crs)}, {tuple(ds.transform)[:6]}) than "
                                f"{Path(date.files[0].path).name} ({grid[2]}x{grid[3]}, "
                                f"{crs_name(grid[0])}, {tuple(grid[1])[:6]})")
            if set(ds.dtypes) != {dtype}:
                raise BadRecord(f"{label}: {name} has dtypes {', '.join(sorted(set(ds.dtypes)))}, "
                                f"expected {dtype}")
            for i, band in enumerate(_band_names(ds, band_file.names, len(date.files), band_file.path)):
                names.append((k, i + 1, band))
        all_names = [n for _, _, n in names]
        if len(set(all_names)) != len(all_names):
            raise BadRecord(f"{label}: band names repeat: {', '.join(all_names)}")
        if wanted is not None:
            lacking = [b for b in wanted if b not in all_names]
            if lacking:
                raise BadRecord(f"{label}: no band {', '.join(lacking)} (bands: {', '.join(all_names)})")
            names = [next(n for n in names if n[2] == b) for b in wanted]
        reads: list[tuple[int, list[int]]] = []
        for k, index, _ in names:  # consecutive bands of one file read in one call
            if reads and reads[-1][0] == k:
                reads[-1][1].append(index)
            else:
                reads.append((k, [index]))
        first = datasets[0]
        tags = {**first.tags(), **first.tags(ns="IMAGERY")}
        try:
            sensor, acquired, file_time = tag_metadata(tags)
        except BadRecord as err:
            raise BadRecord(f"{label}: {Path(date.files[0].path).name}: {err}") from None
        id_sensor, id_time = product_metadata(" ".join(Path(f.path).name for f in date.files))
        if date.acquired is not None:
            try:
                acquired = parse_datetime(date.acquired)
            except ValueError as err:
                raise BadRecord(f"{label}: datetime {err}") from None
        centre_lat = _centre_lat(first)
        return OpenDate(
            datasets=datasets, reads=reads, bands=tuple(n for _, _, n in names),
            sensor=date.sensor or sensor or id_sensor,
            acquired=acquired or id_time or file_time,
            gsd_m=date.gsd_m or pixel_size_m(first.transform, first.crs, centre_lat),
            grid=grid)
    except BaseException:
        for ds in datasets:
            ds.close()
        raise


def _centre_lat(ds: Any) -> float:
    from rasterio.warp import transform as warp_transform

    x, y = ds.transform @ (ds.width / 2, ds.height / 2)
    return float(warp_transform(ds.crs, WGS84, [x], [y])[1][0])


def scene_tiles(scene: Scene, options: TileOptions) -> Iterator[dict[str, Any]]:
    """Rows of the scene's tiles, and ``{"record", "reason"}`` dicts for the bad ones.

    Raises :class:`BadRecord` when the scene as a whole cannot be tiled.
    """
    from rasterio.windows import Window
    from shapely import to_wkb
    from shapely.geometry import shape

    if scene.problems:
        raise BadRecord("; ".join(scene.problems))
    labels = ["t1", "t2"] if len(scene.dates) == 2 else ["scene"]
    opened: list[OpenDate] = []
    try:
        for date, label in zip(scene.dates, labels):
            opened.append(open_date(date, options.bands, label))
        crs, transform, width, height = opened[0].grid
        for other in opened[1:]:
            if other.grid != opened[0].grid or other.bands != opened[0].bands:
                raise BadRecord(
                    f"the dates are not co-registered: t1 is {width}x{height} {crs_name(crs)} "
                    f"{tuple(transform)[:6]} [{', '.join(opened[0].bands)}], t2 is "
                    f"{other.grid[2]}x{other.grid[3]} {crs_name(other.grid[0])} "
                    f"{tuple(other.grid[1])[:6]} [{', '.join(other.bands)}]")
        size = options.tile_size
        rows, cols = tile_offsets(height, size, options.step), tile_offsets(width, size, options.step)
        if not rows or not cols:
            raise BadRecord(f"scene is {width}x{height} pixels, smaller than a {size}x{size} tile")
        area = shape(scene.geometry) if scene.geometry is not None else None
        for row in rows:
            for col in cols:
                window = Window(col, row, size, size)
                tile_id = f"{scene.id}/y{row:06d}_x{col:06d}"
                where = f"{scene.source}:{col},{row}+{size}x{size}"
                bbox, outline = window_footprint(window, transform, crs)
                if area is not None and not area.intersects(outline):
                    yield {"record": tile_id, "source_path": where,
                           "reason": "tile lies outside the item's geometry"}
                    continue
                reads = [date.read(window) for date in opened]
                empty = [label for (_, nodata), label in zip(reads, labels) if nodata]
                if empty:
                    yield {"record": tile_id, "source_path": where,
                           "reason": f"nodata-only tile ({', '.join(empty)}: every pixel is nodata)"}
                    continue
                yield make_row(
                    id=tile_id, split=options.split, image=encode_image(reads[0][0]),
                    image_t2=encode_image(reads[1][0]) if len(reads) > 1 else None,
                    bands=opened[0].bands, source=where, bbox=bbox, footprint=to_wkb(outline),
                    crs=crs_name(crs), gsd_m=opened[0].gsd_m, sensor=opened[0].sensor,
                    acquired=opened[0].acquired,
                    acquired_t2=opened[1].acquired if len(opened) > 1 else None)
    finally:
        for date in opened:
            date.close()


# ---------------------------------------------------------------------------------------
# Converting: one scene per task, resumable
# ---------------------------------------------------------------------------------------


def scene_fingerprint(scene: Scene, options: TileOptions) -> str:
    """The options, the scene, and each local file's size and mtime (a URL: its address)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode())
    h.update(scene.to_json().encode())
    for date in scene.dates:
        for band_file in date.files:
            path = Path(band_file.path)
            if path.is_file():
                stat = path.stat()
                h.update(f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return h.hexdigest()


def convert_scene(scene: Scene, index: int, out: str | os.PathLike[str], options: TileOptions) -> dict[str, Any]:
    """Tile one scene into ``out`` as chunk ``index``; returns its manifest's counts.

    Skips a scene whose manifest carries the same fingerprint; otherwise deletes what an
    earlier run left of the chunk first, so a re-run never duplicates a tile.
    """
    out = Path(out)
    meta = out / "_meta"
    (meta / "chunks").mkdir(parents=True, exist_ok=True)
    (meta / "quarantine").mkdir(parents=True, exist_ok=True)
    fingerprint = scene_fingerprint(scene, options)
    manifest_path = meta / "chunks" / f"{index:05d}.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            return {"index": index, "converted": manifest["converted"],
                    "quarantined": manifest["quarantined"], "skipped": True}
    manifest_path.unlink(missing_ok=True)
    for path in _chunk_files(out, index):
        path.unlink(missing_ok=True)
    bad: list[dict[str, str]] = []
    converted = 0
    with ShardWriter(out, max_bytes=options.max_bytes, prefix=f"part-{index:05d}") as writer:
        try:
            for item in scene_tiles(scene, options):
                if "reason" in item:
                    bad.append({"dataset": options.dataset, **item})
                else:
                    writer.write(item)
                    converted += 1
        except BadRecord as err:
            bad.append({"dataset": options.dataset, "record": scene.id,
                        "source_path": scene.source, "reason": str(err)})
    if bad:
        _write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA),
                     meta / "quarantine" / f"{index:05d}.parquet")
    manifest = {"fingerprint": fingerprint, "scene": scene.id, "converted": converted,
                "quarantined": len(bad)}
    _atomic_write_bytes(manifest_path, json.dumps(manifest).encode())
    return {"index": index, "converted": converted, "quarantined": len(bad), "skipped": False}


def finish_conversion(out: str | os.PathLike[str], scenes: Sequence[Scene], options: TileOptions,
                      results: Sequence[Mapping[str, Any]]) -> ConversionResult:
    """After every scene's task: drop chunks of scenes no longer listed, gather the
    quarantine, write ``_SUCCESS``."""
    out = Path(out)
    if sorted(r["index"] for r in results) != list(range(len(scenes))):
        raise RuntimeError(f"{len(results)} scene results for {len(scenes)} scenes")
    _drop_stale_chunks(out, len(scenes))
    _write_quarantine(out / "_meta", len(scenes), [])
    converted = sum(r["converted"] for r in results)
    quarantined = sum(r["quarantined"] for r in results)
    skipped = sum(bool(r["skipped"]) for r in results)
    summary = {"dataset": options.dataset, "converted": converted, "quarantined": quarantined,
               "chunks": len(scenes), "scenes": [s.id for s in scenes],
               "options": dataclasses.asdict(options)}
    _atomic_write_bytes(out / "_SUCCESS", json.dumps(summary, indent=1).encode())
    return ConversionResult(options.dataset, converted, quarantined, len(scenes) - skipped,
                            skipped, out)


def convert_scenes(scenes: Sequence[Scene], out: str | os.PathLike[str], options: TileOptions) -> ConversionResult:
    """Every scene in this process, one after another (the Ray job runs them as tasks)."""
    results = [convert_scene(scene, k, out, options) for k, scene in enumerate(scenes)]
    return finish_conversion(out, scenes, options, results)
