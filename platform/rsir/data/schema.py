"""The one shard schema every dataset is converted to, with its writer, reader and codecs.

Rows (one per image, or per bitemporal pair):

=========== ================================================================================
id          unique string id within the dataset
split       ``train`` / ``val`` / ``test`` (or another split name the dataset defines)
image       encoded bytes of the image (PNG/JPEG/TIFF, or ``.npy`` for any band count/dtype)
image_t2    encoded bytes of the second date of a bitemporal pair, else null
bands       channel names, in order (``["R", "G", "B"]``, Dubai-CCD's six bands, ...)
captions    list of ``{text, lang}``; ``lang`` is an ISO 639-1 code (en, ar, fr, it)
changed     whether a pair shows a change (null for single images)
class_name  the scene class, or null
attributes  string map (PATTERNCOM-style: color, shape, quantity, density, ...)
objects     list of ``{box, category, score}``: ``box`` is ``[x0, y0, x1, y1]`` as fractions
            of the image's width and height (so it survives resizing), ``score`` a detector's
            confidence in [0, 1] (1.0 for ground truth). The GaLR local branch reads these.
source      where the row came from (a path inside the source dataset, or ``demo_world``)
bbox        WGS84 bounding box ``[min_lon, min_lat, max_lon, max_lat]`` of the image (float64;
            ``min_lon > max_lon`` across the antimeridian, as ``transform_bounds`` and STAC write it)
footprint   the image's outline in WGS84 lon/lat as WKB (a polygon; ``shapely.from_wkb``)
crs         the source raster's CRS as ``AUTHORITY:CODE`` (``EPSG:32618``)
gsd_m       ground sample distance in metres per pixel
sensor      platform name as STAC writes it (``landsat-8``, ``sentinel-2a``)
acquired    acquisition time of the image (of the first date of a pair), UTC
acquired_t2 acquisition time of the second date of a pair, UTC
=========== ================================================================================

The geography columns (``bbox`` .. ``acquired_t2``) are null where a dataset knows no
geography (LEVIR-CC, Dubai-CCD, the captioning benchmarks); shards written before they
existed read with them null (:func:`read_table`, :func:`iter_rows`). ``bbox`` is a column
of its own, beside the polygon, so a box filter is plain Arrow compute on four floats
(``pc.list_element(bbox, i)``) without decoding geometry; the polygon is WKB (the
GeoParquet encoding: compact, exact float64 vertices, vectorised by shapely) and the
schema carries GeoParquet ``geo`` metadata naming it, so GeoPandas / DuckDB read it too.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

log = logging.getLogger(__name__)

CAPTION_TYPE = pa.struct([("text", pa.string()), ("lang", pa.string())])
OBJECT_TYPE = pa.struct(
    [("box", pa.list_(pa.float32(), 4)), ("category", pa.string()), ("score", pa.float32())]
)

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_t2", pa.binary()),
        pa.field("bands", pa.list_(pa.string())),
        pa.field("captions", pa.list_(CAPTION_TYPE)),
        pa.field("changed", pa.bool_()),
        pa.field("class_name", pa.string()),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field("objects", pa.list_(OBJECT_TYPE)),
        pa.field("source", pa.string()),
        pa.field("bbox", pa.list_(pa.float64(), 4)),
        pa.field("footprint", pa.binary()),
        pa.field("crs", pa.string()),
        pa.field("gsd_m", pa.float64()),
        pa.field("sensor", pa.string()),
        pa.field("acquired", pa.timestamp("us", tz="UTC")),
        pa.field("acquired_t2", pa.timestamp("us", tz="UTC")),
    ],
    # GeoParquet 1.1: the primary geometry column, WKB, lon/lat (no "crs" key = OGC:CRS84).
    metadata={"geo": json.dumps({
        "version": "1.1.0", "primary_column": "footprint",
        "columns": {"footprint": {"encoding": "WKB", "geometry_types": ["Polygon"]}}})},
)
GEO_COLUMNS = ("bbox", "footprint", "crs", "gsd_m", "sensor", "acquired", "acquired_t2")

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("record", pa.string()),
        pa.field("source_path", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

NPY_MAGIC = b"\x93NUMPY"


# ---------------------------------------------------------------------------------------
# Image codecs
# ---------------------------------------------------------------------------------------


def encode_image(array: np.ndarray, fmt: str = "png") -> bytes:
    """Encode an ``[H, W, C]`` array. PNG for 1/3/4-band uint8, ``.npy`` for anything else."""
    if array.ndim == 2:
        array = array[:, :, None]
    if fmt == "png" and array.dtype == np.uint8 and array.shape[2] in (1, 3, 4):
        img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to an ``[H, W, C]`` array (uint8 or the stored dtype).

    Raises ``ValueError`` with the cause when the bytes are not an image.
    """
    if not data:
        raise ValueError("empty image bytes")
    if data[:6] == NPY_MAGIC:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.mode in ("P", "PA", "CMYK", "YCbCr", "LA"):
                    img = img.convert("RGB")
                array = np.asarray(img)
        except Exception as err:  # PIL raises many types for corrupt data
            raise ValueError(f"undecodable image: {err}") from err
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"image has shape {array.shape}, expected [H, W, C]")
    return array


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


def make_row(
    *,
    id: str,
    split: str,
    image: bytes,
    image_t2: bytes | None = None,
    bands: Iterable[str] = ("R", "G", "B"),
    captions: Iterable[Mapping[str, str]] = (),
    changed: bool | None = None,
    class_name: str | None = None,
    attributes: Mapping[str, str] | None = None,
    objects: Iterable[Mapping[str, Any]] = (),
    source: str = "",
    bbox: Sequence[float] | None = None,
    footprint: bytes | None = None,
    crs: str | None = None,
    gsd_m: float | None = None,
    sensor: str | None = None,
    acquired: datetime | None = None,
    acquired_t2: datetime | None = None,
) -> dict[str, Any]:
    """A row of :data:`SHARD_SCHEMA` as a plain dict (geography null unless given)."""
    if bbox is not None and len(bbox) != 4:
        raise ValueError(f"bbox {bbox!r}: expected [min_lon, min_lat, max_lon, max_lat]")
    for name, when in (("acquired", acquired), ("acquired_t2", acquired_t2)):
        if when is not None and when.tzinfo is None:
            raise ValueError(f"{name} {when.isoformat()} has no time zone (UTC is expected)")
    return {
        "id": id,
        "split": split,
        "image": image,
        "image_t2": image_t2,
        "bands": list(bands),
        "captions": [{"text": c["text"], "lang": c["lang"]} for c in captions],
        "changed": changed,
        "class_name": class_name,
        "attributes": list((attributes or {}).items()),
        "objects": [
            {"box": [float(v) for v in o["box"]], "category": o["category"],
             "score": float(o.get("score", 1.0))}
            for o in objects
        ],
        "source": source,
        "bbox": [float(v) for v in bbox] if bbox is not None else None,
        "footprint": footprint,
        "crs": crs,
        "gsd_m": float(gsd_m) if gsd_m is not None else None,
        "sensor": sensor,
        "acquired": acquired,
        "acquired_t2": acquired_t2,
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def attributes_dict(value: Any) -> dict[str, str]:
    """``attributes`` as read back (a list of key/value tuples) -> dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {k: v for k, v in value}


# ---------------------------------------------------------------------------------------
# Writer / reader
# ---------------------------------------------------------------------------------------


class ShardWriter:
    """Writes rows into Parquet shards of at most ``max_bytes`` of row data each.

    Each shard is written to a temporary name and renamed when complete, so a reader never
    sees a partial shard. ``prefix`` lets several writers share a directory.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        max_bytes: int = 64 * 2**20,
        prefix: str = "part",
        schema: pa.Schema = SHARD_SCHEMA,
        start_index: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.schema = schema
        self.index = start_index
        self.paths: list[Path] = []
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self._buffer_bytes += len(row.get("image") or b"") + len(row.get("image_t2") or b"") + 256
        if self._buffer_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        path = self.out_dir / f"{self.prefix}-{self.index:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        self.paths.append(path)
        self.rows_written += len(self._buffer)
        self.index += 1
        self._buffer, self._buffer_bytes = [], 0

    def close(self) -> list[Path]:
        self.flush()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()


def write_shards(
    rows: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    max_bytes: int = 64 * 2**20,
    prefix: str = "part",
) -> list[Path]:
    """Write rows of :data:`SHARD_SCHEMA` to bounded-size Parquet shards; returns their paths."""
    with ShardWriter(out_dir, max_bytes=max_bytes, prefix=prefix) as writer:
        for row in rows:
            writer.write(row)
    return writer.paths


def shard_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet shards under ``path`` (a directory or a single file), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    paths = sorted(path.glob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{path}: no *.parquet shards")
    return paths


def read_table(
    path: str | os.PathLike[str],
    *,
    columns: list[str] | None = None,
    split: str | None = None,
) -> pa.Table:
    """Read shards into one table (optionally only ``columns`` and one ``split``); a column
    of :data:`SHARD_SCHEMA` that a shard lacks (written before it existed) reads as null."""
    filters = [("split", "=", split)] if split is not None else None
    tables = [
        pq.read_table(p, columns=columns, filters=filters, schema=SHARD_SCHEMA)
        for p in shard_paths(path)
    ]
    return pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()


def iter_rows(
    path: str | os.PathLike[str], *, split: str | None = None, batch_size: int = 256
) -> Iterator[dict[str, Any]]:
    """Stream rows shard by shard with bounded memory; a column of :data:`SHARD_SCHEMA` that
    a shard lacks (one written before the geography columns) reads as null."""
    for p in shard_paths(path):
        pf = pq.ParquetFile(p)
        missing = [name for name in SHARD_SCHEMA.names if name not in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                if split is None or row["split"] == split:
                    yield {**row, **dict.fromkeys(missing)}
