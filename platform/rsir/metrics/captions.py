"""Caption metrics (BLEU-1, BLEU-4, METEOR, ROUGE-L) and the text <-> image-pair protocol.

Hoxha et al. (text-image time-series retrieval) score retrieval with captioning metrics:
T->I takes the query text as hypothesis and the retrieved pair's captions as references;
I->T takes a retrieved caption as hypothesis and the query pair's captions as
references. Val+test merged, leave-one-out, top-5, 5 rounds with one random caption per
pair, reported for the full, change and no-change query sets.

Implementations: BLEU and METEOR from NLTK (METEOR needs WordNet: run
``python -m rsir.setup_offline``), ROUGE-L from ``rouge-score`` (F-measure of the best
reference). All metrics see the same tokens: lowercase, runs of word characters.
NLTK's METEOR is not the METEOR 1.5 jar of the COCO toolkit; their values differ
(see tests/test_caption_metrics.py for the measured gap).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from rsir.metrics.retrieval import as_numpy

METRICS = ("bleu1", "bleu4", "meteor", "rougeL")
QUERY_SETS = ("full", "change", "no_change")
_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens; punctuation dropped (as COCO's PTB tokenizer does)."""
    return _TOKEN.findall(text.lower())


class _Tokenizer:
    """rouge-score tokenizer interface (``tokenize(text) -> tokens``) over :func:`tokenize`."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def _bleu(refs: list[list[str]], hyp: list[str]) -> tuple[float, float]:
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():  # "0 counts of n-gram overlaps": BLEU-4 is then 0
        warnings.simplefilter("ignore")
        b1, b4 = sentence_bleu(refs, hyp, weights=[(1.0,), (0.25, 0.25, 0.25, 0.25)])
    return float(b1), float(b4)


def score_caption(hypothesis: str, references: Sequence[str]) -> dict[str, float]:
    """All four metrics of one hypothesis against its references, computed from scratch."""
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer

    hyp = tokenize(hypothesis)
    refs = [tokenize(r) for r in references]
    b1, b4 = _bleu(refs, hyp)
    rouge = RougeScorer(["rougeL"], tokenizer=_Tokenizer()).score_multi(list(references), hypothesis)
    return {"bleu1": b1, "bleu4": b4, "meteor": float(meteor_score(refs, hyp)),
            "rougeL": float(rouge["rougeL"].fmeasure)}


class _Name:
    """A WordNet lemma reduced to what METEOR reads: ``name()``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class _Lemmas:
    """A synset reduced to what METEOR reads: ``lemmas()``, materialised once."""

    __slots__ = ("_lemmas",)

    def __init__(self, synset: Any) -> None:
        self._lemmas = tuple(_Name(lemma.name()) for lemma in synset.lemmas())

    def lemmas(self) -> tuple[_Name, ...]:
        return self._lemmas


@lru_cache(maxsize=1)
def _wordnet() -> Any:
    """NLTK's WordNet 3.0 reader, loaded once per process, without its OMW version map.

    ``WordNetCorpusReader.__init__`` maps WordNet 3.0 onto itself for the multilingual OMW
    data (``map_wn`` compares the version with the string ``"wordnet"``, so it always
    maps): 9 of the 16 s a load takes. METEOR reads English synsets only.
    """
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.data import find

    class WordNet30Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": not used
        warnings.simplefilter("ignore")
        return WordNet30Reader(find("corpora/wordnet"), None)


class _CachedWordNet:
    """The WordNet calls NLTK's METEOR makes (``synsets(w)``, ``.lemmas()``, ``.name()``),
    memoised per word so the corpus is walked once per distinct word."""

    def __init__(self) -> None:
        wordnet = _wordnet()
        self._synsets = lru_cache(maxsize=None)(
            lambda word: tuple(_Lemmas(s) for s in wordnet.synsets(word))
        )

    def synsets(self, word: str) -> tuple[_Lemmas, ...]:
        return self._synsets(word)


class _CachedStemmer:
    """Porter stemmer memoised per word (METEOR stems every word of every pair)."""

    def __init__(self) -> None:
        from nltk.stem.porter import PorterStemmer

        self.stem = lru_cache(maxsize=None)(PorterStemmer().stem)


class CaptionScorer:
    """Scores hypothesis texts against reference sets by id, with every reuse cached.

    ``texts`` are all captions; ``reference_sets[r]`` lists the text ids of reference
    set r (e.g. a pair's captions). Tokens are computed once per text, WordNet look-ups
    and stems once per word, and a ``(hypothesis id, reference set id)`` score once;
    the values equal :func:`score_caption`.
    """

    def __init__(self, texts: Sequence[str], reference_sets: Sequence[Sequence[int]]) -> None:
        from rouge_score.rouge_scorer import RougeScorer

        self.texts = list(texts)
        self.reference_sets = [list(r) for r in reference_sets]
        self.tokens = [tokenize(t) for t in self.texts]
        by_text = dict(zip(self.texts, self.tokens))

        class _Lookup:
            def tokenize(self, text: str) -> list[str]:
                cached = by_text.get(text)
                return cached if cached is not None else tokenize(text)

        self._rouge = RougeScorer(["rougeL"], tokenizer=_Lookup())
        self._wordnet = _CachedWordNet()
        self._stemmer = _CachedStemmer()
        self._cache: dict[tuple[int, int], tuple[float, float, float, float]] = {}

    def score(self, hyp_id: int, ref_set: int) -> tuple[float, float, float, float]:
        """(bleu1, bleu4, meteor, rougeL) of text ``hyp_id`` against reference set ``ref_set``."""
        key = (hyp_id, ref_set)
        if key not in self._cache:
            from nltk.translate.meteor_score import meteor_score

            hyp = self.tokens[hyp_id]
            ref_ids = self.reference_sets[ref_set]
            refs = [self.tokens[r] for r in ref_ids]
            b1, b4 = _bleu(refs, hyp)
            meteor = meteor_score(refs, hyp, stemmer=self._stemmer, wordnet=self._wordnet)
            rouge = self._rouge.score_multi([self.texts[r] for r in ref_ids], self.texts[hyp_id])
            self._cache[key] = (b1, b4, float(meteor), float(rouge["rougeL"].fmeasure))
        return self._cache[key]


def _top_k_excluding_self(scores: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns per row of ``scores`` [Q, N] after removing column ``own[q]``.

    Stable: ties rank by lower column index first.
    """
    scores = scores.astype(np.float64, copy=True)
    scores[np.arange(len(scores)), own] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def caption_retrieval_scores(
    sim: Any,
    text_pair: Any,
    captions: Sequence[str],
    changed: Any,
    rounds: int = 5,
    top_k: int = 5,
    seed: int = 0,
    scorer: CaptionScorer | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Caption-metric retrieval scores of the time-series paper, in [0, 1].

    ``sim`` ``[n_pairs, n_texts]`` (image pairs x captions, val+test merged);
    ``text_pair[t]`` the pair of caption t; ``captions[t]`` its text; ``changed[p]`` the
    pair's change flag. Each round draws one caption per pair (seeded). T->I: each
    pair's drawn caption queries the other pairs; each of the top-k retrieved pairs
    scores (hypothesis = query caption, references = all captions of the retrieved
    pair). I->T: each pair queries the other pairs' drawn captions; each retrieved
    caption scores (hypothesis = it, references = all captions of the query pair).
    Scores are averaged over the top-k, the queries of a query set (a pair's change flag
    decides the set of both its queries) and the rounds. Returns
    ``{query_set: {"t2i"|"i2t"|"avg": {metric: value}}}``; a query set with no query
    is left out. Pass ``scorer`` to reuse caches across calls on the same captions.
    """
    sim = as_numpy(sim)
    text_pair = as_numpy(text_pair).astype(np.int64)
    changed = as_numpy(changed).astype(bool)
    n_pairs, n_texts = sim.shape
    if text_pair.shape != (n_texts,) or len(captions) != n_texts or changed.shape != (n_pairs,):
        raise ValueError("text_pair and captions need one entry per text, changed one per pair")
    if not 1 <= top_k < n_pairs:
        raise ValueError(f"top_k must lie in [1, {n_pairs - 1}] (leave-one-out), got {top_k}")
    pair_texts = [np.flatnonzero(text_pair == p) for p in range(n_pairs)]
    if any(len(t) == 0 for t in pair_texts):
        raise ValueError("every pair needs at least one caption")
    if scorer is None:
        scorer = CaptionScorer(captions, pair_texts)
    rng = np.random.default_rng(seed)
    pairs = np.arange(n_pairs)
    # totals[direction] [n_pairs, 4]: per query pair, summed over rounds and top-k.
    totals = {"t2i": np.zeros((n_pairs, 4)), "i2t": np.zeros((n_pairs, 4))}
    for _ in range(rounds):
        drawn = np.array([rng.choice(t) for t in pair_texts])  # one caption id per pair
        sub = sim[:, drawn]  # [pairs, drawn captions]; column p is pair p's caption
        t2i_top = _top_k_excluding_self(sub.T, pairs, top_k)  # query caption -> pairs
        i2t_top = _top_k_excluding_self(sub, pairs, top_k)  # query pair -> captions
        for q in pairs:
            for p in t2i_top[q]:
                totals["t2i"][q] += scorer.score(int(drawn[q]), int(p))
            for p in i2t_top[q]:
                totals["i2t"][q] += scorer.score(int(drawn[p]), int(q))
    masks = {"full": np.ones(n_pairs, bool), "change": changed, "no_change": ~changed}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        res = {d: dict(zip(METRICS, (totals[d][mask].mean(0) / (rounds * top_k)).tolist())) for d in totals}
        res["avg"] = {m: 0.5 * (res["t2i"][m] + res["i2t"][m]) for m in METRICS}
        out[name] = res
    return out


def caption_retrieval_scores_uncached(
    sim: Any, text_pair: Any, captions: Sequence[str], changed: Any,
    rounds: int = 5, top_k: int = 5, seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Same protocol scoring every (hypothesis, references) afresh with :func:`score_caption`.

    The reference for equality tests and the baseline of ``bench/retrieval.py``.
    """

    class _Fresh(CaptionScorer):
        def score(self, hyp_id: int, ref_set: int) -> tuple[float, float, float, float]:
            s = score_caption(self.texts[hyp_id], [self.texts[r] for r in self.reference_sets[ref_set]])
            return tuple(s[m] for m in METRICS)  # type: ignore[return-value]

    text_pair_np = as_numpy(text_pair).astype(np.int64)
    pair_texts = [np.flatnonzero(text_pair_np == p) for p in range(as_numpy(sim).shape[0])]
    return caption_retrieval_scores(sim, text_pair, captions, changed, rounds, top_k, seed,
                                    scorer=_Fresh(captions, pair_texts))

