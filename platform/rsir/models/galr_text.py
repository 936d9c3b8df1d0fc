"""GaLR's text side: a word vocabulary, a word tokenizer and the bi-GRU sentence encoder.

Paper (Yuan et al., GaLR, eqs. 7-10): words are embedded (300-d), fed to a forward and a
backward GRU, and the sentence vector is ``t = MLP(1/n * sum_i (h_i^f + h_i^b) / 2)``.

The tokenizer is a plain lowercase word splitter (``\\w+`` runs, so punctuation is dropped
as the authors' ``data.py`` drops nltk's punctuation tokens); a word outside the vocabulary
becomes ``<unk>`` (as in the authors' ``data.py``), index 0 is padding.

Vocabularies:

* the authors' released JSON (``vocab/rsitmd_splits_vocab.json``: ``{"word2idx": {word:
  idx}, "idx2word": {...}, "idx": next}``, indices from 1, ``<unk>`` included; built with
  stop-words removed, so ``the``/``a``... map to ``<unk>``): :meth:`WordVocab.from_json`;
* a plain text file, one word per line: :meth:`WordVocab.from_file`;
* built from training captions: :meth:`WordVocab.build` (then :meth:`WordVocab.save_json`
  writes the authors' format);
* none: :meth:`WordVocab.hashed` hashes words into a fixed number of buckets, so a model
  can be built with no file at all (tests, the registry loop); not the paper's setting.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD = 0
UNK = "<unk>"
_WORD = re.compile(r"\w+", re.UNICODE)


def split_words(text: str) -> list[str]:
    """Lowercase ``text`` and return its words (runs of letters/digits; punctuation dropped)."""
    return _WORD.findall(text.lower())


class WordVocab:
    """word -> index (from 1; 0 is padding). Unknown words map to ``<unk>``.

    With ``buckets`` set, the vocabulary is hashed: a word's index is
    ``1 + crc32(word) % buckets`` (no file needed; collisions are possible).
    """

    def __init__(self, word2idx: dict[str, int] | None = None, buckets: int | None = None) -> None:
        if buckets is not None:
            if buckets < 1:
                raise ValueError(f"hashed vocabulary: buckets must be >= 1, got {buckets}")
            self.word2idx: dict[str, int] = {}
            self.buckets: int | None = int(buckets)
            return
        word2idx = {str(w): int(i) for w, i in (word2idx or {}).items()}
        if any(i <= PAD for i in word2idx.values()):
            raise ValueError("vocabulary indices must start at 1 (0 is padding)")
        if UNK not in word2idx:
            word2idx[UNK] = max(word2idx.values(), default=0) + 1
        self.word2idx = word2idx
        self.buckets = None

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def from_words(cls, words: Iterable[str]) -> WordVocab:
        word2idx: dict[str, int] = {}
        for w in words:
            w = w.strip()
            if w and w not in word2idx:
                word2idx[w] = len(word2idx) + 1
        return cls(word2idx)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> WordVocab:
        """The words of ``captions`` seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for c in captions for w in split_words(c))
        words = sorted((w for w, n in counts.items() if n >= min_count),
                       key=lambda w: (-counts[w], w))
        return cls.from_words(words)

    @classmethod
    def from_json(cls, path: str | Path) -> WordVocab:
        """The authors' vocabulary JSON (``word2idx`` / ``idx2word`` / ``idx``)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("word2idx"), dict):
            raise TypeError(f"{path}: expected a JSON object with a 'word2idx' mapping")
        return cls(data["word2idx"])

    @classmethod
    def from_file(cls, path: str | Path) -> WordVocab:
        """A ``.json`` vocabulary (authors' format) or a text file with one word per line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"GaLR vocabulary {path}: no such file (give options.vocab a GaLR vocab JSON "
                "such as rsitmd_splits_vocab.json, a one-word-per-line file, or a list of words)"
            )
        if path.suffix.lower() == ".json":
            return cls.from_json(path)
        return cls.from_words(path.read_text(encoding="utf-8").splitlines())

    @classmethod
    def hashed(cls, buckets: int = 8192) -> WordVocab:
        return cls(buckets=buckets)

    # -- use ----------------------------------------------------------------------------

    def save_json(self, path: str | Path) -> None:
        """Write the authors' JSON format."""
        if self.buckets is not None:
            raise ValueError("a hashed vocabulary has no word list to save")
        data = {
            "word2idx": self.word2idx,
            "idx2word": {str(i): w for w, i in self.word2idx.items()},
            "idx": max(self.word2idx.values()) + 1,
        }
        Path(path).write_text(json.dumps(data), encoding="utf-8")

    @property
    def size(self) -> int:
        """Rows the embedding table needs (largest index + 1, padding included)."""
        if self.buckets is not None:
            return self.buckets + 1
        return max(self.word2idx.values()) + 1

    def index(self, word: str) -> int:
        if self.buckets is not None:
            return 1 + zlib.crc32(word.encode("utf-8")) % self.buckets
        return self.word2idx.get(word, self.word2idx[UNK])

    def encode(self, text: str) -> list[int]:
        return [self.index(w) for w in split_words(text)]

    def __len__(self) -> int:
        return self.size


def load_vocab(vocab: str | Path | Sequence[str] | WordVocab | None, buckets: int = 8192) -> WordVocab:
    """``options.vocab``: a file path, an inline list of words, a WordVocab, or None (hashed)."""
    if isinstance(vocab, WordVocab):
        return vocab
    if vocab is None:
        return WordVocab.hashed(buckets)
    if isinstance(vocab, (str, Path)):
        return WordVocab.from_file(vocab)
    return WordVocab.from_words(vocab)


class BiGRUTextEncoder(nn.Module):
    """Eqs. 7-10: word embedding -> bidirectional GRU -> mean over words of (h^f + h^b)/2 -> MLP.

    ``tokenize`` pads every caption to ``max_words`` (fixed width, so batches from
    different workers concatenate). The mean runs over each caption's real words only
    (packed sequences), so padding never changes a caption's vector. The MLP is
    ``Linear -> ReLU -> Linear``; the authors' code ends their text branch with
    ``ReLU(Linear(.))`` on a skip-thoughts vector instead — the paper's bi-GRU + MLP is
    followed here.
    """

    def __init__(
        self,
        vocab: WordVocab,
        embed_dim: int = 512,
        word_dim: int = 300,
        hidden: int = 512,
        num_layers: int = 1,
        dropout: float = 0.0,
        max_words: int = 48,
    ) -> None:
        super().__init__()
        self.vocab = vocab
        self.max_words = max_words
        self.width = embed_dim
        self.embedding = nn.Embedding(vocab.size, word_dim, padding_idx=PAD)
        self.gru = nn.GRU(word_dim, hidden, num_layers=num_layers, batch_first=True,
                          bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, embed_dim))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, max_words]`` word indices, 0-padded (longer captions are cut)."""
        out = torch.zeros(len(texts), self.max_words, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.vocab.encode(text)[: self.max_words]
            if ids:
                out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` indices -> ``[B, embed_dim]`` (not normalised)."""
        lengths = (tokens != PAD).sum(dim=1).clamp(min=1)  # an empty caption reads one pad
        emb = self.embedding(tokens)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        h = out.shape[-1] // 2
        states = (out[..., :h] + out[..., h:]) / 2  # (h^f_i + h^b_i) / 2, zero past the end
        mean = states.sum(dim=1) / lengths.unsqueeze(1).to(states.dtype)
        return self.mlp(mean)
