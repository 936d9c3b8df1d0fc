"""Dubai-CCD: 500 Landsat 7 ETM+ pairs (2000 / 2010) of 50x50 tiles, five captions each.

Published layout (``datasetDubaiCCPublic``, as read by the authors' and follow-up code,
e.g. github.com/sundongwei/SFT_chag2cap ``utils/DubaiCC.py``)::

    description_jsontr_te_val/{Train,Validation,Test}_Dubai_CC.json
        {"images": [{"filename": "1x4.tif", "split", "sentences": [{"raw", "tokens"}]}]}
    imgs_tiles/RGB/500_2000/<tile>.tif    first date
    imgs_tiles/RGB/500_2010/<tile>.tif    second date

Every band set found under ``imgs_tiles/`` is kept: ``RGB`` gives R, G, B and a folder
of single-band tiles gives one band named after the folder (NIR, SWIR, MIR for the
six-band version), stacked in the order RGB, NIR, SWIR, MIR, then any other folder by
name. More than four bands are stored as ``.npy``. The released captions have no change
flag: ``changed`` follows :func:`~rsir.data.converters.base.infer_changed`.

``--translations LANG=PATH``: a folder with the three caption files in that language (or
one JSON listing every tile), matched by ``filename``. ``_meta/band_stats.json`` holds
the per-band mean and population std of the training pairs (both dates, the bands in
row order, integers scaled by their dtype's maximum as the models' input is), which
``data.normalization: archive`` recipes normalise with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rsir.data.converters.base import (
    CONVERTERS,
    CaptionTable,
    Converter,
    Record,
    caption_bytes,
    infer_changed,
    karpathy_caption_table,
    load_json_bytes,
)

BAND_SET_ORDER = ("RGB", "NIR", "SWIR", "MIR")
BAND_SET_BANDS = {"RGB": ("R", "G", "B")}
DATES = ("500_2000", "500_2010")
CAPTION_FILES = ("Train_Dubai_CC.json", "Validation_Dubai_CC.json", "Test_Dubai_CC.json")


@CONVERTERS.register("dubai-ccd")
class DubaiCCD(Converter):
    name = "dubai-ccd"
    caption_dir = "description_jsontr_te_val"
    band_stats_split = "train"

    def caption_table(self, path: Path) -> CaptionTable:
        return karpathy_caption_table(path)

    def band_sets(self, root: Path) -> list[str]:
        found = sorted(p.name for p in root.iterdir() if (p / DATES[0]).is_dir())
        if "RGB" not in found:
            raise FileNotFoundError(f"{self.name}: no {root}/RGB/{DATES[0]} folder")
        known = [b for b in BAND_SET_ORDER if b in found]
        return known + [b for b in found if b not in BAND_SET_ORDER]

    def records(self) -> Iterator[Record]:
        root = self.image_dir or self.src / "imgs_tiles"
        band_sets = self.band_sets(root)
        bands = [b for s in band_sets for b in BAND_SET_BANDS.get(s, (s,))]
        for caption_file in CAPTION_FILES:
            path = self.src / self.caption_dir / caption_file
            if not path.is_file():
                raise FileNotFoundError(f"{self.name}: caption file {path} is missing")
            for item in load_json_bytes(path)["images"]:
                filename = str(item.get("filename", ""))
                captions = [caption_bytes(s.get("raw")) for s in item.get("sentences", [])]
                texts = [c.decode("utf-8", errors="replace") for c in captions]
                yield Record(
                    id=f"{self.name}/{Path(filename).stem}",
                    split=str(item.get("split", "")),
                    source=f"imgs_tiles/RGB/{DATES[0]}/{filename}",
                    dates=[[root / s / d / filename for s in band_sets] for d in DATES],
                    captions=captions,
                    changed=infer_changed(texts) if texts else None,
                    bands=bands,
                    problems=[] if filename else ["annotation has no filename"],
                    caption_key=filename,
                )
