"""Karpathy-style fixture (``dataset_*.json`` + image folder) for RSICD, UCM, Sydney, RSITMD.

The datasets' JSON files are not in the shared data, so ``make(root, dataset, captions)``
writes one in their published format (``images[].filename/split/sentences[].raw,tokens``,
plus ``keywords`` for RSITMD) from the caption texts given, with 8x8 images in the
dataset's image folder. Adds an unknown split, an empty caption and a missing image.

    python tests/data/karpathy/make_data.py OUT_DIR DATASET
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUT = {  # dataset -> (annotation file, image folder, image suffix, id prefix)
    "rsicd": ("dataset_rsicd.json", "RSICD_images", ".jpg", "rsicd"),
    "ucm-captions": ("dataset.json", "imgs", ".tif", "ucm"),
    "sydney-captions": ("dataset.json", "imgs", ".tif", "sydney"),
    "rsitmd": ("dataset_RSITMD.json", "images", ".tif", "rsitmd"),
}
DEFAULT_CAPTIONS = [
    "many planes are parked next to a long building in an airport .",
    "a residential area with houses arranged neatly .",
    "there is a piece of farmland .",
    "a green baseball field is next to the red track .",
]


def make(root: Path, dataset: str, captions: list[str] = DEFAULT_CAPTIONS, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    annotation, folder, suffix, prefix = LAYOUT[dataset]
    images, good, bad = [], {}, {}
    splits = ["train", "train", "val", "test", "dev", "test", "train"]
    for i, split in enumerate(splits):
        name = f"scene_{i}{suffix}"
        sentences = [captions[(i + j) % len(captions)] for j in range(5)]
        if i == 5:
            sentences[2] = ""
        item = {"filename": name, "imgid": i, "split": split, "sentids": list(range(5 * i, 5 * i + 5)),
                "sentences": [{"raw": s, "tokens": s.split(), "imgid": i, "sentid": 5 * i + j}
                              for j, s in enumerate(sentences)]}
        if dataset == "rsitmd":
            item["keywords"] = ["scene", f"keyword{i}"]
        images.append(item)
        rid = f"{prefix}/scene_{i}"
        if i != 6:  # scene_6 is listed but has no image
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        if split == "dev":
            bad[rid] = "unknown split 'dev'"
        elif i == 5:
            bad[rid] = "caption 2 is empty"
        elif i == 6:
            bad[rid] = f"missing file: {name}"
        else:
            good[rid] = split
    (root / annotation).write_text(json.dumps({"images": images, "dataset": prefix}))
    return {"good": good, "bad": bad}


if __name__ == "__main__":
    print(json.dumps(make(Path(sys.argv[1]), sys.argv[2]), indent=1))
