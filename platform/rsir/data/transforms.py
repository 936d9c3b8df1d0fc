"""Preprocessing shared by training and inference: decode, bands, resize, augment, normalise.

``preprocess_rows`` is the one function every path calls (Ray Data ``map_batches`` in
training, and through ``preprocess_batch`` batch embedding and the Serve encoders);
``train=True`` only switches on the random augmentations and caption sampling.
Augmentations of a pair use the same random parameters for both dates, so a flip never
looks like a change.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rsir.config import DataConfig
from rsir.data.schema import decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augment:
    """Random parameters of one sample, applied identically to both dates."""

    crop: tuple[float, float, float, float]  # top, left, height, width as fractions
    hflip: bool
    vflip: bool
    brightness: float
    contrast: float
    rotation: float = 0.0  # degrees, counter-clockwise

    @staticmethod
    def sample(rng: np.random.Generator, cfg: DataConfig) -> Augment:
        scale = rng.uniform(cfg.random_crop_scale, 1.0)
        side = float(np.sqrt(scale))
        top, left = rng.uniform(0, 1 - side, size=2)
        jitter = cfg.color_jitter
        return Augment(
            crop=(float(top), float(left), side, side),
            hflip=bool(cfg.hflip and rng.random() < 0.5),
            vflip=bool(cfg.vflip and rng.random() < 0.5),
            brightness=float(rng.uniform(1 - jitter, 1 + jitter)),
            contrast=float(rng.uniform(1 - jitter, 1 + jitter)),
            # drawn last and only when on, so recipes without rotation keep their draws
            rotation=float(rng.uniform(0.0, cfg.random_rotation)) if cfg.random_rotation > 0 else 0.0,
        )


def select_bands(image: np.ndarray, row_bands: Sequence[str] | None, wanted: Sequence[str]) -> np.ndarray:
    """Keep the ``wanted`` bands, by name, in that order."""
    row_bands = [str(b) for b in row_bands] if row_bands is not None else []
    if not row_bands:
        row_bands = ["R", "G", "B"][: image.shape[2]]
    if len(row_bands) != image.shape[2]:
        raise ValueError(f"image has {image.shape[2]} bands but the row names {len(row_bands)}")
    if row_bands == list(wanted):
        return image
    missing = [b for b in wanted if b not in row_bands]
    if missing:
        raise ValueError(f"bands {missing} not in the image's bands {row_bands}")
    return image[:, :, [row_bands.index(b) for b in wanted]]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, C]`` -> float ``[C, H, W]`` in [0, 1] for integer images (scaled by dtype max)."""
    if np.issubdtype(image.dtype, np.integer):
        scale = float(np.iinfo(image.dtype).max)
        array = image.astype(np.float32) / scale
    else:
        array = image.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


FULL_CROP = (0.0, 0.0, 1.0, 1.0)


def _crop_slices(h: int, w: int, crop: tuple[float, float, float, float]) -> tuple[slice, slice]:
    top, left, ch, cw = crop
    y0, x0 = int(round(top * h)), int(round(left * w))
    return slice(y0, y0 + max(1, int(round(ch * h)))), slice(x0, x0 + max(1, int(round(cw * w))))


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """open_clip's evaluation resize of an ``[H, W, C]`` image: the shorter side to
    ``size`` with PIL's bicubic filter, then the centre ``size`` x ``size`` crop, with
    torchvision's ``Resize(size)`` / ``CenterCrop(size)`` rounding on a PIL image. 8-bit
    RGB or grey images are resized as one PIL image (rounded to 8 bits, as open_clip's
    transform does); other images band by band in float (integers scaled to [0, 1])."""
    from PIL import Image

    h, w = image.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_w, new_h = (new_long, size) if h <= w else (size, new_long)
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        out = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BICUBIC))
        out = out[:, :, None] if out.ndim == 2 else out
    else:
        if np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float32) / float(np.iinfo(image.dtype).max)
        out = np.stack([np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
                                   .resize((new_w, new_h), Image.Resampling.BICUBIC))
                        for c in range(image.shape[2])], axis=-1)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return out[top: top + size, left: left + size]


def apply_augment(x: torch.Tensor, aug: Augment | None, size: int) -> torch.Tensor:
    """Rotate and crop (or not), resize to ``size``, flip and jitter one ``[C, H, W]`` image."""
    if aug is not None and aug.rotation:
        from torchvision.transforms.functional import InterpolationMode, rotate

        # as torchvision's RandomRotation on the authors' PIL images: nearest, black corners
        x = rotate(x, aug.rotation, interpolation=InterpolationMode.NEAREST, fill=0.0)
    if aug is not None and aug.crop != FULL_CROP:
        rows, cols = _crop_slices(x.shape[1], x.shape[2], aug.crop)
        x = x[:, rows, cols]
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    if aug is not None:
        if aug.hflip:
            x = x.flip(-1)
        if aug.vflip:
            x = x.flip(-2)
        if aug.brightness != 1.0 or aug.contrast != 1.0:
            mean = x.mean(dim=(1, 2), keepdim=True)
            x = ((x - mean) * aug.contrast + mean) * aug.brightness
    return x


def augment_objects(objects: Sequence[Mapping[str, Any]] | None, aug: Augment | None) -> list[dict[str, Any]]:
    """A row's objects as the augmented image shows them: boxes (fractions) rotated (the
    rotated box's bounding box, for square images), cropped, re-scaled to the crop and
    flipped with the image; a box left outside the image or the crop is gone."""
    out = []
    for o in objects if objects is not None else ():
        x0, y0, x1, y1 = (float(v) for v in o["box"])
        if aug is not None and aug.rotation:
            # counter-clockwise on screen (y down) about the centre, as torchvision's rotate
            t = np.deg2rad(aug.rotation)
            dx = np.array([x0, x1, x1, x0]) - 0.5
            dy = np.array([y0, y0, y1, y1]) - 0.5
            xs = np.clip(0.5 + dx * np.cos(t) + dy * np.sin(t), 0.0, 1.0)
            ys = np.clip(0.5 - dx * np.sin(t) + dy * np.cos(t), 0.0, 1.0)
            x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
            if x1 <= x0 or y1 <= y0:
                continue
        if aug is not None:
            top, left, ch, cw = aug.crop
            x0, x1 = (min(max((v - left) / cw, 0.0), 1.0) for v in (x0, x1))
            y0, y1 = (min(max((v - top) / ch, 0.0), 1.0) for v in (y0, y1))
            if x1 <= x0 or y1 <= y0:
                continue
            if aug.hflip:
                x0, x1 = 1.0 - x1, 1.0 - x0
            if aug.vflip:
                y0, y1 = 1.0 - y1, 1.0 - y0
        score = o.get("score")
        out.append({"box": [x0, y0, x1, y1], "category": str(o["category"]),
                    "score": 1.0 if score is None else float(score)})
    return out


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def prepare_image(
    data: bytes, row_bands: Sequence[str] | None, cfg: DataConfig, aug: Augment | None
) -> torch.Tensor:
    """Bytes -> normalised ``[C, size, size]`` tensor, resized as ``cfg.resize`` says."""
    image = select_bands(decode_image(data), row_bands, cfg.bands)
    if cfg.resize == "bicubic_center_crop":
        if aug is not None:  # the random crop first, then open_clip's resize of it
            rows, cols = _crop_slices(image.shape[0], image.shape[1], aug.crop)
            image, aug = image[rows, cols], dataclasses.replace(aug, crop=FULL_CROP)
        image = resize_center_crop(image, cfg.image_size)
    x = apply_augment(to_tensor(image), aug, cfg.image_size)
    return normalize(x, cfg.mean, cfg.std)


def sample_caption(
    captions: Sequence[Mapping[str, str]], language: str, rng: np.random.Generator,
    languages: Sequence[str] | None = None,
) -> tuple[str, str]:
    """One caption of the row: of ``language``, or of a random language when ``random``
    (one of ``languages``, the recipe's declared ones, when given)."""
    if not captions:
        raise ValueError("the row has no captions")
    if language == "random":
        langs = sorted({c["lang"] for c in captions} & set(languages or [c["lang"] for c in captions]))
        if not langs:
            raise ValueError(f"no caption in any of the languages {list(languages or [])}")
        language = langs[int(rng.integers(len(langs)))]
    pool = [c for c in captions if c["lang"] == language]
    if not pool:
        raise ValueError(f"no caption in language {language!r}")
    c = pool[int(rng.integers(len(pool)))]
    return c["text"], c["lang"]


def caption_groups(
    captions: Sequence[Mapping[str, str]] | None, language: str, languages: Sequence[str] = (),
) -> list[Any]:
    """The training rows of one image under ``data.captions: all``: the captions each row
    keeps, one row per caption of ``language``; under ``random``, one per caption index,
    holding the index-th caption of every declared language present (a sentence and its
    translations; :func:`sample_caption` then draws the language). A row with no caption
    to use stays one row, as it is, for preprocessing to drop and count."""
    usable = [c for c in captions if c["text"]] if captions is not None else []
    if language == "random":
        langs = sorted({c["lang"] for c in usable} & set(languages or [c["lang"] for c in usable]))
        per_lang = [[c for c in usable if c["lang"] == lang] for lang in langs]
        n = max((len(p) for p in per_lang), default=0)
        groups = [[p[i] for p in per_lang if i < len(p)] for i in range(n)]
    else:
        groups = [[c] for c in usable if c["lang"] == language]
    return groups or [captions]


@dataclass(frozen=True)
class DroppedRow:
    """A row preprocessing skipped, and why (the ``ValueError``'s message)."""

    id: str
    reason: str


def preprocess_rows(
    batch: Mapping[str, Any],
    cfg: DataConfig,
    train: bool,
    seed: int | None = None,
    with_captions: bool = True,
    fields: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], list[DroppedRow]]:
    """A batch of shard rows -> model inputs of its good rows, and the rows dropped.

    Returns ``id``, and ``image`` ``[B, C, S, S]`` (task ``single``) or ``image_pair``
    ``[B, 2, C, S, S]`` (task ``pair``) as float32 arrays; with ``with_captions`` also one
    sampled ``text`` and its ``lang`` per row (a random caption at training, the first
    of the language at inference); and each of the model's ``fields``
    (``InputContract.fields``) per row, ``objects`` as lists of ``{box, category, score}``
    moved with the augmentation. A bad row (undecodable or missing image, bands that do
    not match, no caption to use) is never a crash: it is left out and listed with its id.
    """
    rng = np.random.default_rng(seed)
    pair = cfg.task == "pair"
    ids, images, texts, langs, dropped = [], [], [], [], []
    extra: dict[str, list[Any]] = {f: [] for f in fields}
    for i in range(len(batch["id"])):
        bands = batch["bands"][i] if "bands" in batch else None
        try:
            aug = Augment.sample(rng, cfg) if train and cfg.augment else None
            if pair:
                if batch["image_t2"][i] is None:
                    raise ValueError("a pair row has no image_t2")
                t1 = prepare_image(batch["image"][i], bands, cfg, aug)
                t2 = prepare_image(batch["image_t2"][i], bands, cfg, aug)
                x = torch.stack([t1, t2])
            else:
                x = prepare_image(batch["image"][i], bands, cfg, aug)
            if with_captions:
                raw = batch["captions"][i]
                # a null caption list or text reads back as None: nothing to train on
                caps = [c for c in raw if c["text"]] if raw is not None else []
                text, lang = (sample_caption(caps, cfg.language, rng, cfg.languages) if train
                              else _first_caption(caps, cfg.language, cfg.languages))
        except ValueError as err:
            dropped.append(DroppedRow(str(batch["id"][i]), str(err)))
            continue
        ids.append(str(batch["id"][i]))
        images.append(x)
        if with_captions:
            texts.append(text)
            langs.append(lang)
        for f in fields:
            extra[f].append(augment_objects(batch[f][i], aug) if f == "objects" else batch[f][i])
    shape = (0, 2, len(cfg.bands), cfg.image_size, cfg.image_size) if pair else (
        0, len(cfg.bands), cfg.image_size, cfg.image_size)
    stacked = torch.stack(images).numpy() if images else np.zeros(shape, np.float32)
    out: dict[str, np.ndarray] = {"id": np.array(ids, dtype=object),
                                  "image_pair" if pair else "image": stacked}
    if with_captions:
        out["text"] = np.array(texts, dtype=object)
        out["lang"] = np.array(langs, dtype=object)
    for f, values in extra.items():
        column = np.empty(len(values), dtype=object)  # one list per row, not a 2-D array
        column[:] = values
        out[f] = column
    return out, dropped


def log_dropped(dropped: Sequence[DroppedRow], n: int) -> None:
    """One warning per dropped row (its id and why) and one for the batch."""
    for d in dropped:
        log.warning("dropping row %s: %s", d.id, d.reason)
    if dropped:
        log.warning("dropped %d of %d rows in a batch", len(dropped), n)


def preprocess_batch(
    batch: Mapping[str, Any],
    cfg: DataConfig,
    train: bool,
    seed: int | None = None,
    with_captions: bool = True,
    fields: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """:func:`preprocess_rows` for callers that only log what was dropped (Serve, embedding)."""
    out, dropped = preprocess_rows(batch, cfg, train, seed, with_captions, fields)
    log_dropped(dropped, len(batch["id"]))
    return out


def _first_caption(captions: Sequence[Mapping[str, str]], language: str,
                   languages: Sequence[str] = ("en",)) -> tuple[str, str]:
    lang = (languages[0] if languages else "en") if language == "random" else language
    for c in captions:
        if c["lang"] == lang:
            return c["text"], c["lang"]
    raise ValueError(f"no caption in language {lang!r}")


def explode_captions(
    captions: Sequence[Sequence[Mapping[str, str]]], language: str | None
) -> tuple[list[str], list[str], list[int]]:
    """Every caption of every row (of one language, or all when None) as a flat list.

    Returns ``(texts, langs, owner)``: ``owner[t]`` is the row index of text ``t``.
    """
    texts, langs, owner = [], [], []
    for i, caps in enumerate(captions):
        for c in caps:
            if language is None or c["lang"] == language:
                texts.append(c["text"])
                langs.append(c["lang"])
                owner.append(i)
    return texts, langs, owner
