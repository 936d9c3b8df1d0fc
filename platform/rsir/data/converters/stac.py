"""A STAC ItemCollection -> :class:`~rsir.data.converters.geotiff.Scene` s (pure: pystac).

Each item is one scene. Its raster assets are the GeoTIFF / COG assets (media type
``image/tiff``, or a ``.tif`` href) whose roles, when given, include ``data``; one asset
holding several bands is a multi-band file, several one-band assets are the scene's bands,
named by their ``eo:bands`` name or else the asset key. Relative hrefs resolve against the
collection file; URLs are left for rasterio to open where the tasks run.

The item gives the acquisition time (``datetime``, else ``start_datetime``), the sensor
(``platform``, else ``constellation``, else ``instruments``), the ground sample distance
(``gsd`` or ``eo:gsd``) and its footprint: tiles whose own footprint (from the raster's
transform) misses the item's geometry are quarantined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rsir.data.converters.geotiff import BandFile, Scene, SceneDate, normalise_sensor

TIFF_MEDIA = "image/tiff"


def _is_raster(key: str, asset: Any) -> bool:
    roles = asset.roles or []
    if roles and "data" not in roles:
        return False
    media = (asset.media_type or "").lower()
    return media.startswith(TIFF_MEDIA) or asset.href.lower().split("?")[0].endswith((".tif", ".tiff"))


def _asset_band_names(key: str, asset: Any) -> tuple[str, ...] | None:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands")
    if bands:
        names = tuple(str(b.get("name") or b.get("common_name") or "") for b in bands)
        return names if all(names) else None
    return None


def item_scene(item: Any, base: Path, bands: tuple[str, ...] | None = None) -> Scene:
    """One item as a scene; what is wrong with it goes to ``problems`` (quarantined)."""
    problems: list[str] = []
    props = item.properties
    assets = [(k, a) for k, a in sorted(item.assets.items()) if _is_raster(k, a)]
    if bands is not None and len(assets) > 1:
        # One-band assets: select them by name (a multi-band asset is selected from inside).
        named = {(_asset_band_names(k, a) or (k,))[0]: (k, a) for k, a in assets}
        assets = [named[b] for b in bands if b in named]
        lacking = [b for b in bands if b not in named]
        if lacking:
            problems.append(f"no asset for band {', '.join(lacking)} (assets: {', '.join(sorted(named))})")
    if not assets:
        problems.append("no GeoTIFF data asset (media type image/tiff or a .tif href)")
    files = []
    for key, asset in assets:
        href = asset.href
        if "://" not in href and not os.path.isabs(href):
            href = str((base / href).resolve())
        names = _asset_band_names(key, asset)
        if names is None and len(assets) > 1:
            names = (key,)  # a one-band asset of several: its key names its band
        files.append(BandFile(href, names))
    when = item.datetime.isoformat() if item.datetime is not None else props.get("start_datetime")
    if when is None:
        problems.append("item has neither datetime nor start_datetime")
    sensor = props.get("platform") or props.get("constellation")
    if sensor is None and props.get("instruments"):
        sensor = "+".join(props["instruments"])
    gsd = props.get("gsd", props.get("eo:gsd"))
    date = SceneDate(files=tuple(files), acquired=when,
                     sensor=normalise_sensor(sensor) if sensor else None,
                     gsd_m=float(gsd) if gsd is not None else None)
    return Scene(id=item.id, dates=(date,), source=f"stac:{item.id}", geometry=item.geometry,
                 problems=tuple(problems))


def list_stac_scenes(src: str | os.PathLike[str], bands: tuple[str, ...] | None = None) -> list[Scene]:
    """The scenes of an ItemCollection JSON file, in its order; a repeated id is quarantined."""
    import pystac

    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"stac: no ItemCollection file at {path}")
    collection = pystac.ItemCollection.from_file(str(path))
    scenes, seen = [], set()
    for item in collection:
        scene = item_scene(item, path.parent, bands)
        if item.id in seen:
            scene = Scene(id=f"{item.id}#{len(scenes)}", dates=scene.dates, source=scene.source,
                          geometry=scene.geometry, problems=(f"duplicate item id {item.id!r}",))
        seen.add(item.id)
        scenes.append(scene)
    if not scenes:
        raise ValueError(f"stac: {path} holds no items")
    return scenes
