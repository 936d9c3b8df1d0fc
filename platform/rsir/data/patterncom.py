"""The PATTERNCOM benchmark's rules (pure): which classes merge, and how a query image's
texts are formed, as the authors' code does (github.com/billpsomas/rscir, ``utils.py`` and
``evaluate.py``). Shared by the PatternNet converter (``_meta/composed_queries.parquet``)
and the evaluation (``rsir.retrieval.composed``), so both form the same queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Classes the authors merge before deciding relevance (utils.class_mapping in rscir).
PATTERNCOM_CLASS_MAPPING: dict[str, str] = {
    "denseresidential": "residential",
    "sparseresidential": "residential",
    "closedroad": "road",
    "intersection": "road",
    "bridge": "roadpass",
    "overpass": "roadpass",
    "ferryterminal": "pier",
    "harbor": "pier",
    "parkingspace": "parking",
    "parkinglot": "parking",
}

# Classes the authors merge, per attribute, before forming the query texts (rscir
# utils.fix_query_attributelabels, which rewrites "<attribute><class>" group labels): a
# query's texts are the other values of its attribute within its group. Only these
# attributes merge, and only these pairs; e.g. the colour groups of dense and sparse
# residential stay apart, although relevance merges them.
PATTERNCOM_QUERY_CLASS_MERGES: dict[str, dict[str, str]] = {
    "density": {"denseresidential": "residential", "sparseresidential": "residential"},
    "shape": {"closedroad": "road", "intersection": "road"},
    "context": {"bridge": "roadpass", "overpass": "roadpass"},
    "existence": {"ferryterminal": "pier", "harbor": "pier",
                  "parkingspace": "parking", "parkinglot": "parking"},
}

# The authors' P@k / R@k cut-offs on PatternNet (evaluate.py: at = [5, 10, 15, 20]).
PATTERNCOM_KS: tuple[int, ...] = (5, 10, 15, 20)

def query_texts(
    attribute: str,
    classes: Sequence[str],
    values: Sequence[str | None],
    query_merges: Mapping[str, Mapping[str, str]] | None = None,
) -> list[tuple[int, str]]:
    """``(image index, text)`` of every composed query of one attribute, as the authors'
    ``evaluate.py`` forms them: image i annotated with value v is a query with each other
    value of the attribute found in its group "attribute + class", the class merged per
    attribute by ``query_merges`` (default :data:`PATTERNCOM_QUERY_CLASS_MERGES`). Images
    in input order, texts sorted (the authors iterate a set: the order is immaterial)."""
    merges = (PATTERNCOM_QUERY_CLASS_MERGES if query_merges is None else query_merges).get(attribute, {})
    group = [merges.get(c, c) for c in classes]
    group_values: dict[str, set[str]] = {}
    for g, v in zip(group, values):
        if v is not None:
            group_values.setdefault(g, set()).add(v)
    return [(i, text) for i, (g, v) in enumerate(zip(group, values)) if v is not None
            for text in sorted(group_values[g] - {v})]
