"""Objects from label files: DOTA-format ``.txt`` per image, or one COCO-detection JSON.

``rsir convert <dataset> ... --objects PATH`` fills each row's ``objects`` from ground-truth
(or a detector's) boxes instead of leaving them to ``rsir detect``. ``PATH`` is either

* a folder of DOTA label files, one ``<image stem>.txt`` per image. Each object line is
  ``x1 y1 x2 y2 x3 y3 x4 y4 category [difficult]`` in pixels (the DOTA devkit reads
  ``difficult`` as optional too); the ``imagesource:`` and ``gsd:`` header lines DOTA-v1
  files start with, and blank lines, are skipped. The oriented quadrilateral becomes
  its axis-aligned bounding box; difficult objects are kept (a detector sees them too).
* one COCO-detection JSON: ``images[].id/file_name/width/height``,
  ``annotations[].image_id/bbox [x, y, w, h]/category_id/score`` (``score`` optional),
  ``categories[].id/name``. Images are matched by the stem of ``file_name``.

An image is matched to its labels by the stem of its (first date's first) file. An image
with no label file, or no COCO annotation, has no objects: DOTA-style detectors write
files only for images with detections, so absence is not an error. A label file that
does not parse (wrong field count, a non-numeric coordinate, a vertex outside the image,
a COCO size that is not the decoded image's) quarantines its record, the reason naming
the file and line (COCO: annotation).

Boxes are stored as ``[x0, y0, x1, y1]`` fractions of the image's width and height (of
the decoded image for DOTA, checked against COCO's ``width``/``height``), categories
normalised to the project's names (:func:`normalize_category`: DOTA-v1's 15 as
``rsir.models.galr.DOTA_CATEGORIES`` spells them), score 1.0 for ground truth. Other
categories (DOTA-v1.5/v2 add ``container-crane``, ``airport``, ``helipad``) are kept:
the model's ``categories`` option decides which it embeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOTA_HEADERS = ("imagesource:", "gsd:")


class LabelError(ValueError):
    """A label file (or COCO annotation) that does not parse; the message names where."""


def normalize_category(name: str) -> str:
    """The project's spelling of a category: lowercase, runs of spaces as ``-``."""
    return "-".join(name.strip().lower().split())


def _fraction_box(xs: Sequence[float], ys: Sequence[float], width: int, height: int,
                  where: str) -> list[float]:
    """Axis-aligned ``[x0, y0, x1, y1]`` of pixel vertices, as fractions of the image."""
    for x, y in zip(xs, ys):
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise LabelError(f"{where}: vertex ({x:g}, {y:g}) is outside the {width}x{height} image")
    return [min(xs) / width, min(ys) / height, max(xs) / width, max(ys) / height]


def _number(text: Any, what: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LabelError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LabelError(f"{where}: {what} {text!r} is not finite")
    return value


def parse_dota(text: str, width: int, height: int, name: str) -> list[dict[str, Any]]:
    """The objects of one DOTA label file's ``text`` for a ``width`` x ``height`` image.

    ``name`` is the file's name for error messages (``<name>:<line>``). Raises
    :class:`LabelError` on the first line that does not parse.
    """
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or (fields[0].lower().startswith(DOTA_HEADERS)):
            continue
        where = f"{name}:{number}"
        if len(fields) not in (9, 10):
            raise LabelError(f"{where}: {len(fields)} fields, expected "
                             "'x1 y1 x2 y2 x3 y3 x4 y4 category [difficult]'")
        coords = [_number(v, "coordinate", where) for v in fields[:8]]
        if len(fields) == 10 and fields[9] not in ("0", "1"):
            raise LabelError(f"{where}: difficult {fields[9]!r} is not 0 or 1")
        box = _fraction_box(coords[0::2], coords[1::2], width, height, where)
        objects.append({"box": box, "category": normalize_category(fields[8]), "score": 1.0})
    return objects


@dataclass(frozen=True)
class CocoImage:
    file_name: str
    width: int
    height: int
    annotations: tuple[Mapping[str, Any], ...]


def index_coco(data: Any, name: str) -> tuple[dict[str, CocoImage], dict[Any, str]]:
    """COCO-detection JSON -> ({image stem: image with its annotations}, {category id: name}).

    Raises :class:`LabelError` for a file whose structure is wrong as a whole (not a
    mapping, an image without ``file_name``, two images with one stem).
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise LabelError(f"{name}: not a COCO-detection JSON (no 'images' list)")
    categories = {c.get("id"): normalize_category(str(c.get("name", "")))
                  for c in data.get("categories") or [] if isinstance(c, dict)}
    by_id: dict[Any, list[Mapping[str, Any]]] = {}
    for ann in data.get("annotations") or []:
        by_id.setdefault(ann.get("image_id") if isinstance(ann, dict) else None, []).append(ann)
    images: dict[str, CocoImage] = {}
    for i, image in enumerate(data["images"]):
        file_name = str(image.get("file_name", "")) if isinstance(image, dict) else ""
        if not file_name:
            raise LabelError(f"{name}: images[{i}] has no file_name")
        stem = Path(file_name).stem
        if stem in images:
            raise LabelError(f"{name}: images {images[stem].file_name!r} and {file_name!r} share "
                             f"the stem {stem!r}")
        images[stem] = CocoImage(file_name, image.get("width"), image.get("height"),
                                 tuple(by_id.get(image.get("id"), ())))
    return images, categories


def coco_objects(image: CocoImage, categories: Mapping[Any, str], width: int, height: int,
                 name: str) -> list[dict[str, Any]]:
    """The objects of one COCO image, checked against the decoded ``width`` x ``height``."""
    if (image.width, image.height) != (width, height):
        raise LabelError(f"{name}: {image.file_name} is {image.width}x{image.height} in the JSON, "
                         f"{width}x{height} decoded")
    objects = []
    for ann in image.annotations:
        where = f"{name}: annotation {ann.get('id', '?')} of {image.file_name}"
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise LabelError(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
        x, y, w, h = (_number(v, "bbox value", where) for v in bbox)
        if w < 0 or h < 0:
            raise LabelError(f"{where}: bbox {bbox!r} has a negative size")
        if ann.get("category_id") not in categories:
            raise LabelError(f"{where}: category_id {ann.get('category_id')!r} is not in categories")
        score = _number(ann.get("score", 1.0), "score", where)
        if not 0.0 <= score <= 1.0:
            raise LabelError(f"{where}: score {score:g} is outside [0, 1]")
        box = _fraction_box([x, x + w], [y, y + h], width, height, where)
        objects.append({"box": box, "category": categories[ann["category_id"]], "score": score})
    return objects


class ObjectLabels:
    """The objects of a dataset's images from ``--objects PATH`` (a DOTA folder or a COCO JSON)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dota: dict[str, Path] = {}  # image stem -> label file
        self.coco: tuple[dict[str, CocoImage], dict[Any, str]] | None = None
        if self.path.is_dir():
            self.dota = {p.stem: p for p in sorted(self.path.glob("*.txt"))}
        elif self.path.is_file():
            try:
                data = json.loads(self.path.read_bytes())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise LabelError(f"{self.path}: not valid JSON: {err}") from None
            self.coco = index_coco(data, self.path.name)
        else:
            raise FileNotFoundError(f"--objects {self.path}: no such folder or file")

    def objects_for(self, image: Path, width: int, height: int) -> list[dict[str, Any]]:
        """The objects of ``image`` (decoded size ``width`` x ``height``); raises LabelError."""
        if self.coco is not None:
            images, categories = self.coco
            entry = images.get(image.stem)
            return [] if entry is None else coco_objects(entry, categories, width, height,
                                                         self.path.name)
        path = self.dota.get(image.stem)
        if path is None:
            return []
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise LabelError(f"{path.name}: not valid UTF-8") from None
        return parse_dota(text, width, height, path.name)
