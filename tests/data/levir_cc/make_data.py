"""LEVIR-CC fixture in its published layout, from the real (rebuilt) captions file.

``make(root, shared)`` writes ``root/LevirCCcaptions.json`` (a subset of
``shared/captions/levir_cc/LevirCCcaptions.reconstructed.json``, which has
``changeflag_inferred`` and no ``changeflag``) and ``root/images/{split}/{A,B}/*.png``
copied from the real LEVIR-CD sample pairs in ``shared/images/levircd_dsifn_samples``.
It adds one bad record of each kind and returns what a converter must find.

    python tests/data/levir_cc/make_data.py OUT_DIR [SHARED_DATA_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

SAMPLES = "images/levircd_dsifn_samples/samples_LEVIR"
MISMATCHED = "test_113_0256.png"  # the real sample whose A is 768x384 and B 768x383


def make(root: Path, shared: Path, per_split: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    captions = json.loads((shared / "captions/levir_cc/LevirCCcaptions.reconstructed.json").read_text())
    samples = sorted(p.name for p in (shared / SAMPLES / "A").glob("*.png") if p.name != MISMATCHED)
    chosen = []
    for split in ("train", "val", "test"):
        items = [im for im in captions["images"] if im["split"] == split]
        # One changed and one unchanged pair per split, picked by the seed.
        for flag in (0, 1)[:per_split]:
            pool = [im for im in items if im["changeflag_inferred"] == flag]
            chosen.append(dict(pool[int(rng.integers(len(pool)))]))
    for i, item in enumerate(chosen):
        sample = samples[i % len(samples)]
        for date in ("A", "B"):
            dst = root / "images" / item["split"] / date / item["filename"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / SAMPLES / date / sample, dst)
    good = {f"levir-cc/{Path(im['filename']).stem}": bool(im["changeflag_inferred"]) for im in chosen}

    def bad_item(name: str, split: str, raws: list[str]) -> dict:
        return {"filename": name, "split": split,
                "sentences": [{"raw": r, "tokens": r.split()} for r in raws]}

    def write_pair(item: dict, a: bytes | Path, b: bytes | Path) -> None:
        for date, content in (("A", a), ("B", b)):
            dst = root / "images" / item["split"] / date / item["filename"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, dst)
            else:
                dst.write_bytes(content)

    real_a, real_b = shared / SAMPLES / "A" / samples[0], shared / SAMPLES / "B" / samples[0]
    change = ["many houses are built along the road"] * 5
    # A pair without any change flag: the caption keyword rule decides (unchanged here).
    no_flag = bad_item("val_900001.png", "val", ["there is no difference"] * 4 + ["a road appears"])
    write_pair(no_flag, real_a, real_b)
    good["levir-cc/val_900001"] = False
    corrupt = bad_item("train_900001.png", "train", change)
    write_pair(corrupt, real_a, b"\x89PNG\r\n\x1a\n not really a png")
    mismatched = bad_item("test_900002.png", "test", change)
    write_pair(mismatched, shared / SAMPLES / "A" / MISMATCHED, shared / SAMPLES / "B" / MISMATCHED)
    empty = bad_item("train_900003.png", "train", change[:4] + ["  "])
    write_pair(empty, real_a, real_b)
    non_utf8 = bad_item("train_900004.png", "train", change[:4] + ["NONUTF8"])
    write_pair(non_utf8, real_a, real_b)
    unknown = bad_item("trainval_900005.png", "trainval", change)
    write_pair(unknown, real_a, real_b)
    missing = bad_item("test_900006.png", "test", change)  # no image files written
    for item in (corrupt, mismatched, empty, non_utf8, unknown):
        item["changeflag_inferred"] = 1
    missing["changeflag_inferred"] = 1
    data = {"dataset": "LEVIR-CC", "images": chosen + [no_flag, corrupt, mismatched, empty,
                                                       non_utf8, unknown, missing]}
    text = json.dumps(data, indent=1).encode()
    (root / "LevirCCcaptions.json").write_bytes(text.replace(b"NONUTF8", b"caf\xe9 built"))
    return {
        "good": good,
        "bad": {
            "levir-cc/train_900001": "undecodable image",
            "levir-cc/test_900002": "dates differ in size: 768x384x3 vs 768x383x3",
            "levir-cc/train_900003": "caption 4 is empty",
            "levir-cc/train_900004": "caption 4 is not valid UTF-8",
            "levir-cc/trainval_900005": "unknown split 'trainval'",
            "levir-cc/test_900006": "missing file: test_900006.png",
        },
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shared = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parents[3].parent / "shared/data"
    print(json.dumps(make(out, shared), indent=1))
