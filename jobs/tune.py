"""Tuning campaign job: ``ray job submit -- python jobs/tune.py --config configs/tune_weicom.yaml``.

Thin: parses arguments and calls ``rsir.tune.campaign.cli_main`` (which starts Ray only
when it runs). ``--resume RUN_DIR`` continues an interrupted campaign.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/tune.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="campaign YAML (configs/tune_*.yaml)")
    p.add_argument("--resume", default=None, help="campaign run directory to continue")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local/auto)")
    p.add_argument("overrides", nargs="*", default=[], help="overrides key.path=value")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.config and not args.resume:
        build_parser().error("--config or --resume is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rsir.tune.campaign import cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
