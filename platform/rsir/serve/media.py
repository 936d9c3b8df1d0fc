"""What the ingress answers besides JSON: the search page's files, the thumbnails of
archived images (read from the shards), and results as GeoJSON."""

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
GEOJSON = "application/geo+json"
# A result's fields that a GeoJSON feature carries as properties (its footprint is the
# geometry, its bbox the feature's bbox).
FEATURE_PROPERTIES = ("id", "score", "rank", "acquired", "acquired_t2", "class_name", "changed",
                      "sensor", "text", "owner", "thumbnail", "thumbnail_t2")


def feature_collection(out: dict[str, Any]) -> dict[str, Any]:
    """A search response as a GeoJSON FeatureCollection (RFC 7946): one feature per result,
    in rank order (rank 1 first); a result without a footprint has a null geometry. The
    response's kind, target, version and missing shards ride along as foreign members."""
    features = []
    for rank, r in enumerate(out["results"], 1):
        props = {k: v for k, v in {**r, "rank": rank}.items() if k in FEATURE_PROPERTIES}
        feature = {"type": "Feature", "id": r["id"], "geometry": r.get("footprint"),
                   "properties": props}
        if r.get("bbox"):
            feature["bbox"] = r["bbox"]
        features.append(feature)
    return {"type": "FeatureCollection", "features": features,
            **{k: out[k] for k in ("kind", "target", "version", "k", "shards", "missing_shards")
               if k in out}}


class Thumbnails:
    """id -> encoded image bytes of the shards (index built lazily, small LRU of row groups)."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = roots
        self._index: dict[str, tuple[str, int, int]] | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def _build(self) -> dict[str, tuple[str, int, int]]:
        import pyarrow.parquet as pq

        from rsir.data.schema import shard_paths

        index: dict[str, tuple[str, int, int]] = {}
        for root in self.roots:
            try:
                paths = shard_paths(root)
            except FileNotFoundError:
                log.warning("thumbnails: no shards under %s", root)
                continue
            for path in paths:
                f = pq.ParquetFile(path)
                for rg in range(f.num_row_groups):
                    ids = f.read_row_group(rg, columns=["id"]).column(0).to_pylist()
                    for off, i in enumerate(ids):
                        index.setdefault(str(i), (str(path), rg, off))
        return index

    def get(self, id_: str, date: int) -> bytes | None:
        import pyarrow.parquet as pq

        with self._lock:
            if self._index is None:
                self._index = self._build()
            loc = self._index.get(id_)
            if loc is None:
                return None
            path, rg, off = loc
            key = (path, rg)
            table = self._cache.get(key)
            if table is None:
                table = pq.ParquetFile(path).read_row_group(rg, columns=["image", "image_t2"])
                self._cache[key] = table
                while len(self._cache) > 8:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
        value = table.column("image_t2" if date == 2 else "image")[off].as_py()
        return value


def to_png(data: bytes) -> tuple[bytes, str]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return data, "image/jpeg"
    from PIL import Image

    from rsir.data.schema import decode_image

    array = decode_image(data)[:, :, :3].astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    array = ((array - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array if array.shape[2] == 3 else array[:, :, 0]).save(buf, format="PNG")
    return buf.getvalue(), "image/png"
