"""Objects from an oriented-box detector trained on DOTA (pure; the Ray job is
:mod:`rsir.enrich`).

The detector is an ultralytics YOLO OBB model (the ``-obb`` weights are trained on
DOTA-v1, 15 classes; ultralytics is AGPL-3.0, the optional ``detect`` extra) loaded from a
local file: nothing is downloaded. What the job needs of it is ultralytics' own interface,
``model.names`` and ``model.predict(images, ...) -> list[Results]`` with ``Results.obb``,
so a test double returning real ``Results`` goes through the same code as the model.

An image's objects are the axis-aligned hulls of its oriented boxes, as fractions of the
image's width and height clipped to [0, 1] (the schema's ``box``), with the DOTA-v1 class
name (ultralytics writes ``large vehicle``, the schema ``large-vehicle``) and the
detector's confidence, highest first, at most ``max_objects`` at or above
``score_threshold``. A bitemporal row is detected on its first date (``image``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rsir.data.enrichment import result_table
from rsir.data.schema import OBJECT_TYPE, decode_image
from rsir.data.transforms import select_bands

log = logging.getLogger(__name__)

OBJECTS_TYPE = pa.list_(OBJECT_TYPE)
DETECT_EXTRA = "pip install 'rsir[detect]' (ultralytics, AGPL-3.0)"


class Detector(Protocol):
    """What the job uses of an ultralytics model (a test double implements the same)."""

    names: Mapping[int, str]

    def predict(self, source: list[np.ndarray], **kwargs: Any) -> list[Any]: ...


def dota_category(name: str, categories: Sequence[str]) -> str:
    """A detector's class name as the schema's category (``large vehicle`` -> ``large-vehicle``)."""
    category = "-".join(str(name).strip().lower().replace("_", " ").split())
    if category not in categories:
        raise ValueError(f"detector class {name!r} is not one of the categories "
                         f"({', '.join(categories)}): are the weights trained on DOTA-v1?")
    return category


def category_map(names: Mapping[int, str], categories: Sequence[str]) -> dict[int, str]:
    """Class id -> category for every class of the detector (an unknown class is an error)."""
    return {int(i): dota_category(n, categories) for i, n in dict(names).items()}


def detector_image(data: bytes, bands: Sequence[str] | None) -> np.ndarray:
    """Image bytes -> the ``[H, W, 3]`` uint8 BGR array ultralytics takes from numpy.

    R, G, B by name (other bands are not what DOTA models saw); a one-band image is
    repeated; integer images wider than 8 bits and float images (in [0, 1], as
    ``to_tensor`` reads them) are scaled to 8 bits. Raises ``ValueError`` with the cause.
    """
    image = decode_image(data)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    else:
        image = select_bands(image, bands, ("R", "G", "B"))
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float64) / float(np.iinfo(image.dtype).max)
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, ::-1])


def results_to_objects(
    result: Any, categories: Mapping[int, str], score_threshold: float, max_objects: int,
) -> list[dict[str, Any]]:
    """One ultralytics OBB ``Results`` -> rows of the schema's ``objects`` (see module doc).

    Boxes wholly outside the image (no area once clipped) are dropped.
    """
    obb = result.obb
    if obb is None:
        raise ValueError("the detector returned no oriented boxes: the weights are not an OBB model")
    height, width = result.orig_shape[:2]
    corners = np.asarray(_numpy(obb.xyxyxyxy), dtype=np.float64).reshape(-1, 4, 2)
    scores = np.asarray(_numpy(obb.conf), dtype=np.float64).reshape(-1)
    classes = np.asarray(_numpy(obb.cls)).reshape(-1).astype(np.int64)
    lo = np.clip(corners.min(axis=1) / (width, height), 0.0, 1.0)
    hi = np.clip(corners.max(axis=1) / (width, height), 0.0, 1.0)
    keep = (scores >= score_threshold) & (hi[:, 0] > lo[:, 0]) & (hi[:, 1] > lo[:, 1])
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]][:max_objects]
    return [{"box": [float(lo[i, 0]), float(lo[i, 1]), float(hi[i, 0]), float(hi[i, 1])],
             "category": categories[int(classes[i])], "score": float(scores[i])} for i in order]


def _numpy(value: Any) -> np.ndarray:
    return value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)


def import_ultralytics() -> Any:
    """``ultralytics``, offline: ``YOLO_OFFLINE`` before its import, so neither its
    connectivity probe (DNS lookups at import) nor its usage analytics touch the network.
    Its other downloads (fonts for plotting, weights named but absent) are never reached:
    the job does not plot and loads an existing file."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import ultralytics
    except ImportError as err:
        raise ImportError(f"rsir detect needs ultralytics: {DETECT_EXTRA}") from err
    return ultralytics


@dataclass(frozen=True)
class YoloLoader:
    """Loads ultralytics YOLO OBB weights from a local file (called once per actor)."""

    weights: str

    def __call__(self, device: str) -> Detector:
        path = Path(self.weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"detector weights {path} not found: pass a local ultralytics OBB file with "
                "--weights (e.g. yolo11n-obb.pt, trained on DOTA-v1; nothing is downloaded)")
        model = import_ultralytics().YOLO(str(path))
        if model.task != "obb":
            raise ValueError(f"{path}: an ultralytics {model.task!r} model, not an oriented-box "
                             "(obb) one (the -obb weights are trained on DOTA-v1)")
        model.to(device)
        return model


@dataclass(frozen=True)
class DetectOptions:
    score_threshold: float = 0.25
    max_objects: int = 300
    image_size: int = 1024  # the input size of ultralytics' DOTA-v1 OBB models


class ObjectDetector:
    """``map_batches`` callable: rows (``path`` of their shard, ``id``, ``image``, ``bands``) -> one result
    row each (:func:`~rsir.data.enrichment.result_schema` of ``objects``).

    ``load_model(device)`` builds the detector once; an image that does not decode gets no
    objects and its reason (the row is kept and quarantined).
    """

    def __init__(self, load_model: Callable[[str], Detector], categories: Sequence[str],
                 options: DetectOptions, device: str = "cpu", torch_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.model = load_model(device)
        self.categories = category_map(self.model.names, categories)
        self.options = options
        self.device = device

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths, ids = batch.column("path").to_pylist(), batch.column("id").to_pylist()
        images, reasons = [], []
        for data, bands in zip(batch.column("image").to_pylist(), batch.column("bands").to_pylist()):
            try:
                images.append(detector_image(data, bands))
                reasons.append(None)
            except ValueError as err:
                images.append(None)
                reasons.append(f"detect: {err}")
        good = [i for i, image in enumerate(images) if image is not None]
        objects: list[list[dict[str, Any]] | None] = [None] * len(ids)
        if good:
            opts = self.options
            results = self.model.predict(
                [images[i] for i in good], conf=opts.score_threshold, max_det=opts.max_objects,
                imgsz=opts.image_size, device=self.device, verbose=False)
            for i, result in zip(good, results):
                objects[i] = results_to_objects(result, self.categories, opts.score_threshold,
                                                opts.max_objects)
        return result_table(
            ({"path": p, "id": i, "value": o, "reason": r}
             for p, i, o, r in zip(paths, ids, objects, reasons)), OBJECTS_TYPE)
