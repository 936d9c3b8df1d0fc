"""The end-to-end demo as a Ray job: ``ray job submit -- python jobs/demo.py --out DIR``."""

from __future__ import annotations

import sys

from rsir.cli import main as rsir_main


def main(argv: list[str] | None = None) -> int:
    return rsir_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
