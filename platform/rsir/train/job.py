"""``rsir train`` / ``jobs/train.py``: train a recipe with Ray Train into a run directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rsir.config import RecipeConfig, load_config

log = logging.getLogger(__name__)


def resolve(args: argparse.Namespace) -> tuple[RecipeConfig, Path]:
    """The recipe and run directory: ``--resume RUN_DIR`` reuses the run's saved config."""
    if args.resume:
        run_dir = Path(args.resume)
        return load_config(run_dir / "config.yaml", args.overrides), run_dir
    if not args.config:
        raise SystemExit("rsir train: give --config RECIPE.yaml or --resume RUN_DIR")
    cfg = load_config(args.config, args.overrides)
    return cfg, Path(cfg.train.run_dir) / cfg.name


def cli_main(args: argparse.Namespace) -> int:
    from rsir.preflight import check_recipe, start_job
    from rsir.train.trainer import fit

    cfg, run_dir = resolve(args)
    shards = Path(cfg.data.shards)
    if cfg.demo.generate_if_missing and not shards.exists():
        from rsir.data.demo_world import ensure_world

        ensure_world(cfg, shards.parent)
    start_job(check_recipe(cfg, "train"), args.address, cfg.scaling.resource_timeout_s)
    result = fit(cfg, run_dir)
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.name}: {len(result.history)} epochs in {result.run_dir}; "
          f"last loss {last.get('loss', float('nan')):.4f}, val mR "
          f"{last.get('val_mR', float('nan')):.2f}; model ({cfg.train.select}) {result.checkpoint}")
    return 0
