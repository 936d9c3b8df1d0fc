"""The demo world: deterministic, four languages with agreement, recorded attributes."""

from collections import Counter

import numpy as np

from rsir.data import demo_lexicon as lex
from rsir.data.demo_world import ATTRIBUTES, generate, pair_row, scene_row
from rsir.data.schema import attributes_dict, decode_image, read_table


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    generate(tmp_path / "a", 12, 12, seed=3)
    generate(tmp_path / "b", 12, 12, seed=3)
    generate(tmp_path / "c", 12, 12, seed=4)
    a, b, c = (read_table(tmp_path / x / "single") for x in "abc")
    assert a.equals(b)
    assert a.column("image").to_pylist() != c.column("image").to_pylist()
    pa_, pb = (read_table(tmp_path / x / "pairs") for x in "ab")
    assert pa_.equals(pb)
    # rows do not depend on how many were generated before them
    assert scene_row(5, 3, "train") == scene_row(5, 3, "train")


def test_captions_five_per_language_and_objects_recorded():
    for i in range(30):
        row = scene_row(i, 0, "train")
        counts = Counter(c["lang"] for c in row["captions"])
        assert counts == {"en": 5, "ar": 5, "fr": 5, "it": 5}
        assert all(c["text"].strip() for c in row["captions"])
        attrs = attributes_dict(row["attributes"])
        assert set(attrs) == set(ATTRIBUTES)
        assert row["objects"], "every scene has objects"
        boxes = np.array([o["box"] for o in row["objects"]])
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        # the English captions name the class and the main object's colour
        en = [c["text"] for c in row["captions"] if c["lang"] == "en"]
        assert all(attrs["color"] in t for t in en)
        assert decode_image(row["image"]).shape == (64, 64, 3)


def test_pairs_change_about_half_and_captions_say_so():
    rows = [pair_row(i, 0, "train") for i in range(200)]
    changed = [r["changed"] for r in rows]
    assert 0.4 < np.mean(changed) < 0.6
    for r in rows:
        a, b = decode_image(r["image"]), decode_image(r["image_t2"])
        en = [c["text"] for c in r["captions"] if c["lang"] == "en"]
        if r["changed"]:
            assert not any(t in lex.NO_CHANGE["en"] for t in en)
            # a change alters pixels well beyond the illumination difference
            assert np.abs(a.astype(int) - b.astype(int)).max() > 40
        else:  # every caption says nothing changed; three also say what is still there
            assert all(any(t.startswith(nc) for nc in lex.NO_CHANGE["en"]) for t in en)
            assert sum(r["class_name"] in t for t in en) == 3


def test_agreement_in_each_language():
    np_ = lex.noun_phrase
    assert np_("en", "building", 2, "red") == "two red buildings"
    assert np_("fr", "car", 2, "white") == "deux voitures blanches"
    assert np_("fr", "building", "many", "white") == "de nombreux bâtiments blancs"
    assert np_("it", "boat", 1, "red") == "una barca rossa"
    assert np_("it", "building", 3, "gray") == "tre edifici grigi"
    assert np_("ar", "car", 2, "white") == "سيارتان بيضاوان"
    assert np_("ar", "building", 1, "red") == "مبنى أحمر واحد"
    assert np_("ar", "building", 3, "red") == "ثلاثة مبانٍ حمراء"  # number of opposite gender
    assert np_("ar", "car", 3, "red") == "ثلاث سيارات حمراء"
    assert lex.change_captions("fr", "added", "pool", 2, (), "top left")[0] == (
        "deux piscines ont été construites en haut à gauche")
    assert lex.change_captions("it", "removed", "building", 1, ("red",), "top right")[0] == (
        "un edificio rosso è stato demolito in alto a destra")
    assert lex.change_captions("ar", "added", "tree", 2, (), "bottom left")[0] == (
        "زُرعت شجرتان في الأسفل على اليسار")
