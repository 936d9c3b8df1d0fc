"""`rsir evaluate` as a Ray job: `ray job submit -- python jobs/evaluate.py --config X ...`."""

from __future__ import annotations

import sys

from rsir.cli import main as rsir_main


def main(argv: list[str] | None = None) -> int:
    return rsir_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
