"""The demo world's vocabulary in English, Arabic, French and Italian, with agreement.

Captions are built from phrases, not string templates with blanks, so that gender,
number and (Arabic) dual agree: ``noun_phrase("fr", "car", 2, "white")`` is
"deux voitures blanches", in Arabic "سيارتان بيضاوان".
"""

from __future__ import annotations

LANGS = ("en", "ar", "fr", "it")

# Quantity classes of the demo world (an attribute): 1, 2, "several" (3-5), "many" (6-9).
QUANTITIES = ("one", "two", "several", "many")

# Exact counts 3-9 as captions say them; Arabic: (form before a masculine noun, before a
# feminine one) — Arabic numbers 3-9 take the opposite gender of the counted noun.
NUMBERS = {
    "en": ["three", "four", "five", "six", "seven", "eight", "nine"],
    "fr": ["trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
    "it": ["tre", "quattro", "cinque", "sei", "sette", "otto", "nove"],
    "ar": [("ثلاثة", "ثلاث"), ("أربعة", "أربع"), ("خمسة", "خمس"), ("ستة", "ست"),
           ("سبعة", "سبع"), ("ثمانية", "ثماني"), ("تسعة", "تسع")],
}

# noun -> per language: (singular, plural, gender) ; Arabic: (singular, dual, plural, gender)
NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "building": {"en": ("building", "buildings"), "fr": ("bâtiment", "bâtiments", "m"),
                 "it": ("edificio", "edifici", "m"), "ar": ("مبنى", "مبنيان", "مبانٍ", "m")},
    "tree": {"en": ("tree", "trees"), "fr": ("arbre", "arbres", "m"),
             "it": ("albero", "alberi", "m"), "ar": ("شجرة", "شجرتان", "أشجار", "f")},
    "car": {"en": ("car", "cars"), "fr": ("voiture", "voitures", "f"),
            "it": ("macchina", "macchine", "f"), "ar": ("سيارة", "سيارتان", "سيارات", "f")},
    "boat": {"en": ("boat", "boats"), "fr": ("bateau", "bateaux", "m"),
             "it": ("barca", "barche", "f"), "ar": ("قارب", "قاربان", "قوارب", "m")},
    "court": {"en": ("tennis court", "tennis courts"),
              "fr": ("court de tennis", "courts de tennis", "m"),
              "it": ("campo da tennis", "campi da tennis", "m"),
              "ar": ("ملعب", "ملعبان", "ملاعب", "m")},
    "pool": {"en": ("swimming pool", "swimming pools"), "fr": ("piscine", "piscines", "f"),
             "it": ("piscina", "piscine", "f"), "ar": ("مسبح", "مسبحان", "مسابح", "m")},
}

# adjective -> fr/it: (m.sg, f.sg, m.pl, f.pl); ar: (m.sg, f.sg, m.dual, f.dual)
ADJECTIVES: dict[str, dict[str, tuple[str, ...] | str]] = {
    "red": {"en": "red", "fr": ("rouge", "rouge", "rouges", "rouges"),
            "it": ("rosso", "rossa", "rossi", "rosse"),
            "ar": ("أحمر", "حمراء", "أحمران", "حمراوان")},
    "blue": {"en": "blue", "fr": ("bleu", "bleue", "bleus", "bleues"),
             "it": ("blu", "blu", "blu", "blu"),
             "ar": ("أزرق", "زرقاء", "أزرقان", "زرقاوان")},
    "white": {"en": "white", "fr": ("blanc", "blanche", "blancs", "blanches"),
              "it": ("bianco", "bianca", "bianchi", "bianche"),
              "ar": ("أبيض", "بيضاء", "أبيضان", "بيضاوان")},
    "gray": {"en": "gray", "fr": ("gris", "grise", "gris", "grises"),
             "it": ("grigio", "grigia", "grigi", "grigie"),
             "ar": ("رمادي", "رمادية", "رماديان", "رماديتان")},
    "yellow": {"en": "yellow", "fr": ("jaune", "jaune", "jaunes", "jaunes"),
               "it": ("giallo", "gialla", "gialli", "gialle"),
               "ar": ("أصفر", "صفراء", "أصفران", "صفراوان")},
    "green": {"en": "green", "fr": ("vert", "verte", "verts", "vertes"),
              "it": ("verde", "verde", "verdi", "verdi"),
              "ar": ("أخضر", "خضراء", "أخضران", "خضراوان")},
    "rectangular": {"en": "rectangular",
                    "fr": ("rectangulaire", "rectangulaire", "rectangulaires", "rectangulaires"),
                    "it": ("rettangolare", "rettangolare", "rettangolari", "rettangolari"),
                    "ar": ("مستطيل", "مستطيلة", "مستطيلان", "مستطيلتان")},
    "round": {"en": "round", "fr": ("rond", "ronde", "ronds", "rondes"),
              "it": ("rotondo", "rotonda", "rotondi", "rotonde"),
              "ar": ("دائري", "دائرية", "دائريان", "دائريتان")},
}

# scene class -> (en, fr, it, ar, ar gender)
CLASSES: dict[str, dict[str, str]] = {
    "residential": {"en": "a residential area", "fr": "une zone résidentielle",
                    "it": "una zona residenziale", "ar": "منطقة سكنية", "ar_gender": "f"},
    "forest": {"en": "a forest", "fr": "une forêt", "it": "una foresta", "ar": "غابة",
               "ar_gender": "f"},
    "parking": {"en": "a parking lot", "fr": "un parking", "it": "un parcheggio",
                "ar": "موقف سيارات", "ar_gender": "m"},
    "harbor": {"en": "a harbor", "fr": "un port", "it": "un porto", "ar": "ميناء",
               "ar_gender": "m"},
    "sports": {"en": "a sports complex", "fr": "un complexe sportif", "it": "un centro sportivo",
               "ar": "مجمع رياضي", "ar_gender": "m"},
}

CONTEXTS = {
    "water": {"en": "near water", "fr": "près de l'eau", "it": "vicino all'acqua",
              "ar": "بالقرب من الماء"},
    "trees": {"en": "among trees", "fr": "au milieu des arbres", "it": "in mezzo agli alberi",
              "ar": "بين الأشجار"},
    "open": {"en": "on open land", "fr": "sur un terrain dégagé", "it": "su un terreno aperto",
             "ar": "في أرض مفتوحة"},
}

ROAD = {
    True: {"en": "next to a road", "fr": "le long d'une route", "it": "lungo una strada",
           "ar": "بجانب طريق"},
    False: {"en": "with no road nearby", "fr": "sans route à proximité",
            "it": "senza strade vicine", "ar": "دون أي طريق قريب"},
}

# density of 3+ objects; fr/it: (m.pl, f.pl); Arabic non-human plurals take the f.sg form.
DENSITY = {
    "dense": {"en": "close together", "fr": ("rapprochés", "rapprochées"),
              "it": ("vicini tra loro", "vicine tra loro"), "ar": "متقاربة"},
    "sparse": {"en": "spread out", "fr": ("dispersés", "dispersées"),
               "it": ("sparsi", "sparse"), "ar": "متفرقة"},
}

IN = {"en": "in", "fr": "dans", "it": "in", "ar": "في"}

LOCATIONS = {
    "top left": {"en": "in the top left", "fr": "en haut à gauche", "it": "in alto a sinistra",
                 "ar": "في الأعلى على اليسار"},
    "top right": {"en": "in the top right", "fr": "en haut à droite", "it": "in alto a destra",
                  "ar": "في الأعلى على اليمين"},
    "bottom left": {"en": "in the bottom left", "fr": "en bas à gauche",
                    "it": "in basso a sinistra", "ar": "في الأسفل على اليسار"},
    "bottom right": {"en": "in the bottom right", "fr": "en bas à droite",
                     "it": "in basso a destra", "ar": "في الأسفل على اليمين"},
}

# change verbs: en participle; fr/it participle stem (regular: +e/+s, -o/-a/-i/-e);
# ar passive verb (m, f) placed before the subject.
CHANGE_VERBS = {
    ("added", "building"): {"en": "built", "fr": "construit", "it": "costruit", "ar": ("بُني", "بُنيت")},
    ("added", "tree"): {"en": "planted", "fr": "planté", "it": "piantat", "ar": ("زُرع", "زُرعت")},
    ("added", "pool"): {"en": "built", "fr": "construit", "it": "costruit", "ar": ("أُنشئ", "أُنشئت")},
    ("added", "court"): {"en": "built", "fr": "construit", "it": "costruit", "ar": ("أُنشئ", "أُنشئت")},
    ("added", "boat"): {"en": "moored", "fr": "amarré", "it": "ormeggiat", "ar": ("رسا", "رست")},
    ("removed", "boat"): {"en": "towed away", "fr": "remorqué", "it": "rimorchiat", "ar": ("سُحب", "سُحبت")},
    ("removed", "building"): {"en": "demolished", "fr": "démoli", "it": "demolit", "ar": ("هُدم", "هُدمت")},
    ("removed", "tree"): {"en": "cut down", "fr": "abattu", "it": "abbattut", "ar": ("قُطع", "قُطعت")},
    ("removed", "pool"): {"en": "removed", "fr": "comblé", "it": "riempit", "ar": ("رُدم", "رُدمت")},
    ("removed", "court"): {"en": "removed", "fr": "supprimé", "it": "rimoss", "ar": ("أُزيل", "أُزيلت")},
}

NEW_ROAD = {
    "en": "a new road was built across the area",
    "fr": "une nouvelle route a été construite à travers la zone",
    "it": "una nuova strada è stata costruita attraverso l'area",
    "ar": "شُق طريق جديد عبر المنطقة",
}

NO_CHANGE = {
    "en": ["nothing has changed", "the scene is the same as before", "there is no change",
           "no difference between the two images", "the area remains unchanged"],
    "fr": ["rien n'a changé", "la scène est identique à la précédente",
           "il n'y a aucun changement", "aucune différence entre les deux images",
           "la zone reste inchangée"],
    "it": ["non è cambiato nulla", "la scena è uguale a prima", "non c'è alcun cambiamento",
           "nessuna differenza tra le due immagini", "l'area è rimasta invariata"],
    "ar": ["لم يتغير شيء", "المشهد كما كان من قبل", "لا يوجد أي تغيير",
           "لا فرق بين الصورتين", "بقيت المنطقة دون تغيير"],
}


def _is_plural(quantity: str | int) -> bool:
    return quantity not in ("one", 1)


def _quantity_word(quantity: str | int) -> str:
    """Counts 1 and 2 behave like the words "one" and "two"."""
    return {1: "one", 2: "two"}.get(quantity, quantity) if isinstance(quantity, int) else quantity


def _agree(forms: tuple[str, ...], gender: str, plural: bool) -> str:
    """fr/it adjective forms (m.sg, f.sg, m.pl, f.pl)."""
    return forms[(2 if plural else 0) + (1 if gender == "f" else 0)]


def _ar_adjective(forms: tuple[str, ...], gender: str, quantity: str) -> str:
    if quantity == "one":
        return forms[0 if gender == "m" else 1]
    if quantity == "two":
        return forms[2 if gender == "m" else 3]
    return forms[1]  # non-human plurals agree in the feminine singular


def noun_phrase(lang: str, noun: str, quantity: str | int, *adjectives: str) -> str:
    """``quantity`` ``adjectives`` ``noun`` with agreement, e.g. "two red buildings".

    ``quantity`` is a quantity word (one, two, several, many) or an exact count 1-9.
    """
    entry = NOUNS[noun][lang]
    quantity = _quantity_word(quantity)
    plural = _is_plural(quantity)
    if isinstance(quantity, int):
        return _counted_phrase(lang, entry, quantity, adjectives)
    if lang == "en":
        head = entry[1] if plural else entry[0]
        adjs = " ".join(ADJECTIVES[a]["en"] for a in adjectives)
        return " ".join(w for w in (quantity, adjs, head) if w)
    if lang in ("fr", "it"):
        sg, pl, gender = entry
        adjs = " ".join(_agree(ADJECTIVES[a][lang], gender, plural) for a in adjectives)
        head = " ".join(w for w in (pl if plural else sg, adjs) if w)
        if lang == "fr":
            det = {"one": "un" if gender == "m" else "une", "two": "deux",
                   "several": "plusieurs",
                   "many": "de nombreux" if gender == "m" else "de nombreuses"}[quantity]
        else:
            det = {"one": "un" if gender == "m" else "una", "two": "due",
                   "several": "alcuni" if gender == "m" else "alcune",
                   "many": "molti" if gender == "m" else "molte"}[quantity]
        return f"{det} {head}"
    sg, dual, pl, gender = entry
    adjs = " ".join(_ar_adjective(ADJECTIVES[a]["ar"], gender, quantity) for a in adjectives)
    if quantity == "one":
        one = "واحد" if gender == "m" else "واحدة"
        return " ".join(w for w in (sg, adjs, one) if w)
    if quantity == "two":
        return " ".join(w for w in (dual, adjs) if w)
    if quantity == "several":
        return " ".join(w for w in ("عدة", pl, adjs) if w)
    return " ".join(w for w in (pl, adjs, "كثيرة") if w)


def _counted_phrase(lang: str, entry: tuple[str, ...], count: int, adjectives: tuple[str, ...]) -> str:
    """An exact count of 3-9 objects; the noun and its adjectives are plural."""
    if lang == "en":
        adjs = " ".join(ADJECTIVES[a]["en"] for a in adjectives)
        return " ".join(w for w in (NUMBERS["en"][count - 3], adjs, entry[1]) if w)
    if lang in ("fr", "it"):
        _, pl, gender = entry
        adjs = " ".join(_agree(ADJECTIVES[a][lang], gender, True) for a in adjectives)
        return " ".join(w for w in (NUMBERS[lang][count - 3], pl, adjs) if w)
    _, _, pl, gender = entry
    number = NUMBERS["ar"][count - 3][0 if gender == "m" else 1]
    adjs = " ".join(ADJECTIVES[a]["ar"][1] for a in adjectives)  # plural: feminine singular
    return " ".join(w for w in (number, pl, adjs) if w)


def density_phrase(lang: str, noun: str, density: str) -> str:
    forms = DENSITY[density][lang]
    if lang in ("fr", "it"):
        return forms[1 if NOUNS[noun][lang][2] == "f" else 0]
    return forms  # type: ignore[return-value]


def scene_captions(
    lang: str, scene_class: str, noun: str, count: str | int, adjectives: tuple[str, ...],
    context: str, road: bool, density: str,
) -> list[str]:
    """Five captions of one scene in ``lang``.

    Every caption names the class, the colour and the quantity (a word, or an exact
    count) of the main objects, and one or two of the other attributes.
    """
    count = _quantity_word(count)
    np_ = noun_phrase(lang, noun, count, *adjectives)
    np_color = noun_phrase(lang, noun, count, *adjectives[:1])
    cls = CLASSES[scene_class][lang]
    ctx = CONTEXTS[context][lang]
    rd = ROAD[road][lang]
    # The density sentence needs 3+ objects; with fewer, the caption names the road.
    tail = density_phrase(lang, noun, density) if _is_plural(count) and count != "two" else rd
    if lang == "en":
        there = "there is" if count == "one" else "there are"
        return [f"{np_color} in {cls} {ctx}", f"{cls} with {np_color} {rd}",
                f"{there} {np_} {ctx} in {cls}",
                f"an aerial view of {cls} with {np_color} {tail}", f"{np_} {rd} in {cls}"]
    if lang == "fr":
        de_cls = "d'" + cls  # "d'une zone", "d'un port": both articles start with a vowel
        return [f"{np_color} dans {cls} {ctx}", f"{cls} avec {np_color} {rd}",
                f"il y a {np_} {ctx} dans {cls}",
                f"une vue aérienne {de_cls} avec {np_color} {tail}", f"{np_} {rd} dans {cls}"]
    if lang == "it":
        there = "c'è" if count == "one" else "ci sono"
        return [f"{np_color} in {cls} {ctx}", f"{cls} con {np_color} {rd}",
                f"{there} {np_} {ctx} in {cls}",
                f"una vista aerea di {cls} con {np_color} {tail}", f"{np_} {rd} in {cls}"]
    fiha = "فيها" if CLASSES[scene_class]["ar_gender"] == "f" else "فيه"
    return [f"{np_color} في {cls} {ctx}", f"{cls} {fiha} {np_color} {rd}",
            f"يوجد {np_} {ctx} في {cls}",
            f"صورة جوية ل{cls} فيها {np_color} {tail}", f"{np_} {rd} في {cls}"]


def _participle(lang: str, stem: str, gender: str, plural: bool) -> str:
    if lang == "fr":
        return stem + ("e" if gender == "f" else "") + ("s" if plural else "")
    return stem + {("m", False): "o", ("f", False): "a", ("m", True): "i", ("f", True): "e"}[
        (gender, plural)]


def in_scene(lang: str, scene_class: str) -> str:
    """"in a residential area", "dans une zone résidentielle", ..."""
    return f"{IN[lang]} {CLASSES[scene_class][lang]}"


def _with_scene(captions: list[str], lang: str, scene_class: str | None) -> list[str]:
    """Captions 3 and 4 of five also say where the change happened (the scene class), as
    annotators often do; the others stay bare."""
    if scene_class is None:
        return captions
    where = in_scene(lang, scene_class)
    comma = "،" if lang == "ar" else ","
    return [*captions[:3], f"{where}{comma} {captions[3]}", f"{captions[4]} {where}"]


def change_captions(
    lang: str, op: str, noun: str, quantity: str | int, adjectives: tuple[str, ...], location: str,
    scene_class: str | None = None,
) -> list[str]:
    """Five captions of one change (``op`` is ``added`` or ``removed``) in ``lang``; with
    ``scene_class``, two of them name the scene (:func:`_with_scene`)."""
    return _with_scene(_change_captions(lang, op, noun, quantity, adjectives, location),
                       lang, scene_class)


def _change_captions(
    lang: str, op: str, noun: str, quantity: str | int, adjectives: tuple[str, ...], location: str,
) -> list[str]:
    np_ = noun_phrase(lang, noun, quantity, *adjectives)
    quantity = _quantity_word(quantity)
    loc = LOCATIONS[location][lang]
    verb = CHANGE_VERBS[(op, noun)][lang]
    plural = _is_plural(quantity)
    if lang == "en":
        clause = f"{np_} {'were' if plural else 'was'} {verb}"
        return [f"{clause} {loc}", f"{loc}, {clause}", f"compared to before, {clause} {loc}",
                clause, f"the area has changed: {clause} {loc}"]
    if lang in ("fr", "it"):
        gender = NOUNS[noun][lang][2]
        part = _participle(lang, verb, gender, plural)
        if lang == "fr":
            clause = f"{np_} {'ont' if plural else 'a'} été {part}"
            return [f"{clause} {loc}", f"{loc}, {clause}", f"par rapport à avant, {clause} {loc}",
                    clause, f"la zone a changé : {clause} {loc}"]
        aux = ("sono stat" if plural else "è stat") + _participle("it", "", gender, plural)
        clause = f"{np_} {aux} {part}"
        return [f"{clause} {loc}", f"{loc}, {clause}", f"rispetto a prima, {clause} {loc}",
                clause, f"l'area è cambiata: {clause} {loc}"]
    gender = NOUNS[noun]["ar"][3]
    # A verb before its subject stays singular; non-human plurals take the feminine.
    feminine = gender == "f" or quantity not in ("one", "two")
    clause = f"{verb[1] if feminine else verb[0]} {np_}"
    return [f"{clause} {loc}", f"{loc}، {clause}", f"مقارنة بالصورة الأولى، {clause} {loc}",
            clause, f"تغيرت المنطقة: {clause} {loc}"]


def road_captions(lang: str, scene_class: str | None = None) -> list[str]:
    """Five captions of a new road (one sentence, varied framing); with ``scene_class``,
    two of them name the scene."""
    base = NEW_ROAD[lang]
    frames = {
        "en": ["{}", "compared to before, {}", "the area has changed: {}", "{} in the second image",
               "between the two dates, {}"],
        "fr": ["{}", "par rapport à avant, {}", "la zone a changé : {}", "{} sur la deuxième image",
               "entre les deux dates, {}"],
        "it": ["{}", "rispetto a prima, {}", "l'area è cambiata: {}", "{} nella seconda immagine",
               "tra le due date, {}"],
        "ar": ["{}", "مقارنة بالصورة الأولى، {}", "تغيرت المنطقة: {}", "{} في الصورة الثانية",
               "بين التاريخين، {}"],
    }[lang]
    return _with_scene([f.format(base) for f in frames], lang, scene_class)


def no_change_captions(lang: str, scene: list[str]) -> list[str]:
    """Five captions of an unchanged pair: two say only that nothing changed, three also
    say what is still there (captions 2, 3 and 5 of the scene, ``scene``)."""
    nc = NO_CHANGE[lang]
    colon = " :" if lang == "fr" else ":"
    return [nc[0], nc[3], f"{nc[2]}{colon} {scene[1]}", f"{nc[1]}{colon} {scene[2]}",
            f"{nc[4]}{colon} {scene[4]}"]
