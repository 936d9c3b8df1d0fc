"""Caption metrics (COCO toolkit and the NLTK fallback), the time-series retrieval
protocol, and the offline WordNet set-up."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from rsir import setup_offline
from rsir.metrics import captions as caption_metrics
from rsir.metrics.captions import (
    NltkScorer,
    caption_retrieval_scores,
    caption_retrieval_scores_uncached,
    coco_available,
    coco_scores,
    resolve_backend,
    score_caption_nltk,
    tokenize,
)


@pytest.fixture(scope="module")
def wordnet() -> None:
    if not setup_offline.wordnet_works():
        pytest.skip("NLTK WordNet missing: run `python -m rsir.setup_offline` (make install does)")


@pytest.fixture(scope="module")
def java() -> None:
    """The coco backend's Java and pycocoevalcap; `make test` sets RSIR_REQUIRE_JAVA (it
    installs a JRE), so there a missing one fails instead of skipping."""
    missing = coco_available()
    if missing is not None:
        if os.environ.get("RSIR_REQUIRE_JAVA"):
            pytest.fail(missing + "; RSIR_REQUIRE_JAVA is set")
        pytest.skip(missing)


def _dubai(shared_data: Path, name: str) -> list[list[str]]:
    path = shared_data / "captions" / "dubai_cc" / name
    if not path.is_file():
        pytest.skip(f"Dubai-CC captions not found at {path}")
    data = json.loads(path.read_text())
    return [[s["raw"] for s in img["sentences"]] for img in data["images"]]


def test_tokenize() -> None:
    assert tokenize("A new Road, built.") == ["a", "new", "road", "built"]


def test_nltk_hand_computed_scores(wordnet: None) -> None:
    s = score_caption_nltk("a b c d", ["a b e f"])
    assert s["bleu1"] == pytest.approx(0.5)  # 2 of 4 unigrams, same length: no brevity penalty
    assert s["bleu4"] == pytest.approx(0.0, abs=1e-12)  # no 4-gram in common (NLTK: ~1e-154)
    s = score_caption_nltk("a b c d", ["a c d e"])
    assert s["rougeL"] == pytest.approx(0.75)  # LCS "a c d": P = R = 3/4
    # rouge-score: F1 of the best reference (each is 2PR/(P+R) = 2/3), not COCO's max P, max R.
    assert score_caption_nltk("a b c d", ["a b", "a b c d e f g h"])["rougeL"] == pytest.approx(2 / 3)
    # Identical 4 words: F = 1, one chunk -> penalty 0.5 * (1/4)^3.
    s = score_caption_nltk("the road is new", ["The road is new."])
    assert s["meteor"] == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    assert (s["bleu1"], s["bleu4"], s["rougeL"]) == pytest.approx((1.0, 1.0, 1.0))


@pytest.mark.slow  # METEOR 1.5 loads its paraphrase table (seconds, more on a loaded machine)
def test_coco_hand_computed_scores(java: None) -> None:
    """pycocoevalcap on PTB-tokenized text: METEOR 1.5 (en: α 0.85, β 0.2, γ 0.6), ROUGE-L
    of COCO (max precision and max recall over the references, β = 1.2), BLEU with the
    closest reference length; all five in one compute_score call per metric."""
    got = coco_scores(
        ["road river house tree", "road river house tree", "a b c d", "new road", "a b c d"],
        [["road river field lake"], ["river road field lake"], ["a b", "a b c d e f g h"],
         ["the new road is built"], ["a c d e"]])
    # 2 exact matches of 4 content words each side: P = R = Fmean = 1/2; one chunk of 2
    # matches: penalty 0.6 * (1/2)^0.2; two chunks: 0.6 * (2/2)^0.2.
    assert got[0, 2] == pytest.approx(0.5 * (1 - 0.6 * 0.5 ** 0.2), abs=1e-6)
    assert got[1, 2] == pytest.approx(0.5 * (1 - 0.6), abs=1e-6)
    assert got[0, 0] == pytest.approx(0.5, abs=1e-8) and got[0, 1] < 1e-6  # no 4-gram shared
    assert got[2, 3] == pytest.approx(1.0)  # P_max = 1 (2nd ref), R_max = 1 (1st ref)
    p, r = 1.0, 2 / 5  # "new road" in "the new road is built"
    assert got[3, 3] == pytest.approx((1 + 1.2 ** 2) * p * r / (r + 1.2 ** 2 * p))
    assert got[3, 0] == pytest.approx(np.exp(1 - 5 / 2), abs=1e-8)  # brevity penalty, P1 = 1
    assert got[4, 3] == pytest.approx(0.75)  # LCS "a c d"


def test_fallback_without_java(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                               wordnet: None) -> None:
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="rsir.metrics.captions"):
        assert resolve_backend("coco") == "nltk"
    assert "java not found" in caplog.text and "nltk" in caplog.text
    res = caption_retrieval_scores(np.eye(3), [0, 1, 2], ["a b", "a c", "b c"], [True, False, True],
                                   rounds=1, top_k=1)
    assert res["backend"] == "nltk"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("sacrebleu")


def test_protocol_hand_computed(wordnet: None) -> None:
    # 3 pairs, one caption each: pairs 0 and 1 share a caption; pair 2 differs entirely.
    captions = ["a b c d", "a b c d", "x y z w"]
    sim = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.1], [0.0, 0.2, 1.0]])
    res = caption_retrieval_scores(sim, [0, 1, 2], captions, [True, True, False], rounds=1, top_k=1,
                                   backend="nltk")
    assert res["backend"] == "nltk"
    scores = res["scores"]
    identical = 1 - 0.5 * (1 / 4) ** 3
    # Leave-one-out top-1: 0 <-> 1 (perfect match), 2 -> 1 (nothing in common).
    assert scores["change"]["t2i"] == pytest.approx({"bleu1": 1, "bleu4": 1, "meteor": identical, "rougeL": 1})
    assert scores["no_change"]["i2t"] == pytest.approx({"bleu1": 0, "bleu4": 0, "meteor": 0, "rougeL": 0})
    assert scores["full"]["avg"]["meteor"] == pytest.approx(2 * identical / 3)


def test_cached_protocol_equals_fresh_scoring(wordnet: None, shared_data: Path) -> None:
    caps = _dubai(shared_data, "Test_Dubai_CC.json")[:25]
    captions = [c for cs in caps for c in cs]
    text_pair = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
    changed = np.array(["no" not in " ".join(cs).lower().split() for cs in caps])
    sim = np.random.default_rng(0).standard_normal((len(caps), len(captions)))
    fast = caption_retrieval_scores(sim, text_pair, captions, changed, rounds=2, top_k=3, backend="nltk")
    slow = caption_retrieval_scores_uncached(sim, text_pair, captions, changed, rounds=2, top_k=3)
    assert fast == slow  # identical floats, not approximately equal
    scorer = NltkScorer(captions, [np.flatnonzero(text_pair == p) for p in range(len(caps))])
    assert scorer.score(0, 3) == tuple(score_caption_nltk(captions[0], caps[3]).values())


def _straight_line_protocol(sim: np.ndarray, text_pair: np.ndarray, captions: list[str],
                            changed: np.ndarray, rounds: int, top_k: int, seed: int) -> dict:
    """The time-series paper's protocol written out query by query, scored by
    pycocoevalcap called directly (PTBTokenizer, Bleu(4), Meteor, Rouge)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    n_pairs = sim.shape[0]
    own = [[t for t in range(len(captions)) if text_pair[t] == p] for p in range(n_pairs)]
    rng = np.random.default_rng(seed)
    items = []  # (direction, query pair, hypothesis caption id, reference pair)
    for _ in range(rounds):
        drawn = [rng.choice(own[p]) for p in range(n_pairs)]
        for q in range(n_pairs):
            others = [p for p in range(n_pairs) if p != q]  # leave-one-out
            by_text = sorted(others, key=lambda p: (-sim[p, drawn[q]], p))[:top_k]
            items += [("t2i", q, drawn[q], p) for p in by_text]
            by_pair = sorted(others, key=lambda p: (-sim[q, drawn[p]], p))[:top_k]
            items += [("i2t", q, drawn[p], q) for p in by_pair]
    tok = PTBTokenizer().tokenize({t: [{"caption": c}] for t, c in enumerate(captions)})
    gts = {i: [tok[t][0] for t in own[ref]] for i, (_, _, _, ref) in enumerate(items)}
    res = {i: [tok[h][0]] for i, (_, _, h, _) in enumerate(items)}
    _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    _, meteor = Meteor().compute_score(gts, res)
    _, rouge = Rouge().compute_score(gts, res)
    per_item = np.stack([bleu[0], bleu[3], meteor, rouge], 1)
    out = {}
    for name, mask in (("full", np.ones(n_pairs, bool)), ("change", changed), ("no_change", ~changed)):
        out[name] = {}
        for d in ("t2i", "i2t"):
            per_query = [per_item[[i for i, it in enumerate(items) if it[0] == d and it[1] == q]].mean(0)
                         for q in range(n_pairs) if mask[q]]
            out[name][d] = np.mean(per_query, 0)
    return out


@pytest.mark.slow
def test_protocol_equals_pycocoevalcap_on_dubai_cc(java: None, shared_data: Path) -> None:
    """The default (coco) protocol on the real Dubai-CC val+test captions (200 pairs, 1,000
    captions) equals the protocol written out and scored by pycocoevalcap directly."""
    caps = _dubai(shared_data, "Validation_Dubai_CC.json") + _dubai(shared_data, "Test_Dubai_CC.json")
    captions = [c for cs in caps for c in cs]
    text_pair = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
    changed = np.array(["no" not in " ".join(cs).lower().split() for cs in caps])
    rng = np.random.default_rng(4)
    # Similarities with some signal (a pair's own captions a little closer), so the top-5
    # mixes relevant and irrelevant captions.
    sim = rng.standard_normal((len(caps), len(captions))) + 1.5 * (text_pair[None] == np.arange(len(caps))[:, None])
    ours = caption_retrieval_scores(sim, text_pair, captions, changed, rounds=2, top_k=5, seed=7)
    assert ours["backend"] == "coco"
    direct = _straight_line_protocol(sim, text_pair, captions, changed, rounds=2, top_k=5, seed=7)
    for qset in ("full", "change", "no_change"):
        for d in ("t2i", "i2t"):
            got = [ours["scores"][qset][d][m] for m in caption_metrics.METRICS]
            np.testing.assert_allclose(got, direct[qset][d], rtol=0, atol=1e-9, err_msg=f"{qset} {d}")
    assert 0.05 < ours["scores"]["full"]["avg"]["meteor"] < 0.9  # a real spread, not all 0 or 1


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
