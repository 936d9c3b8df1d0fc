""""precomp" fixture (AMFMN / GaLR layout) from the real caption files of one dataset.

``make(root, shared, dataset)`` (dataset: rsicd, rsitmd, ucm, sydney) copies the lines of
the first ``per_split`` images of ``shared/captions/precomp/data/<dataset>_precomp/
{train,test}_{caps,filename}.txt`` (keeping each file's own structure: one filename per
image in train, one per caption line in test) and writes an 8x8 image per filename into
``root/images/``. For RSITMD it also takes the first real training image whose five
caption lines are empty. Adds a corrupt image, a missing image and a non-UTF-8 caption.

    python tests/data/precomp/make_data.py OUT_DIR DATASET [SHARED_DATA_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PER_IMAGE = 5


def _groups(caps: list[bytes], names: list[str]) -> list[tuple[str, list[bytes], list[str]]]:
    """(filename, caption lines, filename lines) per image, in file order."""
    if len(caps) == len(names):
        out: list[tuple[str, list[bytes], list[str]]] = []
        for name, cap in zip(names, caps):
            if out and out[-1][0] == name:
                out[-1][1].append(cap)
                out[-1][2].append(name)
            else:
                out.append((name, [cap], [name]))
        return out
    return [(n, caps[PER_IMAGE * i:PER_IMAGE * (i + 1)], [n]) for i, n in enumerate(names)]


def write_image(path: Path, rng: np.random.Generator, size: int = 8) -> None:
    array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # format from the suffix: .jpg, .tif, ...


def make(root: Path, shared: Path, dataset: str, per_split: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    src = shared / "captions/precomp/data" / f"{dataset}_precomp"
    good: dict[str, tuple[str, int]] = {}
    bad: dict[str, str] = {}
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        caps = (src / f"{split}_caps.txt").read_bytes().splitlines()
        names = (src / f"{split}_filename.txt").read_text().splitlines()
        groups = _groups(caps, names)
        picked = groups[:per_split]
        if dataset == "rsitmd" and split == "train":
            picked.append(next(g for g in groups if not any(c.strip() for c in g[1])))
            bad[f"rsitmd/{Path(picked[-1][0]).stem}"] = "caption 0 is empty"
        cap_lines = [c for g in picked for c in g[1]]
        name_lines = [n for g in picked for n in g[2]]
        if split == "train":
            # Last picked good image: one caption gets a byte that is not UTF-8.
            cap_lines[PER_IMAGE * (per_split - 1)] = b"caf\xe9 " + cap_lines[PER_IMAGE * (per_split - 1)]
        (root / f"{split}_caps.txt").write_bytes(b"\n".join(cap_lines) + b"\n")
        (root / f"{split}_filename.txt").write_text("\n".join(name_lines) + "\n")
        for i, (name, group, _) in enumerate(picked):
            rid = f"{dataset}/{Path(name).stem}"
            if split == "train" and i == 0:
                (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
                (root / "images" / name).write_bytes(b"corrupt image bytes")
                bad[rid] = "undecodable image"
                continue
            if split == "test" and i == per_split - 1:
                bad[rid] = f"missing file: {name}"  # listed but never written
                continue
            write_image(root / "images" / name, rng)
            if split == "train" and i == per_split - 1:
                bad[rid] = "caption 0 is not valid UTF-8"
            elif rid not in bad:
                good[rid] = (split, len(group))
    return {"good": good, "bad": bad}


if __name__ == "__main__":
    out, dataset = Path(sys.argv[1]), sys.argv[2]
    shared = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parents[3].parent / "shared/data"
    print(json.dumps(make(out, shared, dataset), indent=1))
