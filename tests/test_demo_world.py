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


def test_vocabulary_queries_cover_every_class_and_colour_in_every_language():
    from rsir.data.demo_world import CLASS_SPECS, vocabulary_queries

    wanted = {(c, col) for c, (_, colors, _) in CLASS_SPECS.items() for col in colors}
    for lang in lex.LANGS:
        queries = vocabulary_queries(lang)
        assert Counter((q["class_name"], q["color"]) for q in queries) == {p: 2 for p in wanted}
        assert all(q["text"].strip() for q in queries)
    en = {q["text"] for q in vocabulary_queries("en")}
    # the query, and its class-naming sibling
    assert {"three red buildings next to a road", "several red buildings in a residential area"} <= en
    assert "three white boats near water" in en  # harbors have no road
    assert "plusieurs bâtiments rouges dans une zone résidentielle" in {
        q["text"] for q in vocabulary_queries("fr")}


def _haversine_m(lon1, lat1, lon2, lat2):
    """Great-circle distance on a sphere of the Earth's mean radius (independent of rasterio)."""
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * np.arcsin(np.sqrt(a))


def test_world_rows_carry_footprints_and_dates(tmp_path):
    """The generated shards: each tile a valid WGS84 footprint of 64 px x 10 m near Lisbon,
    neighbours sharing edges, single scenes dated 2019-2023, pairs one to four years apart."""
    from datetime import datetime, timedelta, timezone

    import shapely

    from rsir.data.demo_world import REGION

    generate(tmp_path, 130, 70, seed=0)
    singles = read_table(tmp_path / "single").to_pylist()
    pairs = read_table(tmp_path / "pairs").to_pylist()
    for r in singles + pairs:
        assert r["crs"] == "EPSG:32629" and r["gsd_m"] == 10.0
        assert r["sensor"] in ("sentinel-2a", "sentinel-2b")
        west, south, east, north = r["bbox"]
        # the Tagus estuary: lon -9.5 .. -8.5, lat 38.7 .. 39.1
        assert -9.5 < west < east < -8.5 and 38.7 < south < north < 39.1
        poly = shapely.from_wkb(r["footprint"])
        assert poly.geom_type == "Polygon" and poly.is_valid and len(poly.exterior.coords) == 5
        np.testing.assert_allclose(poly.bounds, r["bbox"], atol=1e-6)
        mid = (south + north) / 2
        # 64 px at 10 m, each way (UTM's scale factor and the sphere: well within 1 %)
        assert abs(_haversine_m(west, mid, east, mid) - 640) < 6.4
        assert abs(_haversine_m(west, south, west, north) - 640) < 6.4
    by_id = {r["id"]: r for r in singles}
    cols = REGION.columns
    for i in range(len(singles) - cols):
        a, right, below = by_id[f"scene-{i:06d}"], by_id.get(f"scene-{i + 1:06d}"), by_id[f"scene-{i + cols:06d}"]
        corners = set(shapely.from_wkb(a["footprint"]).exterior.coords)
        if (i + 1) % cols:  # same row: the next tile lies east, sharing an edge (two corners)
            assert right["bbox"][0] > a["bbox"][0]
            assert len(corners & set(shapely.from_wkb(right["footprint"]).exterior.coords)) == 2
        assert below["bbox"][1] < a["bbox"][1]  # the next row lies south, sharing an edge
        assert len(corners & set(shapely.from_wkb(below["footprint"]).exterior.coords)) == 2
    # the pairs' block lies east of the single scenes'; no two tiles overlap
    centre_lon = [[shapely.from_wkb(r["footprint"]).centroid.x for r in rows] for rows in (singles, pairs)]
    assert min(centre_lon[1]) > max(centre_lon[0])
    union = shapely.union_all([shapely.from_wkb(r["footprint"]) for r in singles + pairs])
    assert abs(union.area - sum(shapely.from_wkb(r["footprint"]).area for r in singles + pairs)) < 1e-12
    utc = timezone.utc
    for r in singles:
        assert datetime(2019, 1, 1, tzinfo=utc) <= r["acquired"] < datetime(2024, 1, 2, tzinfo=utc)
        assert r["acquired_t2"] is None
    gaps = [r["acquired_t2"] - r["acquired"] for r in pairs]
    assert all(timedelta(days=365) - timedelta(minutes=15) <= g <= timedelta(days=4 * 365 + 1) for g in gaps)
    assert len({r["acquired"].date() for r in singles}) > 100  # dates vary, per row
