"""``rsir convert <dataset> --src DIR --out DIR``: run one converter, report, gate on bad records.

``--objects PATH`` and ``--translations LANG=PATH`` (repeatable) add objects and captions in
other languages from files (:mod:`rsir.data.converters.objects`, :meth:`Converter.caption_table`).
"""

from __future__ import annotations

import argparse

from rsir.data.converters import CONVERTERS, run_conversion


def parse_translations(values: list[str]) -> dict[str, str]:
    """``["fr=PATH", ...]`` -> ``{"fr": "PATH"}``; a malformed or repeated language is an error."""
    out: dict[str, str] = {}
    for value in values:
        lang, sep, path = value.partition("=")
        if not sep or not lang or not path:
            raise SystemExit(f"--translations {value!r}: expected LANG=PATH")
        if lang in out:
            raise SystemExit(f"--translations: {lang} is given twice")
        out[lang] = path
    return out


def cli_main(args: argparse.Namespace) -> int:
    """Convert, print the counts, and return 1 when too many records were quarantined."""
    converter = CONVERTERS.build(args.dataset, src=args.src, image_dir=args.image_dir,
                                 objects=args.objects,
                                 translations=parse_translations(args.translations))
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
    if args.objects is not None:
        print(f"{result.dataset}: {result.with_objects} of {result.converted} rows have objects "
              f"from {args.objects}")
    if result.bad_fraction > args.max_bad_fraction:
        print(
            f"{result.dataset}: {100 * result.bad_fraction:.1f}% of records quarantined, more "
            f"than --max-bad-fraction {args.max_bad_fraction:g}; reasons in "
            f"{result.out}/_meta/quarantine.parquet"
        )
        return 1
    return 0
