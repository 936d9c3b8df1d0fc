"""``rsir convert <dataset> --src DIR --out DIR``: run one converter, report, gate on bad records."""

from __future__ import annotations

import argparse

from rsir.data.converters import CONVERTERS, run_conversion


def cli_main(args: argparse.Namespace) -> int:
    """Convert, print the counts, and return 1 when too many records were quarantined."""
    converter = CONVERTERS.build(args.dataset, src=args.src, image_dir=args.image_dir)
    result = run_conversion(
        converter, args.out, limit=args.limit, chunk_size=args.chunk_size,
        max_bytes=int(args.shard_mb * 2**20), progress=not args.no_progress,
    )
    extras = "".join(f", {name}: {n} rows" for name, n in result.extra_tables.items())
    print(
        f"{result.dataset}: converted {result.converted}, quarantined {result.quarantined} "
        f"({100 * result.bad_fraction:.1f}%), chunks written {result.chunks_written}, "
        f"skipped {result.chunks_skipped}{extras} -> {result.out}"
    )
    if result.bad_fraction > args.max_bad_fraction:
        print(
            f"{result.dataset}: {100 * result.bad_fraction:.1f}% of records quarantined, more "
            f"than --max-bad-fraction {args.max_bad_fraction:g}; reasons in "
            f"{result.out}/_meta/quarantine.parquet"
        )
        return 1
    return 0
