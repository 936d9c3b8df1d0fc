"""LEVIR-CC: bitemporal 256x256 pairs with five change captions each.

Published layout (github.com/Chen-Yang-Liu/LEVIR-CC-Dataset)::

    LevirCCcaptions.json            {"images": [{"filename", "filepath", "split",
                                      "sentences": [{"raw", "tokens"}, ...], "changeflag"}]}
    images/{train,val,test}/A/*.png   first date
    images/{train,val,test}/B/*.png   second date

``changed`` comes from ``changeflag``. A file without it (the captions rebuilt from the
released token files carry ``changeflag_inferred`` instead) uses ``changeflag_inferred``,
and one with neither uses :func:`~rsir.data.converters.base.infer_changed` on the captions.

``--translations LANG=PATH``: a JSON in the same layout (``images[].filename``,
``sentences[].raw`` in that language).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def change_flag(item: dict[str, Any], captions: list[bytes]) -> bool | None:
    """``changeflag``, else ``changeflag_inferred``, else the caption keyword rule."""
    for key in ("changeflag", "changeflag_inferred"):
        if item.get(key) is not None:
            return bool(int(item[key]))
    texts = [c.decode("utf-8", errors="replace") for c in captions]
    return infer_changed(texts) if texts else None


@CONVERTERS.register("levir-cc")
class LevirCC(Converter):
    name = "levir-cc"
    annotations = "LevirCCcaptions.json"

    def annotation_path(self) -> Path:
        path = self.src / self.annotations
        if not path.is_file():
            # The rebuilt captions keep the layout under another name.
            candidates = sorted(self.src.glob("LevirCCcaptions*.json"))
            if len(candidates) != 1:
                raise FileNotFoundError(f"{self.name}: no single LevirCCcaptions*.json in {self.src}")
            path = candidates[0]
        return path

    def caption_table(self, path: Path) -> CaptionTable:
        return karpathy_caption_table(path)

    def records(self) -> Iterator[Record]:
        root = self.image_dir or self.src / "images"
        for item in load_json_bytes(self.annotation_path())["images"]:
            filename = str(item.get("filename", ""))
            split = str(item.get("split", ""))
            folder = str(item.get("filepath") or split)
            captions = [caption_bytes(s.get("raw")) for s in item.get("sentences", [])]
            yield Record(
                id=f"{self.name}/{Path(filename).stem}",
                split=split,
                source=f"images/{folder}/A/{filename}",
                dates=[[root / folder / "A" / filename], [root / folder / "B" / filename]],
                captions=captions,
                changed=change_flag(item, captions),
                problems=[] if filename else ["annotation has no filename"],
                caption_key=filename,
            )
