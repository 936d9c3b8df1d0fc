"""The demo world: a seeded generator of remote-sensing-like scenes and bitemporal pairs.

Every scene is a terrain of one class (residential area, forest, parking lot, harbor,
sports complex) with placed objects whose category, colour, shape, count, density and
surroundings are recorded in ``objects``, ``class_name`` and ``attributes`` — the same
attributes PATTERNCOM forms composed queries from. Pairs add a second date with a change
(objects built / removed, a new road) or none (about half, as in LEVIR-CC). Each row has
five captions in each of English, Arabic, French and Italian (``rsir.data.demo_lexicon``)
naming what a model must see to retrieve the row.

Geography: the scenes are tiles of one mosaic in UTM zone 29N over the Tagus estuary
(Lisbon) at 10 m a pixel, a Sentinel-2 grid (:data:`REGION`): single scenes fill rows of
``REGION.columns`` tiles from the north-west corner, the pairs the block east of them. Each
row has its WGS84 ``bbox`` and ``footprint`` (through the GeoTIFF converter's
:func:`~rsir.data.converters.geotiff.window_footprint`), ``crs``, ``gsd_m``, a ``sensor``
(Sentinel-2A or 2B) and ``acquired``; a pair's second date is one to four years later.

Same seed, same world: every random draw comes from ``numpy.random.default_rng(seed)``
spawned per row, so rows do not depend on how many were generated before them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rsir.config import RecipeConfig
from rsir.data import demo_lexicon as lex
from rsir.data.schema import encode_image, make_row, write_shards

log = logging.getLogger(__name__)

# What the world's rows are: bump when a change alters them (a cached world is regenerated).
# 2: geography (footprints, dates, sensor).
WORLD_VERSION = 2

# class -> (main object, colours it comes in, ground colour)
CLASS_SPECS: dict[str, tuple[str, tuple[str, ...], tuple[int, int, int]]] = {
    "residential": ("building", ("red", "blue", "white", "gray"), (196, 184, 150)),
    "forest": ("tree", ("green", "yellow", "red"), (112, 92, 62)),
    "parking": ("car", ("red", "blue", "white", "yellow"), (92, 92, 98)),
    "harbor": ("boat", ("white", "red", "yellow"), (40, 86, 150)),
    "sports": ("court", ("green", "red", "blue"), (168, 168, 156)),
}
RGB = {
    "red": (200, 40, 35), "blue": (40, 80, 210), "white": (240, 240, 235),
    "gray": (120, 120, 125), "yellow": (230, 200, 40), "green": (40, 150, 50),
}
WATER, ROAD, POOL, GRASS_TREE = (40, 90, 170), (70, 70, 72), (60, 170, 230), (34, 110, 40)
QUANTITY_RANGE = {"one": (1, 1), "two": (2, 2), "several": (3, 5), "many": (6, 9)}
# object size in pixels at 64 px (height, width); scaled with the image size
SIZES = {"building": (7, 9), "tree": (5, 5), "car": (3, 5), "boat": (3, 7), "court": (8, 11),
         "pool": (4, 6)}
ATTRIBUTES = ("color", "shape", "quantity", "density", "existence", "context")


@dataclass(frozen=True)
class Obj:
    category: str
    color: str
    shape: str  # "rectangular" or "round"
    y: int  # top-left, pixels
    x: int
    h: int
    w: int

    def box(self, size: int) -> list[float]:
        return [self.x / size, self.y / size, (self.x + self.w) / size, (self.y + self.h) / size]

    def quadrant(self, size: int) -> str:
        cy, cx = self.y + self.h / 2, self.x + self.w / 2
        return ("top" if cy < size / 2 else "bottom") + " " + ("left" if cx < size / 2 else "right")


@dataclass(frozen=True)
class Scene:
    scene_class: str
    size: int
    color: str
    shape: str
    quantity: str
    density: str
    context: str  # water | trees | open
    road: bool  # the "existence" attribute
    road_pos: int
    road_vertical: bool
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    extras: tuple[Obj, ...] = field(default_factory=tuple)  # context trees, not counted
    noise_seed: int = 0

    @property
    def main(self) -> str:
        return CLASS_SPECS[self.scene_class][0]

    def attributes(self) -> dict[str, str]:
        return {"color": self.color, "shape": self.shape, "quantity": self.quantity,
                "density": self.density, "existence": "road" if self.road else "no road",
                "context": self.context}


# ---------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------


def _scaled(category: str, size: int) -> tuple[int, int]:
    h, w = SIZES[category]
    return max(2, round(h * size / 64)), max(2, round(w * size / 64))


def _free_mask(scene: Scene) -> np.ndarray:
    """Pixels where new objects may go: not water, road, or another object."""
    s = scene.size
    free = np.ones((s, s), bool)
    if scene.context == "water":
        free[:, : s // 4] = False
    if scene.road:
        lo, hi = scene.road_pos - s // 16 - 1, scene.road_pos + s // 16 + 1
        if scene.road_vertical:
            free[:, max(0, lo): hi] = False
        else:
            free[max(0, lo): hi, :] = False
    for o in scene.objects + scene.extras:
        free[max(0, o.y - 1): o.y + o.h + 1, max(0, o.x - 1): o.x + o.w + 1] = False
    return free


def _place(
    rng: np.random.Generator, scene: Scene, category: str, color: str, shape: str, n: int,
    region: tuple[int, int, int, int] | None = None, tries: int = 60,
) -> list[Obj]:
    """Place up to ``n`` non-overlapping objects inside ``region`` (y0, x0, y1, x1)."""
    s = scene.size
    h, w = _scaled(category, s)
    if rng.random() < 0.5 and category in ("car", "boat", "court"):
        h, w = w, h  # these objects lie either way
    y0, x0, y1, x1 = region or (1, 1, s - 1, s - 1)
    placed: list[Obj] = []
    for _ in range(n):
        free = _free_mask(replace(scene, objects=scene.objects + tuple(placed)))
        for _ in range(tries):
            y = int(rng.integers(y0, max(y0 + 1, y1 - h)))
            x = int(rng.integers(x0, max(x0 + 1, x1 - w)))
            if y + h <= s and x + w <= s and free[y: y + h, x: x + w].all():
                placed.append(Obj(category, color, shape, y, x, h, w))
                break
    return placed


def _quadrant_region(quadrant: str, size: int) -> tuple[int, int, int, int]:
    half = size // 2
    y0 = 1 if quadrant.startswith("top") else half
    x0 = 1 if quadrant.endswith("left") else half
    return y0, x0, y0 + half - 1, x0 + half - 1


def sample_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    scene_class = str(rng.choice(list(CLASS_SPECS)))
    main, colors, _ = CLASS_SPECS[scene_class]
    color = str(rng.choice(colors))
    shape = str(rng.choice(["rectangular", "round"])) if main == "building" else (
        "round" if main == "tree" else "rectangular")
    quantity = str(rng.choice(lex.QUANTITIES))
    density = str(rng.choice(["dense", "sparse"]))
    # harbors are on water already; their context is the shore or open water
    context = str(rng.choice(["water", "open"] if main == "tree" else ["water", "trees", "open"]))
    road = bool(rng.random() < 0.5) and scene_class != "harbor"
    scene = Scene(scene_class, size, color, shape, quantity, density, context, road,
                  road_pos=int(rng.integers(size // 4, 3 * size // 4)),
                  road_vertical=bool(rng.random() < 0.5), noise_seed=int(rng.integers(2**31)))
    if context == "trees" and main != "tree":
        extras = _place(rng, scene, "tree", "green", "round", int(rng.integers(4, 8)))
        scene = replace(scene, extras=tuple(extras))
    lo, hi = QUANTITY_RANGE[quantity]
    n = int(rng.integers(lo, hi + 1))
    region = None
    if density == "dense":
        span = max(size // 2, int(size * 0.6))
        y0, x0 = (int(v) for v in rng.integers(1, size - span, size=2))
        region = (y0, x0, y0 + span, x0 + span)
    objects = _place(rng, scene, main, color, shape, n, region)
    if len(objects) < n:  # a crowded region: fill the rest anywhere
        more = replace(scene, objects=tuple(objects))
        objects += _place(rng, more, main, color, shape, n - len(objects))
    if scene_class in ("residential", "sports") and rng.random() < 0.4:
        objects += _place(rng, replace(scene, objects=tuple(objects)), "pool", "blue",
                          "rectangular", 1)
    # The attribute describes what was placed (a crowded scene may hold fewer than drawn).
    placed = sum(o.category == main for o in objects)
    return replace(scene, objects=tuple(objects), quantity=quantity_class(placed))


def quantity_class(count: int) -> str:
    """The PATTERNCOM-style quantity attribute of an exact count."""
    return next(q for q, (lo, hi) in QUANTITY_RANGE.items() if lo <= count <= hi)


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def render(scene: Scene, brightness: float = 1.0) -> np.ndarray:
    """Draw the scene as an ``[H, W, 3]`` uint8 image."""
    s = scene.size
    rng = np.random.default_rng(scene.noise_seed)  # the same ground texture on both dates
    ground = np.array(CLASS_SPECS[scene.scene_class][2], np.float32)
    img = np.broadcast_to(ground, (s, s, 3)).copy()
    img += rng.normal(0, 7, (s, s, 1)).astype(np.float32)  # ground texture
    if scene.context == "water":
        img[:, : s // 4] = WATER
    if scene.road:
        lo, hi = scene.road_pos - s // 16, scene.road_pos + s // 16
        if scene.road_vertical:
            img[:, lo:hi] = ROAD
        else:
            img[lo:hi, :] = ROAD
    yy, xx = np.mgrid[0:s, 0:s]
    for o in scene.extras + scene.objects:
        color = POOL if o.category == "pool" else RGB[o.color]
        if o.category == "tree" and o.color == "green":
            color = GRASS_TREE
        if o.shape == "round":
            cy, cx = o.y + o.h / 2 - 0.5, o.x + o.w / 2 - 0.5
            r = min(o.h, o.w) / 2
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[mask] = color
        else:
            img[o.y: o.y + o.h, o.x: o.x + o.w] = color
            if o.category == "court":  # the net line
                if o.h > o.w:
                    img[o.y + o.h // 2, o.x: o.x + o.w] = (245, 245, 245)
                else:
                    img[o.y: o.y + o.h, o.x + o.w // 2] = (245, 245, 245)
            if o.category == "building":  # a roof ridge shadow
                img[o.y + o.h - 1, o.x: o.x + o.w] *= 0.6
    img *= brightness
    img += rng.normal(0, 3, img.shape).astype(np.float32)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Geography
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """The mosaic the world's tiles are cut from: a north-up grid in ``crs`` whose
    north-west corner is (``west``, ``north``) in metres, ``gsd_m`` metres a pixel."""

    crs: str = "EPSG:32629"  # WGS 84 / UTM zone 29N
    west: float = 460_000.0
    north: float = 4_320_000.0
    gsd_m: float = 10.0
    columns: int = 60  # tiles per row of each block (single scenes; pairs east of them)
    sensors: tuple[str, ...] = ("sentinel-2a", "sentinel-2b")


REGION = Region()
# Single scenes are acquired in [start, end); a pair's first date in [start, end) and its
# second one to four years later.
SINGLE_DATES = (datetime(2019, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 1, tzinfo=timezone.utc))
PAIR_T1_DATES = (datetime(2017, 7, 1, tzinfo=timezone.utc), datetime(2020, 7, 1, tzinfo=timezone.utc))
PAIR_GAP_DAYS = (365, 4 * 365)


@lru_cache(maxsize=None)
def _grid(region: Region) -> tuple[object, object]:
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    # north-up: x = west + col * gsd, y = north - row * gsd
    return CRS.from_string(region.crs), Affine(region.gsd_m, 0.0, region.west, 0.0, -region.gsd_m, region.north)


def tile_geography(row: int, col: int, size: int, region: Region = REGION) -> dict[str, Any]:
    """``bbox``, ``footprint`` (WKB), ``crs`` and ``gsd_m`` of the mosaic's tile (row, col)
    of ``size`` pixels, as the GeoTIFF converter computes them for a window."""
    from rasterio.windows import Window
    from shapely import to_wkb

    from rsir.data.converters.geotiff import crs_name, window_footprint

    crs, transform = _grid(region)
    bbox, outline = window_footprint(Window(col * size, row * size, size, size), transform, crs)
    return {"bbox": bbox, "footprint": to_wkb(outline), "crs": crs_name(crs), "gsd_m": region.gsd_m}


def _overpass(rng: np.random.Generator, start: datetime, end: datetime) -> datetime:
    """A day in [start, end) at a Sentinel-2 morning overpass over Portugal (about 11:20 UTC)."""
    day = int(rng.integers((end - start).days))
    return start + timedelta(days=day, hours=11, minutes=int(rng.integers(5, 35)))


def scene_geography(index: int, seed: int, size: int, region: Region = REGION) -> dict[str, Any]:
    """Where and when single scene ``index`` was taken (its own random stream: adding
    geography left the scenes' pixels and captions as they were)."""
    rng = np.random.default_rng([seed, 2, index])
    row, col = divmod(index, region.columns)
    return {**tile_geography(row, col, size, region), "sensor": str(rng.choice(region.sensors)),
            "acquired": _overpass(rng, *SINGLE_DATES)}


def pair_geography(index: int, seed: int, size: int, region: Region = REGION) -> dict[str, Any]:
    """Where and when pair ``index`` was taken: the block east of the single scenes; the
    second date one to four years after the first (the first date's sensor)."""
    rng = np.random.default_rng([seed, 3, index])
    row, col = divmod(index, region.columns)
    t1 = _overpass(rng, *PAIR_T1_DATES)
    gap = timedelta(days=int(rng.integers(PAIR_GAP_DAYS[0], PAIR_GAP_DAYS[1] + 1)),
                    minutes=int(rng.integers(-15, 16)))
    return {**tile_geography(row, col + region.columns, size, region),
            "sensor": str(rng.choice(region.sensors)), "acquired": t1, "acquired_t2": t1 + gap}


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


def _captions(per_lang: dict[str, list[str]]) -> list[dict[str, str]]:
    return [{"text": t, "lang": lang} for lang in lex.LANGS for t in per_lang[lang]]


def _objects(scene: Scene) -> list[dict[str, Any]]:
    return [{"box": o.box(scene.size), "category": o.category, "score": 1.0}
            for o in scene.objects + scene.extras]


def _scene_captions(scene: Scene) -> dict[str, list[str]]:
    adjectives = (scene.color, scene.shape) if scene.main == "building" else (scene.color,)
    return {lang: lex.scene_captions(lang, scene.scene_class, scene.main, scene.quantity,
                                     adjectives, scene.context, scene.road, scene.density)
            for lang in lex.LANGS}


def scene_row(index: int, seed: int, split: str, size: int = 64) -> dict[str, Any]:
    """Single-date scene number ``index`` of world ``seed``."""
    rng = np.random.default_rng([seed, 0, index])
    scene = sample_scene(rng, size)
    return make_row(
        id=f"scene-{index:06d}", split=split, image=encode_image(render(scene)),
        bands=("R", "G", "B"), captions=_captions(_scene_captions(scene)), class_name=scene.scene_class,
        attributes=scene.attributes(), objects=_objects(scene), source="demo_world",
        **scene_geography(index, seed, size),
    )


# colours an object added by a change may have (one colour: not named in captions)
CATEGORY_COLORS = {"building": CLASS_SPECS["residential"][1], "court": CLASS_SPECS["sports"][1],
                   "boat": CLASS_SPECS["harbor"][1], "tree": ("green",), "pool": ("blue",)}
CHANGEABLE = {"residential": ("building", "tree", "pool"), "forest": ("tree",),
              "parking": ("tree",), "harbor": ("boat",), "sports": ("court", "tree", "pool")}


def _change(rng: np.random.Generator, scene: Scene) -> tuple[Scene, dict[str, str], dict]:
    """Apply one change to ``scene``: returns date 2, the change attributes, captions."""
    options = []
    if not scene.road and scene.scene_class != "harbor":
        options.append(("road", None))
    for cat in CHANGEABLE[scene.scene_class]:
        options.append(("added", cat))
        if any(o.category == cat for o in scene.objects + scene.extras):
            options.append(("removed", cat))
    for i in rng.permutation(len(options)):
        result = _apply_change(rng, scene, *options[i])
        if result is not None:
            return result
    raise RuntimeError("no change fits this scene")


def _apply_change(
    rng: np.random.Generator, scene: Scene, op: str, cat: str | None
) -> tuple[Scene, dict[str, str], dict] | None:
    """One change of kind ``op`` on ``cat``, or None when the scene has no room for it."""
    s = scene.size
    if op == "road":
        vertical = bool(rng.random() < 0.5)
        pos = int(rng.integers(s // 4, 3 * s // 4))
        lo, hi = pos - s // 16 - 1, pos + s // 16 + 1
        keep = tuple(o for o in scene.objects
                     if not ((vertical and o.x < hi and o.x + o.w > lo)
                             or (not vertical and o.y < hi and o.y + o.h > lo)))
        t2 = replace(scene, road=True, road_pos=pos, road_vertical=vertical, objects=keep)
        return t2, {"change": "road", "category": "road", "count": "one", "location": "all"}, {
            lang: lex.road_captions(lang, scene.scene_class) for lang in lex.LANGS}
    quantity = str(rng.choice(["one", "two", "several"]))
    color = str(rng.choice(CATEGORY_COLORS[cat]))
    shape = "round" if cat == "tree" else "rectangular"
    lo, hi = QUANTITY_RANGE[quantity]
    n = int(rng.integers(lo, hi + 1))
    if op == "added":
        quadrant = str(rng.choice(list(lex.LOCATIONS)))
        new = _place(rng, scene, cat, color, shape, n, _quadrant_region(quadrant, s))
        if not new:  # the quadrant is full: anywhere will do
            new = _place(rng, scene, cat, color, shape, n)
            quadrant = new[0].quadrant(s) if new else quadrant
        t2 = replace(scene, objects=scene.objects + tuple(new))
        changed = new
    else:
        pool = [o for o in scene.objects + scene.extras if o.category == cat]
        quadrant = pool[int(rng.integers(len(pool)))].quadrant(s)
        candidates = [o for o in pool if o.quadrant(s) == quadrant]
        changed = candidates[: max(1, min(n, len(candidates)))]
        t2 = replace(scene, objects=tuple(o for o in scene.objects if o not in changed),
                     extras=tuple(o for o in scene.extras if o not in changed))
    if not changed:
        return None
    count = len(changed)
    color = changed[0].color if changed else color
    adjectives = (color,) if len(CATEGORY_COLORS[cat]) > 1 else ()
    quantity = quantity_class(count)
    captions = {lang: lex.change_captions(lang, op, cat, quantity, adjectives, quadrant,
                                          scene.scene_class)
                for lang in lex.LANGS}
    return t2, {"change": op, "category": cat, "count": str(count), "location": quadrant,
                "color": color}, captions


def vocabulary_queries(lang: str = "en") -> list[dict[str, str]]:
    """The queries a person would type for every (scene class, object colour) the world
    describes: "several red buildings in a residential area" and "three red buildings next
    to a road" (harbors have no roads: "near water"), in ``lang``."""
    out = []
    for scene_class, (main, colors, _) in CLASS_SPECS.items():
        where = lex.ROAD[True][lang] if scene_class != "harbor" else lex.CONTEXTS["water"][lang]
        for color in colors:
            for text in (f"{lex.noun_phrase(lang, main, 'several', color)} {lex.in_scene(lang, scene_class)}",
                         f"{lex.noun_phrase(lang, main, 3, color)} {where}"):
                out.append({"class_name": scene_class, "color": color, "text": text})
    return out


def pair_row(index: int, seed: int, split: str, size: int = 64) -> dict[str, Any]:
    """Bitemporal pair number ``index`` of world ``seed``: changed about half the time."""
    rng = np.random.default_rng([seed, 1, index])
    scene = sample_scene(rng, size)
    changed = bool(rng.random() < 0.5)
    if changed:
        t2, change_attrs, captions = _change(rng, scene)
    else:
        t2, change_attrs = scene, {"change": "none"}
        captions = {lang: lex.no_change_captions(lang, caps)
                    for lang, caps in _scene_captions(scene).items()}
    b1, b2 = rng.uniform(0.92, 1.08, size=2)  # illumination differs between dates
    return make_row(
        id=f"pair-{index:06d}", split=split, image=encode_image(render(scene, b1)),
        image_t2=encode_image(render(t2, b2)), bands=("R", "G", "B"),
        captions=_captions(captions), changed=changed, class_name=scene.scene_class,
        attributes={**scene.attributes(), **change_attrs}, objects=_objects(scene),
        source="demo_world", **pair_geography(index, seed, size),
    )


def assign_split(index: int, n: int, val_fraction: float, test_fraction: float) -> str:
    """Contiguous splits by index: train first, then val, then test."""
    if index < n * (1 - val_fraction - test_fraction):
        return "train"
    return "val" if index < n * (1 - test_fraction) else "test"


def generate(
    out_dir: str | Path,
    n_scenes: int,
    n_pairs: int,
    seed: int = 0,
    size: int = 64,
    val_fraction: float = 0.1,
    test_fraction: float = 0.25,
    max_bytes: int = 16 * 2**20,
) -> dict[str, list[Path]]:
    """Write the world as shards: ``out_dir/single/`` and ``out_dir/pairs/``."""
    from tqdm import tqdm

    out = Path(out_dir)

    def rows(make, n, desc):
        for i in tqdm(range(n), desc=desc, unit="row", mininterval=2, leave=False):
            yield make(i, seed, assign_split(i, n, val_fraction, test_fraction), size)

    paths = {
        "single": write_shards(rows(scene_row, n_scenes, "scenes"), out / "single",
                               max_bytes=max_bytes),
        "pairs": write_shards(rows(pair_row, n_pairs, "pairs"), out / "pairs",
                              max_bytes=max_bytes),
    }
    log.info("demo world: %d scenes, %d pairs -> %s", n_scenes, n_pairs, out)
    return paths


def cli_main(args: argparse.Namespace) -> int:
    pairs = args.n if args.pairs is None else args.pairs
    paths = generate(args.out, args.n, pairs, seed=args.seed, size=args.size)
    print(f"wrote {args.n} scenes in {len(paths['single'])} shard(s) and {pairs} pairs in "
          f"{len(paths['pairs'])} shard(s) under {args.out}")
    return 0


def ensure_world(cfg: RecipeConfig, shards_root: Path) -> None:
    """Generate the world once; a finished world (marked ``_SUCCESS``) is reused."""
    marker = shards_root / "_SUCCESS"
    wanted = json.dumps({"version": WORLD_VERSION, "n_scenes": cfg.demo.n_scenes, "n_pairs": cfg.demo.n_pairs,
                         "seed": cfg.demo.seed, "size": cfg.demo.image_size,
                         "val": cfg.demo.val_fraction, "test": cfg.demo.test_fraction})
    if marker.exists() and marker.read_text() == wanted:
        log.info("reusing the demo world in %s", shards_root)
        return
    shutil.rmtree(shards_root, ignore_errors=True)
    generate(shards_root, cfg.demo.n_scenes, cfg.demo.n_pairs, seed=cfg.demo.seed,
             size=cfg.demo.image_size, val_fraction=cfg.demo.val_fraction,
             test_fraction=cfg.demo.test_fraction)
    marker.write_text(wanted)
