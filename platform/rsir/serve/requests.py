"""Validation of search / embed requests: every bad input becomes an ``ApiError`` (4xx)
whose message names the field. No Ray, no torch."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsir.data.schema import decode_image
from rsir.retrieval.filters import FilterError, SearchFilter, parse_filter
from rsir.serve.config import LimitsConfig

KINDS = ("text", "image", "image_pair", "composed")
TARGETS = ("images", "pairs", "captions")
# Which targets each query kind can search, the first being the default.
KIND_TARGETS = {
    "text": ("images", "pairs", "captions"),
    "image": ("images", "captions"),
    "image_pair": ("pairs", "captions"),
    "composed": ("images",),
}
SEARCH_FIELDS = {"kind", "text", "image", "image_t2", "bands", "lambda", "target", "k", "rerank",
                 "filter"}


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        detail = f"{self.field}: {self.message}" if self.field else self.message
        return {"error": detail, "field": self.field}


@dataclass
class Image:
    data: bytes
    channels: int


@dataclass
class SearchRequest:
    kind: str
    target: str
    k: int
    text: str | None = None
    image: Image | None = None
    image_t2: Image | None = None
    bands: list[str] | None = None
    lam: float = 0.5
    rerank: bool = False
    filter: SearchFilter | None = None  # None: no restriction


def check_object(body: Any, fields: set[str], what: str = "request body",
                 prefix: str = "") -> dict[str, Any]:
    """``body`` as a JSON object with only ``fields``; else a 422 naming the first stranger
    (``prefix`` + its name)."""
    if not isinstance(body, dict):
        raise ApiError(422, prefix.rstrip(".") or None, f"{what} must be a JSON object, got {type(body).__name__}")
    unknown = sorted(str(key) for key in body if key not in fields)
    if unknown:
        raise ApiError(422, prefix + unknown[0], f"unknown field; valid: {sorted(fields)}")
    return body


def _text(body: dict, name: str, limits: LimitsConfig) -> str:
    if name not in body or body[name] is None:
        raise ApiError(422, name, "required for this kind")
    value = body[name]
    if not isinstance(value, str):
        raise ApiError(422, name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ApiError(422, name, "must not be empty")
    if len(value) > limits.max_text_chars:
        raise ApiError(413, name, f"longer than {limits.max_text_chars} characters")
    return value


def decode_upload(name: str, data: bytes, bands: list[str] | None, wanted: list[str],
                  limits: LimitsConfig) -> Image:
    """Decode once to check size and bands (the encoder decodes again with the recipe)."""
    if not data:
        raise ApiError(422, name, "empty image")
    try:
        array = decode_image(data)
    except ValueError as err:
        raise ApiError(422, name, f"undecodable image ({err})") from None
    except Exception as err:  # noqa: BLE001 - anything a decoder raises is the client's input
        raise ApiError(422, name, f"undecodable image ({type(err).__name__})") from None
    h, w, c = array.shape
    if h < 1 or w < 1:
        raise ApiError(422, name, f"image has no pixels ({h}x{w})")
    if max(h, w) > limits.max_image_side or h * w > limits.max_image_pixels:
        raise ApiError(413, name, f"image {w}x{h} exceeds the limit of "
                       f"{limits.max_image_side} px a side / {limits.max_image_pixels} pixels")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ApiError(422, name, f"unsupported pixel type {array.dtype}")
    if bands is not None:
        if len(bands) != c:
            raise ApiError(422, "bands", f"{len(bands)} band names for an image of {c} bands")
        missing = [b for b in wanted if b not in bands]
        if missing:
            raise ApiError(422, "bands", f"the model needs bands {missing}, not given")
    elif c != len(wanted):
        raise ApiError(422, name, f"image has {c} bands, the model expects {len(wanted)} "
                       f"({','.join(wanted)}); give 'bands' to select them by name")
    return Image(data=data, channels=c)


def _image(body: dict, name: str, bands: list[str] | None, wanted: list[str],
           limits: LimitsConfig) -> Image:
    if name not in body or body[name] is None:
        raise ApiError(422, name, "required for this kind")
    value = body[name]
    if isinstance(value, (bytes, bytearray)):  # multipart upload
        data = bytes(value)
    elif isinstance(value, str):
        if value.startswith("data:") and "," in value:  # a data URL from a browser
            value = value.split(",", 1)[1]
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, name, "not valid base64") from None
    else:
        raise ApiError(422, name, f"must be a base64 string, got {type(value).__name__}")
    return decode_upload(name, data, bands, wanted, limits)


def parse_search(body: Any, limits: LimitsConfig, default_k: int, wanted_bands: list[str],
                 available: set[str], default_lambda: float = 0.5) -> SearchRequest:
    """A validated search request; a composed query without ``lambda`` gets
    ``default_lambda`` (the recipe's ``eval.weicom_lambda``)."""
    check_object(body, SEARCH_FIELDS)
    kind = body.get("kind")
    if kind is None:
        raise ApiError(422, "kind", f"required; one of {list(KINDS)}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ApiError(422, "kind", f"unknown kind {kind!r}; one of {list(KINDS)}")
    target = body.get("target")
    if target is None:
        target = KIND_TARGETS[kind][0]
    if not isinstance(target, str) or target not in TARGETS:
        raise ApiError(422, "target", f"unknown target {target!r}; one of {list(TARGETS)}")
    if target not in KIND_TARGETS[kind]:
        raise ApiError(422, "target", f"kind {kind!r} searches {list(KIND_TARGETS[kind])}, "
                       f"not {target!r}")
    if target not in available:
        raise ApiError(404, "target", f"no {target!r} archive is loaded on this server")
    k = body.get("k", default_k)
    if isinstance(k, bool) or not isinstance(k, int):
        raise ApiError(422, "k", f"must be an integer, got {type(k).__name__}")
    if not 1 <= k <= limits.max_k:
        raise ApiError(422, "k", f"must lie in [1, {limits.max_k}], got {k}")
    rerank = body.get("rerank", False)
    if not isinstance(rerank, bool):
        raise ApiError(422, "rerank", f"must be a boolean, got {type(rerank).__name__}")
    if rerank and not ((kind == "text" and target in ("images", "pairs"))
                       or (kind in ("image", "image_pair") and target == "captions")):
        raise ApiError(422, "rerank", "only for cross-modal queries (text -> images/pairs, "
                       "image -> captions)")
    pool = {"text": "captions", "image": "images", "image_pair": "pairs"}.get(kind)
    if rerank and pool not in available:
        raise ApiError(422, "rerank", f"needs the {pool!r} archive, which is not loaded")
    lam = body.get("lambda", default_lambda)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ApiError(422, "lambda", "must be a number in [0, 1]")
    if not 0.0 <= lam <= 1.0:
        raise ApiError(422, "lambda", f"must lie in [0, 1], got {lam}")
    bands = body.get("bands")
    if bands is not None:
        if not isinstance(bands, list) or not all(isinstance(b, str) for b in bands) or not bands:
            raise ApiError(422, "bands", "must be a non-empty list of band names")
        if len(bands) > 64:
            raise ApiError(422, "bands", "at most 64 band names")
    flt = None
    if body.get("filter") is not None:
        try:
            flt = parse_filter(body["filter"])
        except FilterError as err:
            raise ApiError(422, err.field, err.message) from None
        flt = None if flt.empty else flt
    req = SearchRequest(kind=kind, target=target, k=k, lam=float(lam), rerank=rerank, bands=bands,
                        filter=flt)
    if kind in ("text", "composed"):
        req.text = _text(body, "text", limits)
    if kind in ("image", "image_pair", "composed"):
        req.image = _image(body, "image", bands, wanted_bands, limits)
    if kind == "image_pair":
        req.image_t2 = _image(body, "image_t2", bands, wanted_bands, limits)
    return req


EMBED_FIELDS = {"kind", "text", "image", "image_t2", "bands"}


def parse_embed(body: Any, limits: LimitsConfig, wanted_bands: list[str]) -> SearchRequest:
    """``/v1/embed``: one text, image or pair."""
    check_object(body, EMBED_FIELDS)
    kind = body.get("kind")
    if kind not in ("text", "image", "image_pair"):
        raise ApiError(422, "kind", f"unknown kind {kind!r}; one of ['text', 'image', 'image_pair']")
    bands = body.get("bands")
    if bands is not None and (not isinstance(bands, list) or not bands
                              or not all(isinstance(b, str) for b in bands)):
        raise ApiError(422, "bands", "must be a non-empty list of band names")
    req = SearchRequest(kind=kind, target="", k=1, bands=bands)
    if kind == "text":
        req.text = _text(body, "text", limits)
    else:
        req.image = _image(body, "image", bands, wanted_bands, limits)
        if kind == "image_pair":
            req.image_t2 = _image(body, "image_t2", bands, wanted_bands, limits)
    return req
