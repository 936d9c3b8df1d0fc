"""Dubai-CCD fixture: ``datasetDubaiCCPublic`` layout with six-band 50x50 tiles.

``make(root, shared)`` writes ``root/description_jsontr_te_val/*_Dubai_CC.json`` (the
first pairs of each real caption file in ``shared/captions/dubai_cc``) and the tiles
``root/imgs_tiles/{RGB,NIR,SWIR,MIR}/{500_2000,500_2010}/<tile>.tif``: RGB are 50x50
crops of the real Landsat GeoTIFF ``RGB.byte.tif``, NIR crops of band 4 of the real
``rgbn.tif``, SWIR and MIR seeded noise. Adds a missing band tile and a size mismatch.

    python tests/data/dubai_ccd/make_data.py OUT_DIR [SHARED_DATA_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tifffile

FILES = {"train": "Train_Dubai_CC.json", "val": "Validation_Dubai_CC.json", "test": "Test_Dubai_CC.json"}
TILE = 50


def make(root: Path, shared: Path, per_split: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rgb = tifffile.imread(shared / "images/multispectral/RGB.byte.tif")
    nir = tifffile.imread(shared / "images/multispectral/rgbn.tif")[:, :, 3]
    tiles: list[str] = []
    (root / "description_jsontr_te_val").mkdir(parents=True)
    for name in FILES.values():
        data = json.loads((shared / "captions/dubai_cc" / name).read_text())
        data["images"] = data["images"][:per_split + 1]  # the extra one becomes a bad record
        (root / "description_jsontr_te_val" / name).write_text(json.dumps(data))
        tiles.extend(item["filename"] for item in data["images"])
    for filename in tiles:
        for date in ("500_2000", "500_2010"):
            y = int(rng.integers(200, rgb.shape[0] - TILE))  # the scene's valid interior
            x = int(rng.integers(200, rgb.shape[1] - TILE))
            bands = {
                "RGB": rgb[y:y + TILE, x:x + TILE],
                "NIR": nir[y // 2:y // 2 + TILE, x // 2:x // 2 + TILE],
                "SWIR": rng.integers(0, 256, (TILE, TILE), dtype=np.uint8),
                "MIR": rng.integers(0, 256, (TILE, TILE), dtype=np.uint8),
            }
            for band, array in bands.items():
                path = root / "imgs_tiles" / band / date / filename
                path.parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(path, np.ascontiguousarray(array))
    train_bad = json.loads((root / "description_jsontr_te_val" / FILES["train"]).read_text())
    test_bad = json.loads((root / "description_jsontr_te_val" / FILES["test"]).read_text())
    missing = train_bad["images"][-1]["filename"]
    (root / "imgs_tiles/MIR/500_2010" / missing).unlink()
    smaller = test_bad["images"][-1]["filename"]
    tifffile.imwrite(root / "imgs_tiles/RGB/500_2010" / smaller,
                     rng.integers(0, 256, (TILE - 1, TILE, 3), dtype=np.uint8))
    bad = {
        f"dubai-ccd/{Path(missing).stem}": f"missing file: {missing}",
        f"dubai-ccd/{Path(smaller).stem}": f"band files differ in size: {smaller} is 50x50, expected 50x49",
    }
    good = [f"dubai-ccd/{Path(f).stem}" for f in tiles if f"dubai-ccd/{Path(f).stem}" not in bad]
    return {"good": good, "bad": bad}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shared = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parents[3].parent / "shared/data"
    print(json.dumps(make(out, shared), indent=1))
