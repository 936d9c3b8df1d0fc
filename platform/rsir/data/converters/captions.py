"""Single-image caption datasets: RSICD, UCM-captions, Sydney-captions, RSITMD.

Two published layouts per dataset:

* Karpathy-style JSON (as released by the dataset authors)::

      dataset_*.json     {"images": [{"filename", "split", "sentences": [{"raw", "tokens"}],
                                      "keywords": [...]   (RSITMD only)}]}
      <image folder>/<filename>   RSICD_images/ (RSICD), imgs/ (UCM, Sydney), images/ (RSITMD)

* "precomp", as AMFMN and GaLR distribute them (github.com/xiaoyuan1996/AMFMN)::

      {split}_caps.txt       one caption per line
      {split}_filename.txt   the image of each line, or of each 5 lines
      images/<filename>      (or ``--image-dir``)

  In the released files ``train_filename.txt`` lists each image once for its 5 caption
  lines while ``test_filename.txt`` repeats it on every line; both are read. Splits are
  the ``{split}`` prefixes found; Sydney's ``*_verify.txt`` re-split is not read.

``--translations LANG=PATH`` reads another language's captions in the same layout: for
the JSON, a ``dataset_*.json`` with the same ``images[].filename`` and the sentences
translated (or a folder of such files); for precomp, a folder of ``{split}_caps.txt``,
grouped by the folder's own ``{split}_filename.txt`` when it has one, else by the
English ``{split}_filename.txt`` (then the line counts must agree).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from rsir.data.converters.base import (
    CONVERTERS,
    CaptionTable,
    Converter,
    Record,
    caption_bytes,
    karpathy_caption_table,
    load_json_bytes,
)

CAPTIONS_PER_IMAGE = 5


class KarpathyCaptions(Converter):
    """A ``dataset_*.json`` (one per dataset directory) plus its image folder."""

    id_prefix: ClassVar[str]
    image_folder: ClassVar[str]

    def annotation_path(self) -> Path:
        candidates = sorted(self.src.glob("dataset*.json"))
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"{self.name}: expected one dataset*.json in {self.src}, found "
                f"{[p.name for p in candidates] or 'none'}"
            )
        return candidates[0]

    def attributes(self, item: dict) -> dict[str, str]:
        return {}

    def caption_table(self, path: Path) -> CaptionTable:
        return karpathy_caption_table(path)

    def records(self) -> Iterator[Record]:
        root = self.image_dir or self.src / self.image_folder
        for item in load_json_bytes(self.annotation_path())["images"]:
            filename = str(item.get("filename", ""))
            yield Record(
                id=f"{self.id_prefix}/{Path(filename).stem}",
                split=str(item.get("split", "")),
                source=f"{root.name}/{filename}",
                dates=[[root / filename]],
                captions=[caption_bytes(s.get("raw")) for s in item.get("sentences", [])],
                attributes=self.attributes(item),
                problems=[] if filename else ["annotation has no filename"],
                caption_key=filename,
            )


@CONVERTERS.register("rsicd")
class RSICD(KarpathyCaptions):
    name = "rsicd"
    id_prefix = "rsicd"
    image_folder = "RSICD_images"


@CONVERTERS.register("ucm-captions")
class UCMCaptions(KarpathyCaptions):
    name = "ucm-captions"
    id_prefix = "ucm"
    image_folder = "imgs"


@CONVERTERS.register("sydney-captions")
class SydneyCaptions(KarpathyCaptions):
    name = "sydney-captions"
    id_prefix = "sydney"
    image_folder = "imgs"


@CONVERTERS.register("rsitmd")
class RSITMD(KarpathyCaptions):
    name = "rsitmd"
    id_prefix = "rsitmd"
    image_folder = "images"

    def attributes(self, item: dict) -> dict[str, str]:
        # RSITMD's per-image keywords, joined so they fit the string map.
        keywords = [str(k).strip() for k in item.get("keywords") or [] if str(k).strip()]
        return {"keywords": ", ".join(keywords)} if keywords else {}


class Precomp(Converter):
    """``{split}_caps.txt`` + ``{split}_filename.txt`` (AMFMN / GaLR) plus an image folder."""

    id_prefix: ClassVar[str]

    def split_files(self) -> list[tuple[str, Path, Path]]:
        found = []
        for caps in sorted(self.src.glob("*_caps.txt")):
            split = caps.name[: -len("_caps.txt")]
            names = self.src / f"{split}_filename.txt"
            if not names.is_file():
                raise FileNotFoundError(f"{self.name}: {caps.name} has no {names.name}")
            found.append((split, caps, names))
        if not found:
            raise FileNotFoundError(f"{self.name}: no *_caps.txt in {self.src}")
        return found

    def groups(self, caps_path: Path, names_path: Path) -> list[tuple[str, list[bytes]]]:
        """(filename, caption lines) per image of one split, in file order."""
        caps = caps_path.read_bytes().splitlines()
        names = [n.decode("utf-8", errors="replace").strip()
                 for n in names_path.read_bytes().splitlines()]
        if len(caps) == len(names):
            # One filename per caption line: consecutive equal names are one image.
            groups: list[tuple[str, list[bytes]]] = []
            for name, cap in zip(names, caps):
                if groups and groups[-1][0] == name:
                    groups[-1][1].append(cap)
                else:
                    groups.append((name, [cap]))
            return groups
        if len(caps) == CAPTIONS_PER_IMAGE * len(names):
            return [(name, caps[CAPTIONS_PER_IMAGE * i: CAPTIONS_PER_IMAGE * (i + 1)])
                    for i, name in enumerate(names)]
        raise ValueError(
            f"{self.name}: {caps_path} has {len(caps)} lines but {names_path} has "
            f"{len(names)} (expected equal, or 1 per {CAPTIONS_PER_IMAGE} captions)"
        )

    def records(self) -> Iterator[Record]:
        root = self.image_dir or self.src / "images"
        for split, caps_path, names_path in self.split_files():
            for name, group in self.groups(caps_path, names_path):
                yield Record(
                    id=f"{self.id_prefix}/{Path(name).stem}",
                    split=split,
                    source=f"{names_path.name}:{name}",
                    dates=[[root / name]],
                    captions=[caption_bytes(c) for c in group],
                    problems=[] if name else ["empty filename line"],
                    caption_key=f"{split}/{name}",
                )

    def caption_table(self, path: Path) -> CaptionTable:
        if not path.is_dir():
            raise NotADirectoryError(f"{self.name}: a precomp translation is a folder of "
                                     f"{{split}}_caps.txt files, not {path}")
        table: CaptionTable = {}
        for split, _, english_names in self.split_files():
            caps_path = path / f"{split}_caps.txt"
            if not caps_path.is_file():
                continue  # its records are quarantined as missing from the translation
            names_path = path / f"{split}_filename.txt"
            for name, group in self.groups(caps_path, names_path if names_path.is_file() else english_names):
                table[f"{split}/{name}"] = ([caption_bytes(c) for c in group], str(caps_path))
        return table


@CONVERTERS.register("rsicd-precomp")
class RSICDPrecomp(Precomp):
    name = "rsicd-precomp"
    id_prefix = "rsicd"


@CONVERTERS.register("rsitmd-precomp")
class RSITMDPrecomp(Precomp):
    name = "rsitmd-precomp"
    id_prefix = "rsitmd"


@CONVERTERS.register("ucm-precomp")
class UCMPrecomp(Precomp):
    name = "ucm-precomp"
    id_prefix = "ucm"


@CONVERTERS.register("sydney-precomp")
class SydneyPrecomp(Precomp):
    name = "sydney-precomp"
    id_prefix = "sydney"
