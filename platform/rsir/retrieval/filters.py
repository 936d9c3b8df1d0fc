"""Metadata filters of a search, applied inside it: a filter is parsed once, evaluated
over a per-row metadata table (numpy columns: no geometry decoding, no Ray) into the set
of candidate rows, and the top-k is then taken among those candidates only, so a filtered
query returns k rows that all pass whenever k such rows exist.

Filter fields (all optional, all must hold):

=========== ==========================================================================
bbox        ``[min_lon, min_lat, max_lon, max_lat]`` (WGS84): the row's ``bbox`` intersects
            it (edges touching count). ``min_lon > max_lon`` crosses the antimeridian, for
            the query box as for a row's. A row without a bbox never passes.
datetime    an RFC 3339 instant or interval ``start/end`` as STAC writes it, an open end
            being ``..`` (or empty): the row's acquisition interval intersects it. A single
            image's interval is its ``acquired`` instant, a pair's ``[acquired,
            acquired_t2]``. A row without ``acquired`` never passes.
class_name  a string or a list of strings: the row's class is one of them.
changed     a boolean: the pair's change flag equals it.
sensor      a string or a list of strings: the row's sensor is one of them.
=========== ==========================================================================

How the top-k among candidates is found (:func:`filtered_top_k`): exactly over the
candidates' vectors when they are few (or always, when no approximate index is given);
otherwise through a :class:`CandidateSearcher`, the seam to an ANN index: an index that
can restrict its search to given rows (a FAISS ``IDSelector``) implements it directly, and
:class:`Oversampling` makes one out of any unrestricted ``Searcher`` (rsir.retrieval.topk)
by asking for more results until k pass, ending with the exact search when it cannot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FILTER_FIELDS = ("bbox", "datetime", "class_name", "changed", "sensor")
# Metadata columns an archive carries for its filters and results (rsir.inference).
METADATA_COLUMNS = ("bbox", "footprint", "class_name", "changed", "sensor", "acquired",
                    "acquired_t2")


class FilterError(ValueError):
    """A bad filter; ``field`` names it (``filter.bbox``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class SearchFilter:
    """A parsed filter; ``None`` fields do not restrict. Times are microseconds since the
    epoch (UTC); ``start``/``end`` None is an open end."""

    bbox: tuple[float, float, float, float] | None = None
    start: int | None = None
    end: int | None = None
    has_datetime: bool = False
    class_name: frozenset[str] | None = None
    changed: bool | None = None
    sensor: frozenset[str] | None = None

    @property
    def empty(self) -> bool:
        return (self.bbox is None and not self.has_datetime and self.class_name is None
                and self.changed is None and self.sensor is None)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NULL_TIME = np.iinfo(np.int64).min  # a row without a time


def _micros(when: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (as the shards'
    ``timestamp[us, UTC]`` reads back without its zone through some readers)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // timedelta(microseconds=1)


def parse_datetime(value: str, field: str = "filter.datetime") -> int:
    """An RFC 3339 date-time with its offset (``2021-06-01T10:30:00Z``) -> microseconds
    since the epoch, UTC."""
    text = value.strip()
    if "T" not in text.upper():
        raise FilterError(field, f"{value!r} is not an RFC 3339 date-time "
                          "(e.g. 2021-06-01T00:00:00Z)")
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
    except ValueError:
        raise FilterError(field, f"{value!r} is not an RFC 3339 date-time "
                          "(e.g. 2021-06-01T00:00:00Z)") from None
    if when.tzinfo is None:
        raise FilterError(field, f"{value!r} has no time zone offset (add Z for UTC)")
    return _micros(when)


def _strings(value: Any, field: str) -> frozenset[str]:
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, str) and v for v in values)):
        raise FilterError(field, "must be a non-empty string or a non-empty list of them")
    if len(values) > 256:
        raise FilterError(field, "at most 256 values")
    return frozenset(values)


def parse_filter(value: Any) -> SearchFilter:
    """A request's ``filter`` object -> :class:`SearchFilter`; raises :class:`FilterError`
    naming the field."""
    if not isinstance(value, Mapping):
        raise FilterError("filter", f"must be an object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in FILTER_FIELDS)
    if unknown:
        raise FilterError(f"filter.{unknown[0]}", f"unknown filter; valid: {list(FILTER_FIELDS)}")
    out: dict[str, Any] = {}
    if value.get("bbox") is not None:
        box = value["bbox"]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
                or not all(math.isfinite(v) for v in box)):
            raise FilterError("filter.bbox", "must be [min_lon, min_lat, max_lon, max_lat] "
                              "(4 finite numbers)")
        w, s, e, n = (float(v) for v in box)
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
            raise FilterError("filter.bbox", f"{box} is not a WGS84 box (lon in [-180, 180], "
                              "lat in [-90, 90], min_lat <= max_lat)")
        out["bbox"] = (w, s, e, n)
    if value.get("datetime") is not None:
        text = value["datetime"]
        if not isinstance(text, str) or not text.strip():
            raise FilterError("filter.datetime", "must be an RFC 3339 instant or interval "
                              "'start/end' ('..' for an open end)")
        parts = text.split("/")
        if len(parts) == 1:
            start = end = parse_datetime(parts[0])
        elif len(parts) == 2:
            start, end = (None if p.strip() in ("", "..") else parse_datetime(p) for p in parts)
            if start is None and end is None:
                raise FilterError("filter.datetime", "both ends are open")
            if start is not None and end is not None and start > end:
                raise FilterError("filter.datetime", f"{text!r}: start is after end")
        else:
            raise FilterError("filter.datetime", f"{text!r}: an interval has one '/'")
        out.update(start=start, end=end, has_datetime=True)
    if value.get("class_name") is not None:
        out["class_name"] = _strings(value["class_name"], "filter.class_name")
    if value.get("changed") is not None:
        if not isinstance(value["changed"], bool):
            raise FilterError("filter.changed", f"must be a boolean, got "
                              f"{type(value['changed']).__name__}")
        out["changed"] = value["changed"]
    if value.get("sensor") is not None:
        out["sensor"] = _strings(value["sensor"], "filter.sensor")
    return SearchFilter(**out)


def _times(values: Sequence[Any] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """datetimes (or None), or an Arrow timestamp column -> int64 microseconds, with
    INT64_MIN for null."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_null(values.type):
            return np.full(len(values), _NULL_TIME, np.int64)
        # Arrow keeps a timestamp as epoch units, UTC (a naive one as if UTC, as _micros).
        micros = pc.cast(values, pa.timestamp("us", values.type.tz), safe=False).cast(pa.int64())
        return np.asarray(micros.fill_null(_NULL_TIME).to_numpy(), np.int64)
    return np.array([_NULL_TIME if v is None else _micros(v) for v in values], dtype=np.int64)


def _boxes(values: Sequence[Any] | pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """Boxes (4 numbers or None), or an Arrow list column of them -> float64 [n, 4], NaN
    for null."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        return np.array([[np.nan] * 4 if b is None else b for b in values], dtype=np.float64).reshape(n, 4)
    out = np.full((n, 4), np.nan)
    if pa.types.is_null(values.type):
        return out
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pc.any(pc.not_equal(pc.list_value_length(arr), 4)).as_py():  # null boxes are skipped
        raise ValueError("metadata column 'bbox' holds a box without 4 numbers")
    # flatten() skips null boxes: their rows stay NaN.
    out[arr.is_valid().to_numpy(zero_copy_only=False)] = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
    return out


def _categories(values: Sequence[Any] | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Strings (or None), or an Arrow string column -> (codes int32 [n], -1 for null;
    the distinct strings [c]): one small int a row, not one string object."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_null(values.type):
            return np.full(len(values), -1, np.int32), np.array([], dtype=object)
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        encoded = pc.dictionary_encode(arr)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        return codes, np.array(encoded.dictionary.to_pylist(), dtype=object)
    values = list(values)
    names = sorted({v for v in values if v is not None})
    lookup = {name: i for i, name in enumerate(names)}
    return (np.array([-1 if v is None else lookup[v] for v in values], np.int32),
            np.array(names, dtype=object))


def _flags(values: Sequence[Any] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Booleans (or None), or an Arrow bool column -> int8 [n]: 1, 0, -1 for null."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_null(values.type):
            return np.full(len(values), -1, np.int8)
        return pc.cast(values, pa.int8()).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int8)
    return np.array([-1 if c is None else int(bool(c)) for c in values], dtype=np.int8)


def _isin(codes: np.ndarray, names: np.ndarray, wanted: frozenset[str]) -> np.ndarray:
    return np.isin(codes, [i for i, name in enumerate(names) if name in wanted])


def boxes_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise (broadcasting) intersection of WGS84 boxes ``[..., 4]`` = (min_lon,
    min_lat, max_lon, max_lat); ``min_lon > max_lon`` crosses the antimeridian. A box
    with a NaN never intersects; touching edges do."""
    aw, as_, ae, an = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bs, be, bn = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    with np.errstate(invalid="ignore"):
        lat = (as_ <= bn) & (an >= bs)

        def spans(w, e):  # a box as at most two plain lon intervals
            crosses = w > e
            return [(w, np.where(crosses, 180.0, e)), (np.where(crosses, -180.0, w), e)]

        lon = np.zeros(np.broadcast(aw, bw).shape, bool)
        for a_w, a_e in spans(aw, ae):
            for b_w, b_e in spans(bw, be):
                lon |= (a_w <= b_e) & (a_e >= b_w)
    return lat & lon


# A MetadataTable's arrays (dtype, shape of a row), as :func:`save_metadata` writes them.
_ARRAYS = {"bbox": (np.float64, (4,)), "t_start": (np.int64, ()), "t_end": (np.int64, ()),
           "class_codes": (np.int32, ()), "sensor_codes": (np.int32, ()), "changed": (np.int8, ())}
_NAMES_FILE = "names.json"


class _Filterable:
    """A table of rows that a :class:`SearchFilter` masks."""

    n: int

    def mask(self, f: SearchFilter) -> np.ndarray:
        raise NotImplementedError

    def candidates(self, f: SearchFilter | None) -> np.ndarray | None:
        """The passing rows (sorted int64), or None when ``f`` restricts nothing."""
        if f is None or f.empty:
            return None
        return np.flatnonzero(self.mask(f))


class MetadataTable(_Filterable):
    """Per-row metadata of an archive as numpy columns, for :meth:`mask`.

    ``columns``: name -> one value per row, as an archive's metadata holds them (``bbox``
    lists of 4 floats or None; ``acquired`` / ``acquired_t2`` datetimes or None;
    ``class_name`` / ``sensor`` strings or None; ``changed`` bools or None), or an Arrow
    column of them (a search shard's millions of rows: converted without a Python object
    per row). A missing column reads as all null. :func:`save_metadata` writes tables to
    disk and :meth:`load` maps them back without reading them into the heap.
    """

    def __init__(self, columns: Mapping[str, Sequence[Any] | pa.Array | pa.ChunkedArray], n: int) -> None:
        self.n = n

        def col(name: str) -> Sequence[Any] | pa.Array | pa.ChunkedArray:
            values = columns.get(name)
            if values is None:
                return [None] * n
            if len(values) != n:
                raise ValueError(f"metadata column {name!r} has {len(values)} values for {n} rows")
            return values

        self.bbox = _boxes(col("bbox"), n)
        t1, t2 = _times(col("acquired")), _times(col("acquired_t2"))
        # Null t1 (the smallest int64) stays the start: no t2 is below it.
        self.t_start = np.where((t2 != _NULL_TIME) & (t2 < t1), t2, t1)
        self.t_end = np.where(t2 != _NULL_TIME, np.maximum(t1, t2), t1)
        self.class_codes, self.class_names = _categories(col("class_name"))
        self.sensor_codes, self.sensor_names = _categories(col("sensor"))
        self.changed = _flags(col("changed"))

    @property
    def has_time(self) -> np.ndarray:
        """Boolean [n]: the row has an ``acquired`` time."""
        return self.t_start != _NULL_TIME

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> MetadataTable:
        """The table :func:`save_metadata` wrote to directory ``path``, its arrays
        memory-mapped (``mmap``): they stay in the file's pages, not in the heap."""
        path = Path(path)
        names = json.loads((path / _NAMES_FILE).read_text(encoding="utf-8"))
        table = cls.__new__(cls)
        for name in _ARRAYS:
            setattr(table, name, np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None))
        table.n = len(table.t_start)
        table.class_names = np.array(names["class_names"], dtype=object)
        table.sensor_names = np.array(names["sensor_names"], dtype=object)
        return table

    def mask(self, f: SearchFilter, block: int = 65536) -> np.ndarray:
        """Boolean [n]: the rows that pass every field of ``f``, computed ``block`` rows
        at a time (a shard's millions of rows: the temporaries stay one block's)."""
        keep = np.ones(self.n, bool)
        for a in range(0, self.n, block):
            b = min(a + block, self.n)
            k = keep[a:b]
            if f.bbox is not None:
                k &= boxes_intersect(self.bbox[a:b], np.asarray(f.bbox, dtype=np.float64))
            if f.has_datetime:
                k &= self.t_start[a:b] != _NULL_TIME  # has a time
                if f.end is not None:
                    k &= self.t_start[a:b] <= f.end
                if f.start is not None:
                    k &= self.t_end[a:b] >= f.start
            if f.class_name is not None:
                k &= _isin(self.class_codes[a:b], self.class_names, f.class_name)
            if f.sensor is not None:
                k &= _isin(self.sensor_codes[a:b], self.sensor_names, f.sensor)
            if f.changed is not None:
                k &= self.changed[a:b] == int(f.changed)
        return keep


def save_metadata(tables: Iterable[MetadataTable], n: int, out: str | Path) -> None:
    """Consecutive tables of ``n`` rows in all, saved as one table in directory ``out``
    (a ``.npy`` per array, filled table by table: memory is one table) for
    :meth:`MetadataTable.load`. Category codes are renumbered over the names of all the
    tables, kept in ``names.json``, written last (its presence says the table is whole)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=dtype, shape=(n, *shape))
              for name, (dtype, shape) in _ARRAYS.items()}
    lookups: dict[str, dict[str, int]] = {"class": {}, "sensor": {}}
    at = 0
    for table in tables:
        if at + table.n > n:
            raise ValueError(f"{out}: the tables hold more than the {n} rows expected")
        for name in ("bbox", "t_start", "t_end", "changed"):
            arrays[name][at:at + table.n] = getattr(table, name)
        for kind, lookup in lookups.items():
            names = getattr(table, f"{kind}_names")
            # Code -1 (null) indexes the appended -1.
            lut = np.array([lookup.setdefault(str(v), len(lookup)) for v in names] + [-1], np.int32)
            arrays[f"{kind}_codes"][at:at + table.n] = lut[getattr(table, f"{kind}_codes")]
        at += table.n
    if at != n:
        raise ValueError(f"{out}: the tables hold {at} rows, {n} expected")
    for array in arrays.values():
        array.flush()
    del arrays
    names_json = {f"{kind}_names": list(lookup) for kind, lookup in lookups.items()}
    (out / _NAMES_FILE).write_text(json.dumps(names_json), encoding="utf-8")


def has_saved_metadata(path: str | Path) -> bool:
    """Whether directory ``path`` holds a whole table of :func:`save_metadata`."""
    return (Path(path) / _NAMES_FILE).is_file()


class StackedMetadata(_Filterable):
    """Consecutive tables (a search shard's index pieces) read as one table of their live
    rows: ``deleted`` (sorted positions in the stack: tombstones) are left out."""

    def __init__(self, tables: Sequence[MetadataTable], deleted: np.ndarray | None = None) -> None:
        self.tables = list(tables)
        self.deleted = np.zeros(0, np.int64) if deleted is None else np.asarray(deleted, np.int64)
        self.n = sum(t.n for t in self.tables) - len(self.deleted)

    def mask(self, f: SearchFilter) -> np.ndarray:
        """Boolean [n] over the live rows (each table masked, then the tombstones dropped)."""
        keep = np.concatenate([t.mask(f) for t in self.tables]) if self.tables else np.zeros(0, bool)
        return np.delete(keep, self.deleted) if len(self.deleted) else keep


# ---------------------------------------------------------------------------------------
# Top-k among candidates
# ---------------------------------------------------------------------------------------


class CandidateSearcher(Protocol):
    """The seam to an approximate index: top-k inner product among the given rows only.

    ``search(queries [Q, d], k, rows)`` -> ``(scores [Q, k] float32, rows [Q, k] int64)``,
    rows being archive positions, padding -inf / -1; ``rows`` None searches everything.
    It may miss rows (an ANN does), but every row it returns must be among ``rows``.
    """

    def search(self, queries: np.ndarray, k: int,
               rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]: ...


def top_k_of_scores(scores: np.ndarray, k: int,
                    ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``scores`` [Q, m] by decreasing score (ties: the lower
    id first): ``(scores [Q, k], ids [Q, k])``, ``ids`` naming the m columns (0..m-1 when
    None), padded with -inf / -1 beyond m."""
    scores = np.atleast_2d(scores)
    n_q, m = scores.shape
    ids = np.arange(m) if ids is None else np.asarray(ids, dtype=np.int64)
    out_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_r = np.full((n_q, k), -1, dtype=np.int64)
    if m == 0:
        return out_s, out_r
    kk = min(k, m)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < m else \
        np.broadcast_to(np.arange(m), (n_q, m))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((ids[part], -top), axis=1)
    out_s[:, :kk] = np.take_along_axis(top, order, axis=1)
    out_r[:, :kk] = ids[np.take_along_axis(part, order, axis=1)]
    return out_s, out_r


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int,
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product of ``queries`` [Q, d] among ``rows`` of ``vectors`` (all
    when None): ``(scores [Q, k], rows [Q, k])`` by decreasing score, padded with -inf /
    -1 beyond the candidates. Ties go to the lower row."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    pool = vectors if rows is None else vectors[rows]
    return top_k_of_scores(queries @ pool.T, k, rows)


class Oversampling:
    """A :class:`CandidateSearcher` out of an unrestricted searcher (``search(queries, k)``
    -> scores, rows; rsir.retrieval.topk): asks it for ``factor`` x k / (fraction of rows
    passing) results, keeps those among ``rows``, and asks for four times more while a
    query has fewer than k, up to ``max_k``; what still has fewer is answered exactly
    over ``vectors`` (so k results come back whenever k rows pass)."""

    def __init__(self, searcher: Any, vectors: np.ndarray, factor: float = 2.0,
                 max_k: int = 4096) -> None:
        self.searcher, self.vectors = searcher, vectors
        self.factor, self.max_k = factor, max_k
        self.exact_fallbacks = 0  # queries that needed the exact search (for reports)

    def search(self, queries: np.ndarray, k: int,
               rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.vectors)
        if rows is None:
            return self.searcher.search(queries, k)
        need = min(k, len(rows))
        passing = np.zeros(n, bool)
        passing[rows] = True
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(queries), k), -1, dtype=np.int64)
        todo = np.arange(len(queries))
        ask = int(math.ceil(self.factor * k * n / max(len(rows), 1)))
        while len(todo):
            ask = min(ask, n, self.max_k)
            s, r = self.searcher.search(queries[todo], ask)
            done = []
            for j, qi in enumerate(todo):
                ok = (r[j] >= 0) & passing[np.maximum(r[j], 0)]
                if ok.sum() >= need:
                    out_s[qi, :need], out_r[qi, :need] = s[j][ok][:need], r[j][ok][:need]
                    done.append(j)
            todo = np.delete(todo, done)
            if ask >= min(n, self.max_k):
                break
            ask *= 4
        if len(todo):
            self.exact_fallbacks += len(todo)
            out_s[todo], out_r[todo] = exact_top_k(self.vectors, queries[todo], k, rows)
        return out_s, out_r


def filtered_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None,
                   ann: CandidateSearcher | None = None,
                   exact_max: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``queries`` among candidate ``rows`` (None: all rows): exact over the
    candidates when there is no ``ann`` or at most ``exact_max`` of them, else ``ann``."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if ann is None or (rows is not None and len(rows) <= exact_max):
        return exact_top_k(vectors, queries, k, rows)
    return ann.search(queries, k, rows)
