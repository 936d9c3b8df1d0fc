"""PatternNet scenes plus the PATTERNCOM composed-query benchmark.

Published layout (PatternNet from its authors; PATTERNCOM and ``patternnet.csv`` as
github.com/billpsomas/rscir README describes)::

    images/<class>/<file>.jpg         38 classes x 800 images, 256x256
    PatternCom/<attribute>.csv        color, context, density, existence, quantity, shape:
                                      rows ``query file, attribute, attribute value``, no header

Rows: one per PatternNet image, ``split`` = ``test`` (the archive PATTERNCOM retrieves
from), no captions, ``class_name`` = the folder name without underscores (the label the
authors' evaluation compares, e.g. ``dense_residential`` -> ``denseresidential``), and
``attributes`` = {attribute: value} from every PATTERNCOM file naming the image.

``_meta/composed_queries.parquet`` (:data:`COMPOSED_QUERY_SCHEMA`) lists the benchmark's
queries as the authors' ``evaluate.py`` forms them: for attribute *a*, every image
annotated with *a* is a query image; its query texts are the other values of *a* in its
group "*a* + class", classes merged per attribute as the authors'
``fix_query_attributelabels`` does (``PATTERNCOM_QUERY_CLASS_MERGES``, via
``rsir.data.patterncom.query_texts``); the positives of (image, text) are the images
annotated with *a* = text in the same class under the global mapping
(``PATTERNCOM_CLASS_MAPPING``). ``query_class`` is that globally merged class.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from rsir.data.converters.base import CONVERTERS, Converter, Record
from rsir.data.patterncom import PATTERNCOM_CLASS_MAPPING, query_texts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

COMPOSED_QUERY_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),  # "<attribute>/<image id>/<text>"
        pa.field("attribute", pa.string(), nullable=False),  # color, shape, ...
        pa.field("query_image", pa.string(), nullable=False),  # shard row id of the query image
        pa.field("query_class", pa.string(), nullable=False),  # merged class of the query image
        pa.field("query_value", pa.string(), nullable=False),  # the query image's own value
        pa.field("text", pa.string(), nullable=False),  # the query text: the wanted value
        pa.field("positives", pa.list_(pa.string()), nullable=False),  # shard row ids
    ]
)


@dataclass(frozen=True)
class Annotation:
    attribute: str
    filename: str
    value: str
    source: str  # "PatternCom/<attribute>.csv:<line>"


def label_of(folder: str) -> str:
    """The class label the PATTERNCOM evaluation uses: folder name without underscores."""
    return folder.replace("_", "")


@CONVERTERS.register("patternnet")
class PatternNet(Converter):
    name = "patternnet"
    split = "test"

    def options(self) -> dict[str, Any]:
        """Also the sha256 of each PATTERNCOM CSV: the rows carry their attributes, so a
        changed CSV must rewrite every chunk, not be skipped as already converted."""
        folder = self.src / "PatternCom"
        csvs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.csv"))}
        return {**super().options(), "patterncom_sha256": csvs}

    def annotations(self) -> tuple[list[Annotation], list[dict[str, str]]]:
        """PATTERNCOM rows, and quarantine rows for malformed ones."""
        folder = self.src / "PatternCom"
        if not folder.is_dir():
            raise FileNotFoundError(f"{self.name}: no PatternCom/ folder in {self.src}")
        rows: list[Annotation] = []
        bad: list[dict[str, str]] = []
        for path in sorted(folder.glob("*.csv")):
            text = path.read_bytes().decode("utf-8", errors="replace")
            for line, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
                source = f"PatternCom/{path.name}:{line}"
                fields = [f.strip() for f in fields]
                if not any(fields):
                    continue
                if len(fields) < 3 or not all(fields[:3]):
                    bad.append({"dataset": self.name, "record": f"patterncom/{path.stem}/{line}",
                                "source_path": source,
                                "reason": f"malformed PATTERNCOM row {fields!r}"})
                    continue
                rows.append(Annotation(fields[1], fields[0], fields[2], source))
        return rows, bad

    def records(self) -> Iterator[Record]:
        annotations, _ = self.annotations()
        by_file: dict[str, dict[str, str]] = defaultdict(dict)
        for ann in annotations:
            by_file[ann.filename][ann.attribute] = ann.value
        root = self.image_dir or self.src / "images"
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                yield Record(
                    id=f"{self.name}/{path.stem}",
                    split=self.split,
                    source=f"{root.name}/{class_dir.name}/{path.name}",
                    dates=[[path]],
                    require_captions=False,
                    class_name=label_of(class_dir.name),
                    attributes=by_file.get(path.name, {}),
                )

    def extra_tables(self, valid_ids: set[str]) -> dict[str, tuple[pa.Table, list[dict[str, str]]]]:
        annotations, bad = self.annotations()
        root = self.image_dir or self.src / "images"
        class_of = {p.name: label_of(p.parent.name) for p in root.glob("*/*")
                    if f"{self.name}/{p.stem}" in valid_ids}
        # attribute -> [(image id, class, value)]
        annotated: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        for ann in annotations:
            if (ann.attribute, ann.filename) in seen:
                bad.append({"dataset": self.name,
                            "record": f"patterncom/{ann.attribute}/{ann.filename}",
                            "source_path": ann.source,
                            "reason": f"duplicate PATTERNCOM row for {ann.filename}"})
                continue
            seen.add((ann.attribute, ann.filename))
            if ann.filename not in class_of:
                bad.append({"dataset": self.name,
                            "record": f"patterncom/{ann.attribute}/{ann.filename}",
                            "source_path": ann.source,
                            "reason": f"query image {ann.filename} is missing or quarantined"})
                continue
            annotated[ann.attribute].append(
                (f"{self.name}/{Path(ann.filename).stem}", class_of[ann.filename], ann.value))
        queries = []
        for attribute in sorted(annotated):
            items = annotated[attribute]
            # Positives: the global class mapping (relevance); query texts: the per-attribute
            # merges of query_texts (the authors' fix_query_attributelabels).
            members: dict[tuple[str, str], list[str]] = defaultdict(list)
            for image_id, cls, value in items:
                members[(PATTERNCOM_CLASS_MAPPING.get(cls, cls), value)].append(image_id)
            for i, text in query_texts(attribute, [c for _, c, _ in items], [v for _, _, v in items]):
                image_id, cls, value = items[i]
                merged = PATTERNCOM_CLASS_MAPPING.get(cls, cls)
                queries.append({
                    "query_id": f"{attribute}/{image_id}/{text}", "attribute": attribute,
                    "query_image": image_id, "query_class": merged, "query_value": value,
                    "text": text, "positives": sorted(members[(merged, text)]),
                })
        table = pa.Table.from_pylist(queries, schema=COMPOSED_QUERY_SCHEMA)
        return {"composed_queries": (table, bad)}
