"""Converters from each public dataset's own layout to Parquet shards of SHARD_SCHEMA.

``CONVERTERS`` maps the CLI name (``rsir convert <name>``) to the converter class;
importing this package registers every dataset module below.
"""

from rsir.data.converters import captions, dubai_ccd, levir_cc, patternnet
from rsir.data.converters.base import (
    CONVERTERS,
    BadRecord,
    ConversionResult,
    Converter,
    Record,
    infer_changed,
    read_quarantine,
    run_conversion,
)

__all__ = [
    "CONVERTERS", "BadRecord", "ConversionResult", "Converter", "Record", "captions",
    "dubai_ccd", "infer_changed", "levir_cc", "patternnet", "read_quarantine", "run_conversion",
]
