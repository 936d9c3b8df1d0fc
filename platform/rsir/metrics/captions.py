"""Caption metrics (BLEU-1, BLEU-4, METEOR, ROUGE-L) and the text <-> image-pair protocol.

Hoxha et al. (text-image time-series retrieval) score retrieval with captioning metrics:
T->I takes the query text as hypothesis and the retrieved pair's captions as references;
I->T takes a retrieved caption as hypothesis and the query pair's captions as
references. Val+test merged, leave-one-out, top-5, 5 rounds with one random caption per
pair, reported for the full, change and no-change query sets; "the scores are computed
individually for each retrieved data and then averaged" (per-segment scores, not corpus
BLEU).

Two backends, named in every result (``backend``):

- ``coco`` (default; the captioning toolkit the change-captioning papers report with,
  pycocoevalcap): COCO's PTB tokenizer (lowercase, punctuation tokens dropped), BLEU with
  the closest reference length, the METEOR 1.5 jar (``-l en -norm``, paraphrase table)
  and ROUGE-L with β = 1.2 over the best precision and best recall among the references.
  The tokenizer and METEOR run Java: each once per batch of (hypothesis, references),
  never once per pair.
- ``nltk`` (fallback, used when Java or pycocoevalcap is missing, with a warning, or when
  the recipe asks for it: ``eval.caption_metrics: nltk``): BLEU and METEOR from NLTK
  (METEOR needs WordNet: ``python -m rsir.setup_offline``), ROUGE-L F-measure of the best
  reference from ``rouge-score``, all on :func:`tokenize`'s tokens. NLTK's METEOR is not
  the 1.5 jar and rouge-score's ROUGE-L is not COCO's: their numbers are not the papers'
  (tests/test_caption_metrics.py measures the gap).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from rsir.metrics.retrieval import as_numpy

log = logging.getLogger(__name__)

METRICS = ("bleu1", "bleu4", "meteor", "rougeL")
QUERY_SETS = ("full", "change", "no_change")
Backend = Literal["coco", "nltk"]
BACKENDS: tuple[str, ...] = ("coco", "nltk")
_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens, punctuation dropped: the ``nltk`` backend's tokens (COCO's
    PTB tokenizer gives the same on the Dubai-CC and LEVIR-CC captions; it differs on
    contractions, hyphens and brackets)."""
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


def score_caption_nltk(hypothesis: str, references: Sequence[str]) -> dict[str, float]:
    """The ``nltk`` backend's four metrics of one hypothesis against its references,
    computed from scratch."""
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


class NltkScorer:
    """The ``nltk`` backend: scores hypothesis texts against reference sets by id, with
    every reuse cached.

    ``texts`` are all captions; ``reference_sets[r]`` lists the text ids of reference
    set r (e.g. a pair's captions). Tokens are computed once per text, WordNet look-ups
    and stems once per word, and a ``(hypothesis id, reference set id)`` score once;
    the values equal :func:`score_caption_nltk`.
    """

    backend = "nltk"

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

    def score_batch(self, keys: Sequence[tuple[int, int]]) -> np.ndarray:
        """``[len(keys), 4]`` scores of ``(hypothesis id, reference set id)`` keys."""
        return np.array([self.score(h, r) for h, r in keys], dtype=np.float64).reshape(len(keys), 4)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """COCO's PTB tokenization of ``texts`` (space-joined tokens, lowercase, punctuation
    tokens removed), in one Java run of pycocoevalcap's ``PTBTokenizer``."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    if sorted(tokenized) != list(range(len(texts))):
        raise RuntimeError(f"PTBTokenizer returned {len(tokenized)} of {len(texts)} captions")
    return [tokenized[i][0] for i in range(len(texts))]


def coco_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """``[n, 4]`` (bleu1, bleu4, meteor, rougeL) of PTB-tokenized hypotheses against their
    PTB-tokenized references, one pycocoevalcap ``compute_score`` call per metric (one
    METEOR 1.5 Java process for all n)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return np.zeros((0, 4))
    if any(len(r) == 0 for r in references):
        raise ValueError("every hypothesis needs at least one reference")
    res = {i: [h] for i, h in enumerate(hypotheses)}
    gts = {i: list(r) for i, r in enumerate(references)}
    _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    meteor_jar = Meteor()
    try:
        _, meteor = meteor_jar.compute_score(gts, res)
    finally:
        del meteor_jar  # its __del__ ends the Java process now, not at garbage collection
    _, rouge = Rouge().compute_score(gts, res)
    return np.stack([np.asarray(bleu[0], np.float64), np.asarray(bleu[3], np.float64),
                     np.asarray(meteor, np.float64), np.asarray(rouge, np.float64)], axis=1)


class CocoScorer:
    """The ``coco`` backend over texts and reference sets by id (as :class:`NltkScorer`):
    texts PTB-tokenized once, each ``(hypothesis id, reference set id)`` scored once, the
    keys of a :meth:`score_batch` call that are new scored in one :func:`coco_scores`."""

    backend = "coco"

    def __init__(self, texts: Sequence[str], reference_sets: Sequence[Sequence[int]]) -> None:
        self.texts = list(texts)
        self.reference_sets = [list(r) for r in reference_sets]
        self.tokens = ptb_tokenize(self.texts)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def score_batch(self, keys: Sequence[tuple[int, int]]) -> np.ndarray:
        """``[len(keys), 4]`` scores of ``(hypothesis id, reference set id)`` keys."""
        new = list(dict.fromkeys(k for k in keys if k not in self._cache))
        values = coco_scores([self.tokens[h] for h, _ in new],
                             [[self.tokens[t] for t in self.reference_sets[r]] for _, r in new])
        self._cache.update(zip(new, values))
        return np.array([self._cache[k] for k in keys], dtype=np.float64).reshape(len(keys), 4)


CaptionScorer = NltkScorer | CocoScorer


def coco_available() -> str | None:
    """None when the ``coco`` backend can run; else what is missing."""
    if shutil.which("java") is None:
        return "java not found on PATH (COCO's METEOR 1.5 and PTB tokenizer are Java)"
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "pycocoevalcap is not installed"
    return None


def resolve_backend(requested: str) -> Backend:
    """The backend that will run for ``requested``: ``coco`` falls back to ``nltk``, with a
    warning, when Java or pycocoevalcap is missing."""
    if requested not in BACKENDS:
        raise ValueError(f"caption metrics backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "coco":
        missing = coco_available()
        if missing is None:
            return "coco"
        log.warning("caption metrics: %s; falling back to the nltk backend (NLTK BLEU/METEOR, "
                    "rouge-score ROUGE-L), whose numbers are not the papers'. Install a JRE "
                    "(`make install` does: default-jre-headless) for COCO's METEOR 1.5.", missing)
    return "nltk"


def make_scorer(backend: str, texts: Sequence[str], reference_sets: Sequence[Sequence[int]]) -> CaptionScorer:
    """A scorer of ``resolve_backend(backend)`` over ``texts`` and ``reference_sets``."""
    cls = CocoScorer if resolve_backend(backend) == "coco" else NltkScorer
    return cls(texts, reference_sets)


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
    backend: str = "coco",
    scorer: CaptionScorer | None = None,
) -> dict[str, Any]:
    """Caption-metric retrieval scores of the time-series paper, in [0, 1].

    ``sim`` ``[n_pairs, n_texts]`` (image pairs x captions, val+test merged);
    ``text_pair[t]`` the pair of caption t; ``captions[t]`` its text; ``changed[p]`` the
    pair's change flag. Each round draws one caption per pair (seeded). T->I: each
    pair's drawn caption queries the other pairs; each of the top-k retrieved pairs
    scores (hypothesis = query caption, references = all captions of the retrieved
    pair). I->T: each pair queries the other pairs' drawn captions; each retrieved
    caption scores (hypothesis = it, references = all captions of the query pair).
    Scores are averaged over the top-k, the queries of a query set (a pair's change flag
    decides the set of both its queries) and the rounds. The (hypothesis, references) of
    all rounds are scored together, each distinct one once.

    Returns ``{"backend": "coco"|"nltk", "scores": {query_set: {"t2i"|"i2t"|"avg":
    {metric: value}}}}``; a query set with no query is left out. ``backend`` is the one
    asked for (see :func:`resolve_backend` for the fallback); pass ``scorer`` instead to
    reuse its caches across calls on the same captions.
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
        scorer = make_scorer(backend, captions, pair_texts)
    rng = np.random.default_rng(seed)
    pairs = np.arange(n_pairs)
    # hyp[d], ref[d] [rounds, n_pairs, top_k]: hypothesis text id and reference pair of
    # each retrieved item of each query pair in direction d.
    hyp = {"t2i": np.empty((rounds, n_pairs, top_k), np.int64), "i2t": np.empty((rounds, n_pairs, top_k), np.int64)}
    ref = {d: np.empty_like(h) for d, h in hyp.items()}
    for r in range(rounds):
        drawn = np.array([rng.choice(t) for t in pair_texts])  # one caption id per pair
        sub = sim[:, drawn]  # [pairs, drawn captions]; column p is pair p's caption
        t2i_top = _top_k_excluding_self(sub.T, pairs, top_k)  # query caption -> pairs
        i2t_top = _top_k_excluding_self(sub, pairs, top_k)  # query pair -> captions
        hyp["t2i"][r], ref["t2i"][r] = np.broadcast_to(drawn[:, None], t2i_top.shape), t2i_top
        hyp["i2t"][r], ref["i2t"][r] = drawn[i2t_top], np.broadcast_to(pairs[:, None], i2t_top.shape)
    flat = np.concatenate([np.stack([hyp[d].ravel(), ref[d].ravel()], 1) for d in ("t2i", "i2t")])
    keys, inverse = np.unique(flat, axis=0, return_inverse=True)
    values = scorer.score_batch([(int(h), int(p)) for h, p in keys])[inverse.ravel()]
    per_item = dict(zip(("t2i", "i2t"), values.reshape(2, rounds, n_pairs, top_k, 4)))
    masks = {"full": np.ones(n_pairs, bool), "change": changed, "no_change": ~changed}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        # mean over rounds and top-k per query pair, then over the query set's pairs
        res = {d: dict(zip(METRICS, v.mean(axis=(0, 2))[mask].mean(0).tolist())) for d, v in per_item.items()}
        res["avg"] = {m: 0.5 * (res["t2i"][m] + res["i2t"][m]) for m in METRICS}
        out[name] = res
    return {"backend": scorer.backend, "scores": out}


def caption_retrieval_scores_uncached(
    sim: Any, text_pair: Any, captions: Sequence[str], changed: Any,
    rounds: int = 5, top_k: int = 5, seed: int = 0,
) -> dict[str, Any]:
    """The protocol with the ``nltk`` backend scoring every (hypothesis, references) afresh
    with :func:`score_caption_nltk`: the reference for equality tests and the baseline
    of ``bench/retrieval.py``."""

    class _Fresh(NltkScorer):
        def score(self, hyp_id: int, ref_set: int) -> tuple[float, float, float, float]:
            s = score_caption_nltk(self.texts[hyp_id], [self.texts[r] for r in self.reference_sets[ref_set]])
            return tuple(s[m] for m in METRICS)  # type: ignore[return-value]

    text_pair_np = as_numpy(text_pair).astype(np.int64)
    pair_texts = [np.flatnonzero(text_pair_np == p) for p in range(as_numpy(sim).shape[0])]
    return caption_retrieval_scores(sim, text_pair, captions, changed, rounds, top_k, seed,
                                    scorer=_Fresh(captions, pair_texts))
