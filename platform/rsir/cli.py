"""``rsir``: the platform's command line.

Parsers are declared here (cheap); each command's implementation is imported only when
that command runs, so ``rsir --help`` never imports Ray or torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="recipe YAML in configs/")
    p.add_argument(
        "overrides", nargs="*", default=[], help="config overrides as key.path=value"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsir", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a public dataset's own layout to Parquet shards")
    p.add_argument("dataset", help="converter name (levir-cc, dubai-ccd, rsicd, rsitmd, "
                   "ucm-captions, sydney-captions, <name>-precomp, patternnet, geotiff, stac)")
    p.add_argument("--src", required=True, help="the dataset in its published layout")
    p.add_argument("--out", required=True, help="output directory for shards and _meta/")
    p.add_argument("--image-dir", default=None,
                   help="image folder when it is not where the layout puts it (precomp)")
    p.add_argument("--objects", default=None, metavar="PATH",
                   help="objects of the images: a folder of DOTA label files or a COCO JSON")
    p.add_argument("--translations", action="append", default=[], metavar="LANG=PATH",
                   help="another language's captions in the dataset's layout (repeatable)")
    p.add_argument("--limit", type=int, default=None,
                   help="convert only the first N records of each split")
    p.add_argument("--max-bad-fraction", type=float, default=0.05,
                   help="exit non-zero when more than this fraction of records is quarantined")
    p.add_argument("--chunk-size", type=int, default=1000,
                   help="records per resumable chunk (one manifest each)")
    p.add_argument("--shard-mb", type=float, default=64.0, help="maximum shard size in MiB")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    geo = p.add_argument_group("geotiff / stac (scenes -> tiles with footprints, a Ray Data job)")
    geo.add_argument("--tile-size", type=int, default=256, help="tile side in pixels")
    geo.add_argument("--stride", type=int, default=None, help="pixels between tiles (default: tile size)")
    geo.add_argument("--t2", default=None, metavar="DIR_OR_FILE",
                     help="the second date's scene(s), co-registered: bitemporal pair tiles")
    geo.add_argument("--bands", default=None, help="comma-separated band names to keep (default: all)")
    geo.add_argument("--split", default="train", help="the split of every tile")
    geo.add_argument("--local", action="store_true", help="tile in this process, not with Ray")
    geo.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func="rsir.data.converters.cli:cli_main")

    p = sub.add_parser("detect", help="fill every row's objects with a DOTA-trained OBB detector "
                       "(Ray Data), into a new archive")
    _add_config_args(p)
    p.add_argument("--shards", default=None, help="input archive (default: the recipe's data.shards)")
    p.add_argument("--out", required=True, help="output archive (shards and _meta/)")
    p.add_argument("--weights", default="yolo11n-obb.pt",
                   help="local ultralytics YOLO OBB weights (DOTA-v1); nothing is downloaded")
    p.add_argument("--score-threshold", type=float, default=0.25, help="lowest score kept")
    p.add_argument("--max-objects", type=int, default=None,
                   help="objects per image (default: the recipe's model.options.max_objects, else 300)")
    p.add_argument("--image-size", type=int, default=1024, help="detector input size in pixels")
    p.add_argument("--batch-size", type=int, default=16, help="images per detector call")
    p.add_argument("--concurrency", type=int, default=1, help="detector actors")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor without a GPU")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func="rsir.enrich:detect_main")

    p = sub.add_parser("translate", help="machine-translate the captions (Ray Data, transformers "
                       "MarianMT / NLLB / M2M100), into a new archive")
    p.add_argument("--shards", required=True, help="input archive")
    p.add_argument("--out", required=True, help="output archive (shards and _meta/)")
    p.add_argument("--to", required=True, help="target languages, ISO 639-1: ar,fr,it")
    p.add_argument("--model", required=True, action="append",
                   help="local model folder for every target, or LANG=PATH (repeat: one per language)")
    p.add_argument("--source", default="en", help="language of the captions to translate")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per generate() call")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest translation in tokens")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    p.add_argument("--use-gpu", action="store_true", help="a GPU per actor when the cluster has one")
    p.add_argument("--concurrency", type=int, default=1, help="translator actors")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor without a GPU")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func="rsir.enrich:translate_main")

    p = sub.add_parser("demo-world", help="generate the demo world as Parquet shards")
    p.add_argument("--out", required=True, help="output directory for the shards")
    p.add_argument("--n", type=int, default=1000, help="number of single-date scenes")
    p.add_argument("--pairs", type=int, default=None, help="number of pairs (default: --n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.set_defaults(func="rsir.data.demo_world:cli_main")

    p = sub.add_parser("demo", help="the whole platform end to end on the generated world")
    p.add_argument("--config", default=None, help="demo recipe (default: configs/demo.yaml)")
    p.add_argument("--out", default="out/demo", help="run directory for shards, runs, report")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("overrides", nargs="*", default=[], help="config overrides key.path=value")
    p.set_defaults(func="rsir.demo:cli_main")

    p = sub.add_parser("index", help="embed a split with Ray Data and publish an archive")
    _add_config_args(p)
    p.add_argument("--checkpoint", default=None, help="trained weights (default: model.checkpoint)")
    p.add_argument("--split", default=None, help="split to embed (default: data.test_split)")
    p.add_argument("--out", default=None,
                   help="archive root (versions + CURRENT); default train.run_dir/NAME/archive")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--append", action="store_true",
                        help="add the split's rows to the current version as a delta (no rebuild)")
    change.add_argument("--delete", nargs="+", metavar="ID", default=None,
                        help="tombstone these ids (and their captions) in the current version")
    change.add_argument("--compact", action="store_true",
                        help="rebuild the current version's live rows as one segment with a new index")
    p.set_defaults(func="rsir.evaluate:index_main")

    p = sub.add_parser("evaluate", help="score a trained model with the papers' protocols")
    _add_config_args(p)
    p.add_argument("--checkpoint", default=None, help="trained weights (default: model.checkpoint)")
    p.add_argument("--out", default=None, help="report directory; default train.run_dir/NAME/report")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func="rsir.evaluate:evaluate_main")

    p = sub.add_parser("train", help="train a recipe with Ray Train")
    _add_config_args(p, required=False)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--resume", default=None, help="run directory to resume")
    p.set_defaults(func="rsir.train.job:cli_main")

    p = sub.add_parser("tune", help="a Ray Tune campaign (WEICOM λ, MR rerank, training)")
    p.add_argument("--config", default=None, help="campaign YAML (configs/tune_*.yaml)")
    p.add_argument("--resume", default=None, help="campaign run directory to continue")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("overrides", nargs="*", default=[], help="config overrides key.path=value")
    p.set_defaults(func="rsir.tune.campaign:cli_main")

    p = sub.add_parser("check", help="what a job would read and need, and every problem "
                       "(exit 1 on any); starts nothing")
    _add_config_args(p)
    p.add_argument("--job", default="train",
                   choices=["train", "tune", "index", "evaluate", "detect", "translate", "serve"],
                   help="the job to check the recipe for (serve: --config is a serving YAML)")
    p.add_argument("--checkpoint", default=None, help="trained weights the job would load")
    p.add_argument("--split", default=None, help="index: the split to embed")
    p.add_argument("--shards", default=None, help="the archive (default: data.shards)")
    p.add_argument("--address", default=None,
                   help="compare with this Ray cluster's resources (default: this machine's)")
    p.set_defaults(func="rsir.check:cli_main")

    p = sub.add_parser("monitor", help="standing queries: apply monitors from YAML to an endpoint, "
                       "list them, or score an archive version's new rows")
    p.add_argument("action", choices=["apply", "list", "score"])
    p.add_argument("file", nargs="?", help="apply: the monitors YAML (a top-level 'monitors:' list)")
    p.add_argument("--endpoint", default="http://127.0.0.1:8000", help="apply / list: the rsir endpoint")
    p.add_argument("--api-key-env", default="RSIR_API_KEY", help="environment variable holding the API key")
    p.add_argument("--prune", action="store_true", help="apply: delete monitors the file does not name")
    p.add_argument("--store", help="score: the monitor database (a path: SQLite; or a URL)")
    p.add_argument("--target", choices=["images", "pairs"], help="score: the archive's target")
    p.add_argument("--archive", help="score: the archive root")
    p.add_argument("--previous", default=None, help="score: the version whose rows are not new")
    p.add_argument("--local", action="store_true", help="score: in this process, not on Ray")
    p.add_argument("--address", default=None, help="score: Ray cluster address (default: local)")
    p.set_defaults(func="rsir.monitor.cli:cli_main")

    p = sub.add_parser("serve", help="serve search (Ray Serve: encoders + ingress) over archives")
    _add_config_args(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func="rsir.serve.app:cli_main")

    return parser


GEO_SOURCES = ("geotiff", "stac")
# ``rsir convert`` options that only one kind of source reads, with their defaults.
SCENE_OPTIONS = {"tile_size": 256, "stride": None, "t2": None, "bands": None, "split": "train",
                 "local": False, "address": None}
LAYOUT_OPTIONS = {"image_dir": None, "objects": None, "translations": [], "limit": None,
                  "chunk_size": 1000}


def _check_convert_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An unknown source, or an option the chosen source does not read, is an error (not a
    traceback, not silently ignored)."""
    geo = args.dataset in GEO_SOURCES
    if not geo:
        from rsir.data.converters import CONVERTERS

        if args.dataset not in CONVERTERS.names():
            parser.error(f"convert: unknown dataset {args.dataset!r}; valid: "
                         f"{', '.join([*CONVERTERS.names(), *GEO_SOURCES])}")
    for name, default in (LAYOUT_OPTIONS if geo else SCENE_OPTIONS).items():
        if getattr(args, name) != default:
            kind = "a dataset layout's" if geo else "geotiff / stac"
            parser.error(f"convert {args.dataset}: --{name.replace('_', '-')} is {kind} option only")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "convert":
        _check_convert_options(parser, args)
        if args.dataset in GEO_SOURCES:
            args.func = "rsir.ingest:cli_main"  # scenes, not a dataset layout: the Ray Data job
    module_name, func_name = args.func.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
