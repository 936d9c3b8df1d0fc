"""rsir: remote-sensing image <-> text retrieval, trained and served on Ray.

Importing rsir never starts Ray; the Ray glue lives in ``rsir.train``, ``rsir.tune`` and
``rsir.serve`` and is imported only by the jobs and the CLI.
"""

__version__ = "0.1.0"
