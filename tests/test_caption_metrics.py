"""Caption metrics, the time-series retrieval protocol, and the offline WordNet set-up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rsir import setup_offline
from rsir.metrics.captions import (
    CaptionScorer,
    caption_retrieval_scores,
    caption_retrieval_scores_uncached,
    score_caption,
    tokenize,
)


@pytest.fixture(scope="module")
def wordnet() -> None:
    if not setup_offline.wordnet_works():
        pytest.skip("NLTK WordNet missing: run `python -m rsir.setup_offline` (make install does)")


def _dubai(shared_data: Path, name: str) -> list[list[str]]:
    data = json.loads((shared_data / "captions" / "dubai_cc" / name).read_text())
    return [[s["raw"] for s in img["sentences"]] for img in data["images"]]


def test_tokenize() -> None:
    assert tokenize("A new Road, built.") == ["a", "new", "road", "built"]


def test_hand_computed_scores(wordnet: None) -> None:
    s = score_caption("a b c d", ["a b e f"])
    assert s["bleu1"] == pytest.approx(0.5)  # 2 of 4 unigrams, same length: no brevity penalty
    assert s["bleu4"] == pytest.approx(0.0, abs=1e-12)  # no 4-gram in common (NLTK: ~1e-154)
    s = score_caption("a b c d", ["a c d e"])
    assert s["rougeL"] == pytest.approx(0.75)  # LCS "a c d": P = R = 3/4
    # Identical 4 words: F = 1, one chunk -> penalty 0.5 * (1/4)^3.
    s = score_caption("the road is new", ["The road is new."])
    assert s["meteor"] == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    assert (s["bleu1"], s["bleu4"], s["rougeL"]) == pytest.approx((1.0, 1.0, 1.0))


def test_protocol_hand_computed(wordnet: None) -> None:
    # 3 pairs, one caption each: pairs 0 and 1 share a caption; pair 2 differs entirely.
    captions = ["a b c d", "a b c d", "x y z w"]
    sim = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.1], [0.0, 0.2, 1.0]])
    res = caption_retrieval_scores(sim, [0, 1, 2], captions, [True, True, False], rounds=1, top_k=1)
    identical = 1 - 0.5 * (1 / 4) ** 3
    # Leave-one-out top-1: 0 <-> 1 (perfect match), 2 -> 1 (nothing in common).
    assert res["change"]["t2i"] == pytest.approx({"bleu1": 1, "bleu4": 1, "meteor": identical, "rougeL": 1})
    assert res["no_change"]["i2t"] == pytest.approx({"bleu1": 0, "bleu4": 0, "meteor": 0, "rougeL": 0})
    assert res["full"]["avg"]["meteor"] == pytest.approx(2 * identical / 3)


def test_cached_protocol_equals_fresh_scoring(wordnet: None, shared_data: Path) -> None:
    caps = _dubai(shared_data, "Test_Dubai_CC.json")[:25]
    captions = [c for cs in caps for c in cs]
    text_pair = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
    changed = np.array(["no" not in " ".join(cs).lower().split() for cs in caps])
    sim = np.random.default_rng(0).standard_normal((len(caps), len(captions)))
    fast = caption_retrieval_scores(sim, text_pair, captions, changed, rounds=2, top_k=3)
    slow = caption_retrieval_scores_uncached(sim, text_pair, captions, changed, rounds=2, top_k=3)
    assert fast == slow  # identical floats, not approximately equal
    scorer = CaptionScorer(captions, [np.flatnonzero(text_pair == p) for p in range(len(caps))])
    assert scorer.score(0, 3) == tuple(score_caption(captions[0], caps[3]).values())


def test_against_coco_caption_toolkit(wordnet: None, shared_data: Path) -> None:
    """300 real (hypothesis, references) from Dubai-CC train: 150 same-pair, 150 other-pair.

    Measured here: BLEU-1 equal to ~1e-9 (COCO adds 1e-9-scale smoothing), BLEU-4 within
    ~1e-4 (COCO's tiny smoothing gives zero-overlap 4-grams a ~1e-5 score). NLTK's
    METEOR is a different implementation from the METEOR 1.5 jar (no paraphrase table,
    no function-word weighting, other alpha/beta/gamma): Pearson r = 0.84, mean abs diff
    0.14, NLTK higher on average (0.37 vs 0.25). Thresholds leave a small margin.
    """
    if shutil.which("java") is None:
        pytest.skip("java not found: the COCO METEOR 1.5 jar needs a JRE")
    meteor_mod = pytest.importorskip("pycocoevalcap.meteor.meteor", reason="pycocoevalcap not installed")
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    caps = _dubai(shared_data, "Train_Dubai_CC.json")
    items = []
    for i in range(150):
        items.append((caps[i][0], caps[i][1:]))
        items.append((caps[i][0], caps[(i + 7) % len(caps)]))
    ours = [score_caption(h, r) for h, r in items]
    gts = {k: [" ".join(tokenize(x)) for x in r] for k, (_, r) in enumerate(items)}
    res = {k: [" ".join(tokenize(h))] for k, (h, _) in enumerate(items)}
    _, coco_bleu = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    _, coco_meteor = meteor_mod.Meteor().compute_score(gts, res)
    b1 = np.array([o["bleu1"] for o in ours])
    b4 = np.array([o["bleu4"] for o in ours])
    m = np.array([o["meteor"] for o in ours])
    assert np.abs(b1 - np.array(coco_bleu[0])).max() < 1e-6
    assert np.abs(b4 - np.array(coco_bleu[3])).max() < 1e-3
    assert np.corrcoef(m, coco_meteor)[0, 1] > 0.78
    assert np.abs(m - np.array(coco_meteor)).mean() < 0.18


def test_setup_offline_layout_and_idempotence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = setup_offline.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    if not all((setup_offline.APT_DIR / f).is_file() for f in setup_offline.WORDNET_FILES):
        pytest.skip(f"Debian WordNet files absent from {setup_offline.APT_DIR}")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # NLTK only opens corpora under its data path.
    monkeypatch.setattr(nltk.data, "path", [*nltk.data.path, str(tmp_path)])
    target = setup_offline.install_wordnet(tmp_path)
    assert target == tmp_path / "corpora" / "wordnet"
    with pytest.warns(UserWarning, match="multilingual"):  # no OMW reader passed: English only
        reader = WordNetCorpusReader(str(target), None)
    assert reader.synset("road.n.01").lexname() == "noun.artifact"
    if setup_offline.wordnet_works():
        assert setup_offline.main([]) == 0
        assert capsys.readouterr().out == ""  # quiet when already set up
