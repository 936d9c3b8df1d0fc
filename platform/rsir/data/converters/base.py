"""What every converter shares: records, validation, image reading, and the resumable writer.

A converter only *lists* its dataset: :meth:`Converter.records` yields cheap
:class:`Record` s parsed from the annotation files (paths, split, caption bytes). Loading and
validating each record (files present, images decode, the two dates agree in size and
bands, captions non-empty valid UTF-8, split known, id unique) happens here, once, for all
datasets, so every dataset is held to the same rules. A record that fails any rule becomes
a row of :data:`~rsir.data.schema.QUARANTINE_SCHEMA` with its reason; it never disappears.

Output of :func:`run_conversion` (``out``)::

    part-CCCCC-SSSSS.parquet   shards of SHARD_SCHEMA (chunk CCCCC, shard SSSSS of it)
    _meta/chunks/CCCCC.json    manifest of a completed chunk (its fingerprint and counts)
    _meta/quarantine/CCCCC.parquet   the chunk's bad records
    _meta/quarantine.parquet   all bad records (rewritten at the end of every run)
    _meta/<table>.parquet      extra tables a converter adds (PATTERNCOM's composed queries)
    _meta/band_stats.json      per-band mean/std of the training split (converters that set
                               ``band_stats_split``: Dubai-CCD)
    _SUCCESS                   JSON summary, written last

Resumable and idempotent by deterministic chunking: records are listed in a fixed order
and cut into chunks of ``chunk_size``; chunk k always writes the same file names, and its
manifest is written (atomically) only after its shards and quarantine part are complete.
A re-run skips every chunk whose manifest carries the same fingerprint (the chunk's
record ids and sources plus the converter's options, which include the sha256 of the
``--objects`` and ``--translations`` files) and rewrites any other chunk after
deleting its old files, so an interrupted or repeated run never duplicates a row. Paths
starting with ``_`` are ignored by ``read_table`` (flat ``*.parquet`` glob) and by Ray
Data / Arrow dataset discovery, so ``out`` reads as the shards alone.

Beside the dataset's own files a conversion can read ``--objects PATH`` (DOTA label files
or a COCO JSON, :mod:`rsir.data.converters.objects`) and ``--translations LANG=PATH``
(the captions in another language, in the dataset's own layout: :meth:`Converter.caption_table`).
Every caption is stored NFC-normalised with its language tag; a record missing from a
translation, or with another number of sentences there, is quarantined.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rsir.data.converters.objects import LabelError, ObjectLabels
from rsir.data.schema import QUARANTINE_SCHEMA, ShardWriter, decode_image, encode_image, make_row
from rsir.registry import Registry

log = logging.getLogger(__name__)

CONVERTERS: Registry[Converter] = Registry("converter")

KNOWN_SPLITS = frozenset({"train", "val", "test"})
DEFAULT_BANDS: dict[int, tuple[str, ...]] = {
    1: ("gray",),
    3: ("R", "G", "B"),
    4: ("R", "G", "B", "NIR"),  # the usual order of 4-band GeoTIFFs (e.g. rgbn.tif)
}
TIFF_SUFFIXES = (".tif", ".tiff")
# PNG/JPEG files whose decoded array is what they hold are stored byte for byte (no
# re-encoding loss, no extra CPU); everything else is re-encoded with ``encode_image``.
PASSTHROUGH_FORMATS = {"PNG": ("RGB", "L"), "JPEG": ("RGB", "L")}

# No-change phrases of LEVIR-CC and Dubai-CCD captions (lowercase, punctuation removed).
NO_CHANGE_PHRASES = (
    "no change", "no changes", "nothing has changed", "nothing changed", "no difference",
    "remains the same", "remained the same", "all is the same", "appears the same",
    "the same as before", "seem identical",
)


class BadRecord(Exception):
    """A record that fails validation; ``str(err)`` is the quarantine reason."""


@dataclass
class Record:
    """One dataset item as listed from the annotations, before anything is loaded.

    ``dates`` holds one entry per acquisition date (one for single images, two for a
    bitemporal pair); each entry lists the files whose bands are stacked, in order.
    ``captions`` are raw bytes so invalid UTF-8 is caught here, not by the JSON parser.
    ``problems`` are reasons found while listing (e.g. an inconsistent annotation line).
    ``caption_key`` names the record in its caption file, where a translation in the same
    layout names it too (the filename, or ``<split>/<filename>`` for precomp).
    """

    id: str
    split: str
    source: str
    dates: list[list[Path]]
    captions: list[bytes] = field(default_factory=list)
    require_captions: bool = True
    changed: bool | None = None
    class_name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    bands: Sequence[str] | None = None
    problems: list[str] = field(default_factory=list)
    caption_key: str = ""


# One language's captions of a dataset: caption key -> (raw captions, the file they are in).
CaptionTable = dict[str, tuple[list[bytes], str]]


def infer_changed(captions: Iterable[str]) -> bool:
    """Change flag from captions: unchanged when most captions are no-change phrases.

    The documented rule used when a dataset ships no flag (Dubai-CCD) or a LEVIR-CC file
    lacks both ``changeflag`` and ``changeflag_inferred``. A caption is a no-change caption
    when, lowercased and stripped of punctuation, it contains one of
    :data:`NO_CHANGE_PHRASES`; the pair is unchanged when such captions are a strict majority.
    """
    texts = [" ".join("".join(c if c.isalnum() else " " for c in t.lower()).split())
             for t in captions]
    if not texts:
        raise ValueError("cannot infer a change flag without captions")
    padded = [f" {t} " for t in texts]
    no_change = sum(any(f" {p} " in t for p in NO_CHANGE_PHRASES) for t in padded)
    return not no_change * 2 > len(texts)


def caption_bytes(value: Any) -> bytes:
    """A caption from parsed JSON as bytes (lone surrogates kept, to fail validation)."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        return b""
    return value.encode("utf-8", errors="surrogateescape")


def load_json_bytes(path: Path) -> Any:
    """Parse JSON without letting one invalid UTF-8 byte make the whole file unreadable."""
    return json.loads(path.read_bytes().decode("utf-8", errors="surrogateescape"))


def karpathy_caption_table(path: Path) -> CaptionTable:
    """Captions by ``images[].filename`` of a Karpathy-style JSON, or of every ``*.json``
    of a folder (Dubai-CCD's three split files); a filename listed twice is an error."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no Karpathy-style JSON at {path}")
    table: CaptionTable = {}
    for file in files:
        for item in load_json_bytes(file).get("images", []):
            filename = str(item.get("filename", ""))
            if not filename:  # matches no record (a record without one is quarantined)
                continue
            if filename in table:
                raise ValueError(f"{file}: {filename!r} is listed twice (also in {table[filename][1]})")
            table[filename] = ([caption_bytes(s.get("raw")) for s in item.get("sentences", [])],
                               str(file))
    return table


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"\0{file.relative_to(path).as_posix()}\0".encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def decode_captions(raws: Sequence[bytes], lang: str, where: str = "") -> list[dict[str, str]]:
    """Raw captions -> ``{text, lang}``, NFC-normalised and stripped; raises BadRecord.

    ``where`` (a translation's language and file) prefixes the reason when given.
    """
    prefix = f"{where}: " if where else ""
    captions = []
    for i, raw in enumerate(raws):
        try:
            text = unicodedata.normalize("NFC", raw.decode("utf-8")).strip()
        except UnicodeDecodeError:
            raise BadRecord(f"{prefix}caption {i} is not valid UTF-8") from None
        if not text:
            raise BadRecord(f"{prefix}caption {i} is empty")
        captions.append({"text": text, "lang": lang})
    return captions


def band_sums(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band sum and sum of squares of an ``[H, W, C]`` image scaled as the models see it
    (integers / dtype max, as ``rsir.data.transforms.to_tensor``), and its pixel count."""
    scale = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 1.0
    values = array.reshape(-1, array.shape[2]).astype(np.float64) / scale
    return values.sum(0), np.square(values).sum(0), values.shape[0]


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


def read_tiff(path: Path) -> np.ndarray:
    """All bands of a (Geo)TIFF as ``[H, W, C]`` (PIL drops bands beyond RGB, so tifffile)."""
    try:
        import tifffile
    except ImportError as err:  # an optional dependency of the converters only
        raise ImportError("reading TIFF images needs `pip install tifffile imagecodecs`") from err
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        array = page.asarray()
        planar_separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and planar_separate:
        return np.moveaxis(array, 0, -1)
    if array.ndim != 3:
        raise ValueError(f"TIFF has shape {array.shape}, expected [H, W] or [H, W, C]")
    return array


def read_image(path: Path) -> tuple[np.ndarray, bytes | None]:
    """Decode one image file to ``[H, W, C]``; also its bytes when they can be stored as-is.

    Raises ``ValueError`` for a file that is not a readable image.
    """
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            return read_tiff(path), None
        except ImportError:
            raise
        except Exception as err:  # tifffile raises several types for corrupt files
            raise ValueError(f"undecodable image: {err}") from err
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, mode = img.format, img.mode
            if mode not in ("RGB", "L"):
                img = img.convert("RGB")  # palette / alpha / CMYK -> RGB, as the papers' loaders
            array = np.asarray(img)
    except Exception as err:  # PIL raises many types for corrupt data
        raise ValueError(f"undecodable image: {err}") from err
    if array.ndim == 2:
        array = array[:, :, None]
    keep = mode in PASSTHROUGH_FORMATS.get(fmt or "", ())
    return array, data if keep else None


def load_date(paths: Sequence[Path]) -> tuple[np.ndarray, bytes | None]:
    """Stack the bands of one date's files along C; bytes are kept only for a single file."""
    arrays: list[np.ndarray] = []
    raw: bytes | None = None
    for path in paths:
        if not path.is_file():
            raise BadRecord(f"missing file: {path.name}")
        try:
            array, raw = read_image(path)
        except ValueError as err:
            raise BadRecord(f"{err} ({path.name})") from None
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            raise BadRecord(
                f"band files differ in size: {path.name} is {array.shape[1]}x{array.shape[0]}, "
                f"expected {arrays[0].shape[1]}x{arrays[0].shape[0]}"
            )
        if arrays and array.dtype != arrays[0].dtype:
            raise BadRecord(f"band files differ in dtype: {path.name} is {array.dtype}")
        arrays.append(array)
    if len(arrays) == 1:
        return arrays[0], raw
    return np.concatenate(arrays, axis=2), None


# ---------------------------------------------------------------------------------------
# Converter
# ---------------------------------------------------------------------------------------


class Converter(ABC):
    """Reads one public dataset in its own published layout.

    Subclasses register under the dataset's CLI name with ``@CONVERTERS.register(name)``,
    set ``name``, and implement :meth:`records`. ``image_dir`` overrides where images
    are looked up for layouts that keep them apart from the annotations (precomp).
    ``objects``: a DOTA label folder or COCO JSON (:class:`~rsir.data.converters.objects.ObjectLabels`).
    ``translations``: ``{lang: path}``, each read with :meth:`caption_table`.
    ``band_stats_split``: the split whose per-band mean/std go to ``_meta/band_stats.json``.
    """

    name: ClassVar[str]
    splits: ClassVar[frozenset[str]] = KNOWN_SPLITS
    band_stats_split: ClassVar[str | None] = None

    def __init__(
        self,
        src: str | os.PathLike[str],
        image_dir: str | os.PathLike[str] | None = None,
        objects: str | os.PathLike[str] | None = None,
        translations: Mapping[str, str | os.PathLike[str]] | None = None,
    ):
        self.src = Path(src)
        if not self.src.is_dir():
            raise FileNotFoundError(f"{self.name}: source directory {self.src} does not exist")
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.objects = ObjectLabels(objects) if objects is not None else None
        self.translation_paths = {lang: Path(p) for lang, p in sorted((translations or {}).items())}
        for lang, path in self.translation_paths.items():
            if lang == "en" or not (lang.isascii() and lang.isalpha() and lang.islower()):
                raise ValueError(f"{self.name}: translation language {lang!r} is not an ISO 639-1 "
                                 "code other than the dataset's own 'en'")
            if not path.exists():
                raise FileNotFoundError(f"{self.name}: {lang} translation {path} does not exist")
        self.translations = {lang: self.caption_table(path)
                             for lang, path in self.translation_paths.items()}

    @abstractmethod
    def records(self) -> Iterator[Record]:
        """Every record of the dataset, in a fixed order (the order of its annotations)."""

    def caption_table(self, path: Path) -> CaptionTable:
        """One language's captions in this dataset's layout at ``path``, by caption key."""
        raise ValueError(f"{self.name} has no captions to translate")

    def options(self) -> dict[str, Any]:
        """What besides the records decides the output (goes into each chunk's fingerprint)."""
        options: dict[str, Any] = {
            "name": self.name, "image_dir": str(self.image_dir) if self.image_dir else None}
        # Only when used, so archives converted without them keep their fingerprints.
        if self.objects is not None:
            options["objects"] = {"path": str(self.objects.path), "sha256": sha256_of(self.objects.path)}
        if self.translation_paths:
            options["translations"] = {lang: {"path": str(p), "sha256": sha256_of(p)}
                                       for lang, p in self.translation_paths.items()}
        if self.band_stats_split is not None:
            options["band_stats_split"] = self.band_stats_split
        return options

    def extra_tables(self, valid_ids: set[str]) -> dict[str, tuple[pa.Table, list[dict[str, str]]]]:
        """Tables written beside the shards, from the ids that passed validation.

        Returns ``{name: (table, quarantine rows)}``; none by default.
        """
        return {}

    def to_row(self, rec: Record) -> dict[str, Any]:
        """Load and validate one record into a row of SHARD_SCHEMA; raises :class:`BadRecord`."""
        if rec.problems:
            raise BadRecord("; ".join(rec.problems))
        if rec.split not in self.splits:
            raise BadRecord(f"unknown split {rec.split!r} (known: {', '.join(sorted(self.splits))})")
        english = decode_captions(rec.captions, "en")
        if rec.require_captions and not english:
            raise BadRecord("no captions")
        captions = list(english)
        for lang, table in self.translations.items():
            entry = table.get(rec.caption_key)
            if entry is None:
                raise BadRecord(f"{lang}: no translation of {rec.caption_key} in "
                                f"{self.translation_paths[lang]}")
            raws, file = entry
            if len(raws) != len(english):
                raise BadRecord(f"{lang}: {len(raws)} sentences for {rec.caption_key} in {file}, "
                                f"{len(english)} in English")
            captions += decode_captions(raws, lang, f"{lang} ({file})")
        loaded = [load_date(paths) for paths in rec.dates]
        first = loaded[0][0]
        for array, _ in loaded[1:]:
            if array.shape != first.shape:
                raise BadRecord(
                    "dates differ in size: "
                    + " vs ".join(f"{a.shape[1]}x{a.shape[0]}x{a.shape[2]}" for a, _ in loaded)
                )
        bands = tuple(rec.bands) if rec.bands is not None else DEFAULT_BANDS.get(
            first.shape[2], tuple(f"b{i + 1}" for i in range(first.shape[2]))
        )
        if len(bands) != first.shape[2]:
            raise BadRecord(f"image has {first.shape[2]} bands, expected {len(bands)} ({', '.join(bands)})")
        objects = []
        if self.objects is not None:
            try:
                objects = self.objects.objects_for(rec.dates[0][0], first.shape[1], first.shape[0])
            except LabelError as err:
                raise BadRecord(str(err)) from None
        encoded = [raw if raw is not None else encode_image(array) for array, raw in loaded]
        return make_row(
            id=rec.id, split=rec.split, image=encoded[0],
            image_t2=encoded[1] if len(encoded) > 1 else None, bands=bands, captions=captions,
            changed=rec.changed, class_name=rec.class_name, attributes=rec.attributes,
            objects=objects, source=rec.source,
        )


# ---------------------------------------------------------------------------------------
# Running a conversion
# ---------------------------------------------------------------------------------------


@dataclass
class BandSums:
    """Running per-band sums over images of one band order (partial statistics of a chunk)."""

    bands: list[str] = field(default_factory=list)
    n_pixels: int = 0
    sum: list[float] = field(default_factory=list)
    sumsq: list[float] = field(default_factory=list)

    def add(self, bands: Sequence[str], array: np.ndarray) -> None:
        total, squares, n = band_sums(array)
        self.merge(BandSums(list(bands), n, total.tolist(), squares.tolist()))

    def merge(self, other: BandSums) -> None:
        if not other.n_pixels:
            return
        if not self.n_pixels:
            self.bands, self.sum, self.sumsq = list(other.bands), list(other.sum), list(other.sumsq)
        elif other.bands != self.bands:
            raise ValueError(f"band statistics need one band order; rows have {self.bands} "
                             f"and {other.bands}")
        else:
            self.sum = np.add(self.sum, other.sum).tolist()
            self.sumsq = np.add(self.sumsq, other.sumsq).tolist()
        self.n_pixels += other.n_pixels

    def stats(self, split: str) -> dict[str, Any]:
        """``band_stats.json``: mean and population std per band."""
        mean = np.asarray(self.sum) / self.n_pixels
        std = np.sqrt(np.maximum(np.asarray(self.sumsq) / self.n_pixels - mean**2, 0.0))
        return {"bands": self.bands, "mean": mean.tolist(), "std": std.tolist(),
                "n_pixels": self.n_pixels, "split": split}


@dataclass
class ConversionResult:
    dataset: str
    converted: int
    quarantined: int
    chunks_written: int
    chunks_skipped: int
    out: Path
    extra_tables: dict[str, int] = field(default_factory=dict)
    with_objects: int = 0  # converted rows with at least one object

    @property
    def bad_fraction(self) -> float:
        total = self.converted + self.quarantined
        return self.quarantined / total if total else 0.0


def limit_per_split(records: Iterable[Record], limit: int | None) -> Iterator[Record]:
    """The first ``limit`` records of each split (all when ``limit`` is None)."""
    seen: dict[str, int] = {}
    for rec in records:
        seen[rec.split] = seen.get(rec.split, 0) + 1
        if limit is None or seen[rec.split] <= limit:
            yield rec


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fingerprint(options: Mapping[str, Any], chunk: Sequence[Record]) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for rec in chunk:
        h.update(f"\0{rec.id}\0{rec.source}\0{rec.split}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _chunk_files(out: Path, k: int) -> list[Path]:
    return [*out.glob(f"part-{k:05d}-*.parquet"), out / "_meta" / "quarantine" / f"{k:05d}.parquet"]


def run_conversion(
    converter: Converter,
    out: str | os.PathLike[str],
    *,
    limit: int | None = None,
    chunk_size: int = 1000,
    max_bytes: int = 64 * 2**20,
    progress: bool = False,
) -> ConversionResult:
    """Convert ``converter``'s dataset into ``out`` (resumable, idempotent; see module doc)."""
    out = Path(out)
    meta = out / "_meta"
    (meta / "chunks").mkdir(parents=True, exist_ok=True)
    (meta / "quarantine").mkdir(parents=True, exist_ok=True)
    options = {**converter.options(), "limit": limit, "chunk_size": chunk_size}
    records = limit_per_split(converter.records(), limit)
    bar = None
    if progress:
        from tqdm import tqdm  # progress bars are the caller's choice, not the library's

        bar = tqdm(desc=f"convert {converter.name}", unit="rec")
    seen_ids: set[str] = set()
    valid_ids: set[str] = set()
    stats_split = converter.band_stats_split
    split_sums = BandSums()
    converted = quarantined = written = skipped = with_objects = 0
    n_chunks = 0
    for k, chunk in enumerate(_chunks(records, chunk_size)):
        n_chunks = k + 1
        fingerprint = _fingerprint(options, chunk)
        manifest_path = meta / "chunks" / f"{k:05d}.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if manifest is not None and manifest.get("fingerprint") == fingerprint:
            # Done in an earlier run: its valid ids still matter for duplicates and extras.
            valid_ids.update(manifest["valid_ids"])
            seen_ids.update(rec.id for rec in chunk)
            if stats_split is not None:
                split_sums.merge(BandSums(**manifest["band_sums"]))
            with_objects += manifest.get("with_objects", 0)
            converted += manifest["converted"]
            quarantined += manifest["quarantined"]
            skipped += 1
            if bar is not None:
                bar.update(len(chunk))
            continue
        manifest_path.unlink(missing_ok=True)
        for path in _chunk_files(out, k):
            path.unlink(missing_ok=True)
        bad: list[dict[str, str]] = []
        chunk_valid: list[str] = []
        chunk_sums = BandSums()
        chunk_objects = 0
        with ShardWriter(out, max_bytes=max_bytes, prefix=f"part-{k:05d}") as writer:
            for rec in chunk:
                try:
                    if rec.id in seen_ids:
                        raise BadRecord(f"duplicate id {rec.id!r}")
                    seen_ids.add(rec.id)
                    row = converter.to_row(rec)
                    writer.write(row)
                    chunk_valid.append(rec.id)
                    chunk_objects += bool(row["objects"])
                    if rec.split == stats_split:
                        for key in ("image", "image_t2"):
                            if row[key] is not None:
                                chunk_sums.add(row["bands"], decode_image(row[key]))
                except BadRecord as err:
                    bad.append({"dataset": converter.name, "record": rec.id,
                                "source_path": rec.source, "reason": str(err)})
                if bar is not None:
                    bar.update(1)
        if bad:
            _write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA),
                         meta / "quarantine" / f"{k:05d}.parquet")
        manifest = {"fingerprint": fingerprint, "converted": len(chunk_valid),
                    "quarantined": len(bad), "valid_ids": chunk_valid, "with_objects": chunk_objects}
        if stats_split is not None:
            manifest["band_sums"] = dataclasses.asdict(chunk_sums)
        _atomic_write_bytes(manifest_path, json.dumps(manifest).encode())
        valid_ids.update(chunk_valid)
        split_sums.merge(chunk_sums)
        with_objects += chunk_objects
        converted += len(chunk_valid)
        quarantined += len(bad)
        written += 1
    if bar is not None:
        bar.close()
    _drop_stale_chunks(out, n_chunks)
    extra_counts: dict[str, int] = {}
    extra_bad: list[dict[str, str]] = []
    for table_name, (table, bad_rows) in converter.extra_tables(valid_ids).items():
        _write_table(table, meta / f"{table_name}.parquet")
        extra_counts[table_name] = table.num_rows
        extra_bad.extend(bad_rows)
    quarantined += len(extra_bad)
    _write_quarantine(meta, n_chunks, extra_bad)
    stats_path = meta / "band_stats.json"
    stats_path.unlink(missing_ok=True)
    if stats_split is not None:
        if split_sums.n_pixels:
            _atomic_write_bytes(stats_path, json.dumps(split_sums.stats(stats_split), indent=1).encode())
        else:
            log.warning("%s: no %s rows converted, so no %s", converter.name, stats_split, stats_path)
    result = ConversionResult(converter.name, converted, quarantined, written, skipped, out,
                              extra_counts, with_objects)
    summary = {"dataset": result.dataset, "converted": converted, "quarantined": quarantined,
               "chunks": n_chunks, "extra_tables": extra_counts, "with_objects": with_objects,
               "options": options}
    _atomic_write_bytes(out / "_SUCCESS", json.dumps(summary, indent=1).encode())
    return result


def _drop_stale_chunks(out: Path, n_chunks: int) -> None:
    """Remove chunks a previous run wrote beyond this run's last (e.g. a larger ``--limit``)."""
    for manifest in (out / "_meta" / "chunks").glob("*.json"):
        k = int(manifest.stem)
        if k >= n_chunks:
            manifest.unlink()
            for path in _chunk_files(out, k):
                path.unlink(missing_ok=True)
    for shard in out.glob("part-?????-*.parquet"):
        if int(shard.name.split("-")[1]) >= n_chunks:
            shard.unlink()


def _write_quarantine(meta: Path, n_chunks: int, extra_bad: list[dict[str, str]]) -> None:
    parts = [pq.read_table(p, schema=QUARANTINE_SCHEMA)
             for k in range(n_chunks)
             if (p := meta / "quarantine" / f"{k:05d}.parquet").is_file()]
    parts.append(pa.Table.from_pylist(extra_bad, schema=QUARANTINE_SCHEMA))
    _write_table(pa.concat_tables(parts), meta / "quarantine.parquet")


def read_quarantine(out: str | os.PathLike[str]) -> pa.Table:
    """The quarantine table of a conversion output directory."""
    return pq.read_table(Path(out) / "_meta" / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
