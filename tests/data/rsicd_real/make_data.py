"""RSICD-layout fixture on real images, with hand-written translations and object labels.

``make(root, shared)`` writes, under ``root``:

* ``rsicd/dataset_rsicd.json`` + ``rsicd/RSICD_images/*.png``: five real images (LEVIR-CD
  and DSIFN samples from ``shared/images/levircd_dsifn_samples``, one of them the 768x384
  RGBA LEVIR tile), two English captions each (one with a decomposed "é").
* ``translations/{ar,fr,it}.json``: the captions translated by hand, in the same layout.
  French is written decomposed (NFD) throughout; one Arabic word carries its shadda
  before its fatha (NFC puts the fatha first). ``dsifn_0_2.png`` is missing from the
  Italian file; ``dsifn_1_1.png`` has one Arabic sentence instead of two.
* ``labelTxt/*.txt``: DOTA label files (header lines, 9- and 10-field lines); none for
  ``dsifn_0_2``; a vertex outside the image in ``dsifn_1_1.txt`` line 4; 8 fields in
  ``dsifn_2_4.txt`` line 1.
* ``coco.json``: COCO-detection boxes for two images (scores, a category name with a
  space), and a wrong size for ``dsifn_1_1.png``.

``CAPTIONS`` holds every caption as it must be stored (NFC), by language and image.

    python tests/data/rsicd_real/make_data.py OUT_DIR [SHARED_DATA_DIR]
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

from PIL import Image

SAMPLES = "images/levircd_dsifn_samples"
IMAGES = {  # fixture file name -> (real sample, split)
    "levir_test_102.png": ("samples_LEVIR/A/test_102_0512_0000.png", "train"),
    "levir_test_113.png": ("samples_LEVIR/A/test_113_0256.png", "train"),  # 768x384 RGBA
    "dsifn_0_2.png": ("samples_DSIFN/A/0_2.png", "val"),
    "dsifn_1_1.png": ("samples_DSIFN/A/1_1.png", "test"),
    "dsifn_2_4.png": ("samples_DSIFN/A/2_4.png", "test"),
}
CAPTIONS = {
    "en": {
        "levir_test_102.png": ["many houses are arranged in rows beside a road .",
                               "a residential area with green trees and a straight road ."],
        "levir_test_113.png": ["a bare field lies next to a few buildings .",
                               "a parking lot beside a café ."],
        "dsifn_0_2.png": ["dense buildings surround a large green park .",
                          "several roads cross a crowded district ."],
        "dsifn_1_1.png": ["farmland with a few scattered houses .",
                          "a river flows past the fields ."],
        "dsifn_2_4.png": ["a wide highway passes between industrial buildings .",
                          "trucks are parked in a large yard ."],
    },
    "fr": {
        "levir_test_102.png": ["de nombreuses maisons sont alignées le long d'une route .",
                               "une zone résidentielle avec des arbres verts et une route droite ."],
        "levir_test_113.png": ["un terrain nu se trouve à côté de quelques bâtiments .",
                               "un parking à côté d'un café ."],
        "dsifn_0_2.png": ["des bâtiments denses entourent un grand parc vert .",
                          "plusieurs routes traversent un quartier très peuplé ."],
        "dsifn_1_1.png": ["des terres agricoles avec quelques maisons dispersées .",
                          "une rivière coule le long des champs ."],
        "dsifn_2_4.png": ["une large autoroute passe entre des bâtiments industriels .",
                          "des camions sont garés dans une grande cour ."],
    },
    "it": {
        "levir_test_102.png": ["molte case sono disposte in file accanto a una strada .",
                               "una zona residenziale con alberi verdi e una strada dritta ."],
        "levir_test_113.png": ["un campo spoglio si trova accanto ad alcuni edifici .",
                               "un parcheggio accanto a un bar ."],
        "dsifn_1_1.png": ["terreni agricoli con alcune case sparse .",
                          "un fiume scorre accanto ai campi ."],
        "dsifn_2_4.png": ["un'ampia autostrada passa tra edifici industriali .",
                          "dei camion sono parcheggiati in un grande piazzale ."],
    },
    "ar": {
        "levir_test_102.png": ["العديد من المنازل مصطفة بجانب طريق .",
                               "منطقة سكنية بها أشجار خضراء وطريق مستقيم ."],
        # NFC order of "سيَّارات": yeh, fatha (U+064E), shadda (U+0651)
        "levir_test_113.png": ["أرض جرداء بجانب بعض المباني .",
                               "موقف سي\u064e\u0651ارات بجانب مقهى ."],
        "dsifn_0_2.png": ["مبانٍ كثيفة تحيط بحديقة خضراء كبيرة .",
                          "عدة طرق تعبر حيًا مزدحمًا ."],
        "dsifn_1_1.png": ["أراضٍ زراعية مع بعض المنازل المتناثرة ."],  # one sentence of two
        "dsifn_2_4.png": ["طريق سريع عريض يمر بين مبانٍ صناعية .",
                          "شاحنات متوقفة في ساحة كبيرة ."],
    },
}
DOTA_LABELS = {
    "levir_test_102.txt": "imagesource:GoogleEarth\ngsd:0.5\n"
                          "10 20 50 20 50 60 10 60 small-vehicle 0\n"
                          "100 110 140 100 150 130 110 140 storage-tank 1\n",
    "levir_test_113.txt": "0 0 768 0 768 384 0 384 Plane 0\n\n"
                          "384 96 480 96 480 192 384 192 harbor\n",
    "dsifn_1_1.txt": "imagesource:GoogleEarth\n5 5 20 5 20 20 5 20 ship 0\n"
                     "30 30 40 30 40 40 30 40 ship 0\n10 20 300 20 300 60 10 60 ship 0\n",
    "dsifn_2_4.txt": "1 2 3 4 5 6 7 8\n",
}
COCO = {
    "images": [
        {"id": 1, "file_name": "RSICD_images/levir_test_102.png", "width": 256, "height": 256},
        {"id": 2, "file_name": "levir_test_113.png", "width": 768, "height": 384},
        {"id": 3, "file_name": "dsifn_1_1.png", "width": 512, "height": 512},
    ],
    "annotations": [
        {"id": 11, "image_id": 1, "bbox": [10, 20, 40, 40], "category_id": 3, "score": 0.9},
        {"id": 12, "image_id": 2, "bbox": [384, 96, 96, 96], "category_id": 1},
        {"id": 13, "image_id": 3, "bbox": [0, 0, 10, 10], "category_id": 1},
    ],
    "categories": [{"id": 1, "name": "harbor"}, {"id": 3, "name": "Large Vehicle"}],
}


def karpathy(captions: dict[str, list[str]], lang: str) -> dict:
    images = []
    for i, (name, (_, split)) in enumerate(IMAGES.items()):
        if name not in captions:
            continue
        sentences = captions[name]
        if lang == "fr":
            sentences = [unicodedata.normalize("NFD", s) for s in sentences]
        elif lang == "en":
            sentences = [s.replace("café", "cafe\u0301") for s in sentences]
        elif lang == "ar":  # shadda before fatha, as a keyboard may type them
            sentences = [s.replace("\u064e\u0651", "\u0651\u064e") for s in sentences]
        images.append({"filename": name, "imgid": i, "split": split,
                       "sentences": [{"raw": s, "tokens": s.split(), "imgid": i}
                                     for s in sentences]})
    return {"images": images, "dataset": "rsicd"}


def make(root: Path, shared: Path) -> dict[str, Path]:
    folder = root / "rsicd" / "RSICD_images"
    folder.mkdir(parents=True)
    for name, (sample, _) in IMAGES.items():
        with Image.open(shared / SAMPLES / sample) as img:
            img.save(folder / name)  # PNG kept as decoded: RGBA stays RGBA (the converter's job)
    text = json.dumps(karpathy(CAPTIONS["en"], "en"), ensure_ascii=False)
    (root / "rsicd" / "dataset_rsicd.json").write_text(text, encoding="utf-8")
    (root / "translations").mkdir()
    for lang in ("ar", "fr", "it"):
        text = json.dumps(karpathy(CAPTIONS[lang], lang), ensure_ascii=False)
        (root / "translations" / f"{lang}.json").write_text(text, encoding="utf-8")
    (root / "labelTxt").mkdir()
    for name, text in DOTA_LABELS.items():
        (root / "labelTxt" / name).write_text(text)
    (root / "coco.json").write_text(json.dumps(COCO))
    return {"src": root / "rsicd", "translations": root / "translations",
            "dota": root / "labelTxt", "coco": root / "coco.json"}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shared = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parents[3].parent / "shared/data"
    print(json.dumps({k: str(v) for k, v in make(out, shared).items()}, indent=1))
