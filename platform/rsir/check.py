"""``rsir check``: what a job would read and need, and every problem, with nothing started.

The same checks every job runs first (``rsir.preflight``), compared with this machine's
resources, or with a running cluster's (``--address``).
"""

from __future__ import annotations

import argparse

from rsir.config import load_config
from rsir.preflight import add_resources, check_recipe, cluster_nodes, local_nodes
from rsir.serve.config import ServeConfig
from rsir.serve.preflight import check_serve


def cli_main(args: argparse.Namespace) -> int:
    """``rsir check --config RECIPE [--job JOB] [overrides]``: the checks, nothing started."""
    if args.job == "serve":
        serve_cfg = load_config(args.config, args.overrides, cls=ServeConfig)
        check = check_serve(serve_cfg)
    else:
        cfg = load_config(args.config, args.overrides)
        check = check_recipe(cfg, args.job, checkpoint=args.checkpoint, split=args.split,
                             shards=args.shards)
    if args.address:
        import ray

        ray.init(address=args.address, log_to_driver=False)
        nodes = cluster_nodes()
    else:
        nodes = local_nodes()
    short = add_resources(check, nodes)
    if short:
        check.problems.append(f"recipe {check.recipe}: {short}")
    print(check.report())
    return 1 if check.problems else 0
