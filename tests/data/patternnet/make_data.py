"""PatternNet + PATTERNCOM fixture in the layout of github.com/billpsomas/rscir.

``make(root)`` writes ``root/images/<class>/<class-without-underscores><NNN>.jpg``
(8x8) and ``root/PatternCom/{color,shape,density}.csv`` (rows: file, attribute, value; no
header). ``dense_residential`` and ``sparse_residential`` are one class for relevance
(every attribute), but one query group only for density (the authors'
``fix_query_attributelabels``): their colour and shape values form no cross-class query.
Adds a corrupt JPEG (annotated, so its PATTERNCOM row is quarantined too) and a
PATTERNCOM row naming a file that does not exist.

    python tests/data/patternnet/make_data.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "dense_residential", "sparse_residential", "parking_lot")
PER_CLASS = 4
COLOR = {  # file -> value
    "airplane001.jpg": "white", "airplane002.jpg": "white", "airplane003.jpg": "gray",
    "denseresidential001.jpg": "red", "denseresidential002.jpg": "blue",
    "sparseresidential001.jpg": "red", "sparseresidential002.jpg": "red",
    "parkinglot001.jpg": "white",  # the only colour annotation of its class: no query
    "parkinglot004.jpg": "gray",  # corrupt image
}
SHAPE = {"airplane001.jpg": "swept", "airplane004.jpg": "straight",
         "denseresidential003.jpg": "rectangular", "sparseresidential003.jpg": "square"}
DENSITY = {"denseresidential004.jpg": "dense", "sparseresidential004.jpg": "sparse"}


def make(root: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        for i in range(1, PER_CLASS + 1):
            path = root / "images" / cls / f"{cls.replace('_', '')}{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    (root / "images/parking_lot/parkinglot004.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (root / "PatternCom").mkdir()
    rows = [f"{f},color,{v}" for f, v in COLOR.items()] + ["airplane099.jpg,color,white"]
    (root / "PatternCom/color.csv").write_text("\n".join(rows) + "\n")
    (root / "PatternCom/shape.csv").write_text("\n".join(f"{f},shape,{v}" for f, v in SHAPE.items()) + "\n")
    (root / "PatternCom/density.csv").write_text(
        "\n".join(f"{f},density,{v}" for f, v in DENSITY.items()) + "\n")
    return {
        "n_images": len(CLASSES) * PER_CLASS - 1,
        "bad": {
            "patternnet/parkinglot004": "undecodable image",
            "patterncom/color/parkinglot004.jpg": "query image parkinglot004.jpg is missing or quarantined",
            "patterncom/color/airplane099.jpg": "query image airplane099.jpg is missing or quarantined",
        },
        # (attribute, query file, text) -> positive files, worked out by hand. Colour:
        # the group "color + sparseresidential" holds only "red", so sparse residential
        # images make no colour query, while a dense residential "red" query finds them.
        # Shape: dense and sparse residential are separate groups of one value each.
        "queries": {
            ("color", "airplane001.jpg", "gray"): ["airplane003"],
            ("color", "airplane002.jpg", "gray"): ["airplane003"],
            ("color", "airplane003.jpg", "white"): ["airplane001", "airplane002"],
            ("color", "denseresidential001.jpg", "blue"): ["denseresidential002"],
            ("color", "denseresidential002.jpg", "red"):
                ["denseresidential001", "sparseresidential001", "sparseresidential002"],
            ("density", "denseresidential004.jpg", "sparse"): ["sparseresidential004"],
            ("density", "sparseresidential004.jpg", "dense"): ["denseresidential004"],
            ("shape", "airplane001.jpg", "straight"): ["airplane004"],
            ("shape", "airplane004.jpg", "swept"): ["airplane001"],
        },
    }


if __name__ == "__main__":
    expected = make(Path(sys.argv[1]))
    expected["queries"] = {"/".join(k): v for k, v in expected["queries"].items()}
    print(json.dumps(expected, indent=1))
