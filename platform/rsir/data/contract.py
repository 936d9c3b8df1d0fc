"""The one declaration of what a job reads from an archive, and the check of an archive against it.

A recipe's :class:`InputContract` is its task's columns (one image or two dates, bands,
captions) plus the fields its model declares (GaLR's local branch reads ``objects``), the
bands it stacks and the caption languages it declares (``data.languages``). The training
pipeline, validation, batch embedding (``index`` / ``evaluate``), tuning and serving all
take their column list (:attr:`InputContract.columns`) and batch keys
(:attr:`InputContract.batch_keys`) from it, so a field cannot be read at one stage and
dropped at another.

:func:`inspect_archive` measures an archive without reading a single image (splits and row
counts, captions per language, objects per image, bands), and :func:`archive_problems`
lists every way it falls short of a contract, each with the command that fixes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rsir.config import DataConfig

# The command that fills each model-declared field, for the error a job stops with.
FILL_COMMANDS = {
    "objects": ("rsir detect --config RECIPE --shards {shards} --out {shards}_objects "
                "--weights yolo11n-obb.pt (a DOTA-trained detector), or "
                "rsir convert DATASET ... --objects LABELS (DOTA .txt files or a COCO JSON)"),
    "class_name": "rsir convert DATASET ... (a converter that knows the scene classes)",
    "attributes": "rsir convert patternnet ... (PATTERNCOM attribute CSVs)",
}
TRANSLATE_COMMAND = ("rsir translate --shards {shards} --out {shards}_translated --to {langs} "
                     "--model MODEL_DIR, or rsir convert DATASET ... --translations LANG=PATH")


@dataclass(frozen=True)
class InputContract:
    """What a recipe's model reads: per sample, and so per shard row.

    ``fields`` are the columns the model reads beyond the task's own (``objects`` for
    GaLR's local branch). ``languages`` are the caption languages the recipe declares;
    empty for a training-free model evaluated without captions (WEICOM on PatternNet).
    """

    recipe: str
    task: str
    bands: tuple[str, ...]
    languages: tuple[str, ...]
    fields: tuple[str, ...] = ()

    @classmethod
    def of(cls, data: DataConfig, recipe: str, fields: Sequence[str] = ()) -> InputContract:
        """The contract of a recipe's data section plus its model's ``fields``."""
        return cls(recipe=recipe, task=data.task, bands=tuple(data.bands),
                   languages=tuple(data.languages), fields=tuple(fields))

    @property
    def image_key(self) -> str:
        return "image_pair" if self.task == "pair" else "image"

    @property
    def columns(self) -> list[str]:
        """The shard columns every stage reads (images, bands, captions, change flag, fields)."""
        dates = ["image", "image_t2"] if self.task == "pair" else ["image"]
        return ["id", "split", *dates, "bands", "captions", "changed", *self.fields]

    @property
    def batch_keys(self) -> list[str]:
        """The keys of a preprocessed training batch: ids, images, one caption, the fields."""
        return ["id", self.image_key, "text", "lang", *self.fields]

    def describe(self) -> str:
        return (f"task {self.task}: columns {', '.join(self.columns)}; batch keys "
                f"{', '.join(self.batch_keys)}; bands {list(self.bands)}; languages "
                f"{list(self.languages) or 'none (no captions read)'}")


@dataclass
class ArchiveSummary:
    """An archive measured against nothing: what it holds, read without decoding an image."""

    path: str
    version: str
    columns: list[str]
    rows: dict[str, int]  # per split
    captions: dict[str, dict[str, int]]  # language -> {"captions", "rows"}
    objects: dict[str, float]  # {"rows_with_objects", "objects", "per_row"}
    bands: dict[str, int]  # "R,G,B" -> rows
    producer: dict[str, Any] = field(default_factory=dict)  # the converter's _SUCCESS summary

    def lines(self) -> list[str]:
        total = sum(self.rows.values())
        out = [f"archive {self.path} (version {self.version}"
               + (f", written by {self.producer['converter']}" if "converter" in self.producer
                  else "") + ")",
               "  splits: " + (", ".join(f"{s} {n:,} rows" for s, n in self.rows.items())
                               or "none")]
        langs = ", ".join(f"{lang} {c['captions']:,} on {c['rows']:,} rows"
                          for lang, c in sorted(self.captions.items()))
        out.append(f"  captions: {langs or 'none'}")
        if "objects" in self.columns:
            out.append(f"  objects: {int(self.objects['objects']):,} on "
                       f"{int(self.objects['rows_with_objects']):,} of {total:,} rows "
                       f"({self.objects['per_row']:.2f} per row)")
        else:
            out.append("  objects: no such column")
        out.append("  bands: " + ("; ".join(f"[{b}] {n:,} rows" for b, n in self.bands.items())
                                  or "none"))
        return out


def archive_version(path: str | Path) -> str:
    """A short fingerprint of the shard files (names and sizes): it changes when any shard does."""
    files = sorted(Path(path).glob("*.parquet"))
    digest = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size};" for p in files).encode())
    return digest.hexdigest()[:12]


def inspect_archive(path: str | Path) -> ArchiveSummary:
    """Splits, captions per language, objects and bands of the shards under ``path``.

    Reads only the small columns (``split``, ``bands``, ``captions``, ``objects``), batch by
    batch, so memory stays bounded by a batch whatever the archive's size.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"archive {path}: no such directory")
    dataset = pads.dataset(str(path), format="parquet")
    if not dataset.files:
        raise FileNotFoundError(f"archive {path}: no *.parquet shards")
    names = dataset.schema.names
    wanted = [c for c in ("split", "bands", "captions", "objects") if c in names]
    rows: dict[str, int] = {}
    caps: dict[str, dict[str, int]] = {}
    bands: dict[str, int] = {}
    n_obj = n_obj_rows = n_rows = 0
    for batch in dataset.to_batches(columns=wanted, batch_size=65_536):
        n_rows += batch.num_rows
        for split, n in _counts(batch.column("split")).items():
            rows[split] = rows.get(split, 0) + n
        if "bands" in names:
            joined = [",".join(b) if b else "" for b in batch.column("bands").to_pylist()]
            for b, n in _counts(pa.array(joined)).items():
                bands[b] = bands.get(b, 0) + n
        if "captions" in names:
            _count_captions(batch.column("captions"), caps)
        if "objects" in names:
            lengths = pc.fill_null(pc.list_value_length(batch.column("objects")), 0)
            n_obj += int(pc.sum(lengths).as_py() or 0)
            n_obj_rows += int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
    producer = {}
    success = path / "_SUCCESS"
    if success.is_file():
        try:
            producer = json.loads(success.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            producer = {}
        producer = producer if isinstance(producer, dict) else {}
    return ArchiveSummary(
        path=str(path), version=archive_version(path), columns=list(names),
        rows=dict(sorted(rows.items())), captions=caps, bands=bands, producer=producer,
        objects={"objects": n_obj, "rows_with_objects": n_obj_rows,
                 "per_row": n_obj / n_rows if n_rows else 0.0})


def _counts(array: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(array)
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}


def _count_captions(captions: pa.Array, out: dict[str, dict[str, int]]) -> None:
    """Per language: how many captions, and on how many rows (a row counts once)."""
    flat = pc.list_flatten(captions)
    if len(flat) == 0:
        return
    owner = np.asarray(pc.list_parent_indices(captions))
    text = pc.fill_null(pc.struct_field(flat, "text"), "")
    keep = np.asarray(pc.greater(pc.utf8_length(text), 0))
    langs = np.asarray(pc.fill_null(pc.struct_field(flat, "lang"), "").to_pylist(), dtype=object)
    for lang in np.unique(langs[keep]):
        mask = keep & (langs == lang)
        entry = out.setdefault(str(lang), {"captions": 0, "rows": 0})
        entry["captions"] += int(mask.sum())
        entry["rows"] += int(len(np.unique(owner[mask])))


def archive_problems(
    contract: InputContract, summary: ArchiveSummary, splits: Sequence[str]
) -> list[str]:
    """Every way ``summary`` falls short of ``contract`` for a job reading ``splits``; each
    message names the recipe, the archive, what is missing and the command that fills it."""
    where = f"recipe {contract.recipe}: archive {summary.path}"
    problems = []
    for split in splits:
        if not summary.rows.get(split):
            problems.append(f"{where} has no rows in split {split!r} (its splits: "
                            f"{', '.join(summary.rows) or 'none'})")
    for column in contract.columns:
        if column not in summary.columns:
            fix = FILL_COMMANDS.get(column, "convert the dataset again with this version of rsir")
            problems.append(f"{where} has no column {column!r}, which the model reads; fill it: "
                            + fix.format(shards=summary.path))
    if "objects" in contract.fields and "objects" in summary.columns and not summary.objects["objects"]:
        problems.append(f"{where}: column 'objects' is empty on every row, and the model's local "
                        "branch reads it; fill it: " + FILL_COMMANDS["objects"].format(shards=summary.path)
                        + " (or run the global branch alone: model.options.local_branch=false)")
    missing = [lang for lang in contract.languages if lang not in summary.captions]
    if missing:
        have = ", ".join(sorted(summary.captions)) or "none"
        problems.append(
            f"{where} has no captions in {', '.join(missing)} (data.languages declares "
            f"{', '.join(contract.languages)}; the archive has {have}); add them: "
            + TRANSLATE_COMMAND.format(shards=summary.path, langs=",".join(missing)))
    wanted = list(contract.bands)
    for joined in summary.bands:
        have = joined.split(",") if joined else ["R", "G", "B"]  # unnamed: RGB (transforms)
        lacking = [b for b in wanted if b not in have]
        if lacking:
            problems.append(f"{where}: {summary.bands[joined]:,} rows have bands [{joined}], "
                            f"without {', '.join(lacking)} of data.bands {wanted}")
    return problems
