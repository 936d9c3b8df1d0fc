"""``rsir convert geotiff|stac`` (Ray glue): tile scenes as a Ray Data job, a scene per task.

The driver only lists the scenes (file names, or a STAC ItemCollection); each task opens
its scene, reads it window by window and writes its own shards and manifest into ``out``
(:func:`rsir.data.converters.geotiff.convert_scene`), so no scene is ever whole in memory,
on the driver or anywhere. ``out`` must be a path every node can write (a shared volume).
A re-run skips the scenes whose manifests match, like every converter.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import ray
import ray.data

from rsir.cluster import init_ray
from rsir.data.converters.base import ConversionResult
from rsir.data.converters.geotiff import (
    Scene,
    TileOptions,
    convert_scene,
    convert_scenes,
    finish_conversion,
    list_scenes,
)
from rsir.data.converters.stac import list_stac_scenes

GEO_SOURCES = ("geotiff", "stac")


def _convert_item(item: dict[str, Any], out: str, options: TileOptions) -> dict[str, Any]:
    return convert_scene(Scene.from_json(item["scene"]), int(item["index"]), out, options)


def convert_scenes_ray(scenes: Sequence[Scene], out: str | os.PathLike[str],
                       options: TileOptions) -> ConversionResult:
    """Every scene as one Ray Data task (a block per scene), then the driver's summary."""
    items = [{"index": k, "scene": scene.to_json()} for k, scene in enumerate(scenes)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    results = ds.map(_convert_item, fn_kwargs={"out": str(out), "options": options},
                     num_cpus=1).take_all()
    return finish_conversion(out, scenes, options, results)


def cli_main(args: argparse.Namespace) -> int:
    """List the scenes, tile them (a Ray Data job, or this process with ``--local``), report."""
    bands = tuple(b.strip() for b in args.bands.split(",")) if args.bands else None
    options = TileOptions(dataset=args.dataset, tile_size=args.tile_size, stride=args.stride,
                          bands=bands, split=args.split, max_bytes=int(args.shard_mb * 2**20))
    if args.dataset == "stac":
        if args.t2 is not None:
            raise SystemExit("rsir convert stac: --t2 pairs GeoTIFF scenes; it has no STAC form")
        scenes = list_stac_scenes(args.src, bands)
    else:
        scenes = list_scenes(args.src, args.t2)
    if args.local:
        result = convert_scenes(scenes, args.out, options)
    else:
        init_ray(args.address)
        result = convert_scenes_ray(scenes, args.out, options)
    print(f"{result.dataset}: {len(scenes)} scenes, converted {result.converted} tiles, "
          f"quarantined {result.quarantined} ({100 * result.bad_fraction:.1f}%), scenes written "
          f"{result.chunks_written}, skipped {result.chunks_skipped} -> {result.out}")
    if result.bad_fraction > args.max_bad_fraction:
        print(f"{result.dataset}: {100 * result.bad_fraction:.1f}% quarantined, more than "
              f"--max-bad-fraction {args.max_bad_fraction:g}; reasons in "
              f"{result.out}/_meta/quarantine.parquet")
        return 1
    return 0
