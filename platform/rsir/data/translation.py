"""Machine translation of captions with a transformers seq2seq model (pure; the Ray job is
:mod:`rsir.enrich`).

The multilanguage paper translated the English captions of RSICD, UCM and RSITMD into
Arabic, French and Italian "with an online software"; this makes that step reproducible
with a local model folder. Each family chooses the target language its own way:

- **MarianMT** (``opus-mt-*``): one model per language pair (``--model fr=PATH``), or a
  multi-target model whose vocabulary holds ``>>fr<<`` / ``>>fra<<`` tokens, put in front
  of each source sentence;
- **NLLB-200**: ``forced_bos_token_id`` of the FLORES-200 code (``arb_Arab``, ``fra_Latn``,
  ``ita_Latn``), source code ``eng_Latn``;
- **M2M100**: ``forced_bos_token_id`` of ``tokenizer.get_lang_id("fr")``.

Decoding is greedy by default (``num_beams=1``), so the same model and captions give the
same translations. A row gains, per target language and in that order, one caption for
each of its ``source`` captions (in their order), NFC-normalised and tagged with the
language's ISO 639-1 code; a language the row already has is left as it is. A row with an
empty translation gains none and is quarantined with the reason.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from rsir.data.enrichment import result_table
from rsir.data.schema import CAPTION_TYPE

CAPTIONS_TYPE = pa.list_(CAPTION_TYPE)
Family = Literal["marian", "nllb", "m2m100"]

# ISO 639-1 (the schema's tags) -> ISO 639-3 (Marian's multi-target tokens, e.g. >>fra<<)
# and FLORES-200 (NLLB) codes.
ISO639_3 = {"ar": "ara", "de": "deu", "en": "eng", "es": "spa", "fr": "fra", "it": "ita",
            "ja": "jpn", "ko": "kor", "nl": "nld", "pt": "por", "ru": "rus", "tr": "tur",
            "zh": "zho"}
FLORES200 = {"ar": "arb_Arab", "de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn",
             "fr": "fra_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang",
             "nl": "nld_Latn", "pt": "por_Latn", "ru": "rus_Cyrl", "tr": "tur_Latn",
             "zh": "zho_Hans"}
# Marian's multi-target models also write Modern Standard Arabic as >>arb<<.
MARIAN_ALIASES = {"ar": ("arb",)}


def parse_languages(value: str) -> list[str]:
    """``ar,fr,it`` -> ``["ar", "fr", "it"]`` (ISO 639-1 codes, no repeats)."""
    langs = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in langs if len(v) != 2 or not v.isalpha() or not v.islower()]
    if not langs or bad:
        raise ValueError(f"--to {value!r}: expected comma-separated ISO 639-1 codes such as ar,fr,it")
    if len(set(langs)) != len(langs):
        raise ValueError(f"--to {value!r} names a language twice")
    return langs


def parse_models(values: Sequence[str], targets: Sequence[str]) -> dict[str, str]:
    """``--model PATH`` (one model for every target) or ``--model LANG=PATH`` repeated
    (e.g. one Marian pair model per language) -> target language -> model folder."""
    if len(values) == 1 and "=" not in values[0]:
        return {lang: values[0] for lang in targets}
    models: dict[str, str] = {}
    for value in values:
        lang, sep, path = value.partition("=")
        if not sep or not path:
            raise ValueError(f"--model {value!r}: give one PATH, or LANG=PATH for each language")
        if lang in models:
            raise ValueError(f"--model names {lang} twice")
        models[lang] = path
    extra, missing = set(models) - set(targets), [t for t in targets if t not in models]
    if extra or missing:
        raise ValueError(f"--model: languages {sorted(models)} do not match --to {list(targets)}")
    return models


def model_family(tokenizer: Any, model_type: str) -> Family:
    if type(tokenizer).__name__.startswith("Nllb"):
        return "nllb"
    if model_type == "m2m_100" and hasattr(tokenizer, "get_lang_id"):
        return "m2m100"
    if model_type == "marian":
        return "marian"
    raise ValueError(f"unsupported translation model (model_type {model_type!r}, tokenizer "
                     f"{type(tokenizer).__name__}): MarianMT, NLLB and M2M100 are supported")


@dataclass(frozen=True)
class Target:
    """How one model is steered to one target language."""

    lang: str
    model: str
    family: Family
    prefix: str = ""  # Marian multi-target: ">>fr<< "
    forced_bos_token_id: int | None = None  # NLLB, M2M100

    def describe(self) -> dict[str, Any]:
        return {"lang": self.lang, "model": self.model, "family": self.family,
                "prefix": self.prefix or None, "forced_bos_token_id": self.forced_bos_token_id}


def resolve_target(tokenizer: Any, model_type: str, lang: str, source: str, model: str,
                   single_target: bool) -> Target:
    """The :class:`Target` of ``lang`` for this model; an error names what is missing."""
    family = model_family(tokenizer, model_type)
    if family == "nllb":
        if lang not in FLORES200 or source not in FLORES200:
            raise ValueError(f"{model}: no FLORES-200 code known for {lang if lang not in FLORES200 else source}")
        token_id = tokenizer.convert_tokens_to_ids(FLORES200[lang])
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"{model}: NLLB tokenizer has no language code {FLORES200[lang]}")
        return Target(lang, model, family, forced_bos_token_id=int(token_id))
    if family == "m2m100":
        try:
            return Target(lang, model, family, forced_bos_token_id=int(tokenizer.get_lang_id(lang)))
        except KeyError:
            raise ValueError(f"{model}: M2M100 tokenizer has no language {lang}") from None
    vocab = tokenizer.get_vocab()
    codes = (lang, ISO639_3.get(lang, lang), *MARIAN_ALIASES.get(lang, ()))
    prefixes = [f">>{c}<<" for c in codes if f">>{c}<<" in vocab]
    if prefixes:
        return Target(lang, model, family, prefix=prefixes[0] + " ")
    if not single_target:
        raise ValueError(f"{model}: a Marian model with no >>{lang}<< token translates into one "
                         "language only; give one model per language: --model LANG=PATH")
    return Target(lang, model, family)


def load_translator(path: str, device: str = "cpu") -> tuple[Any, Any]:
    """Tokenizer and seq2seq model from a local folder (nothing is downloaded)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"translation model {folder}: no config.json there (a local "
                                "transformers model folder, e.g. from save_pretrained)")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True)
    return tokenizer, model.to(device).eval()


def resolve_targets(models: Mapping[str, str], source: str) -> list[Target]:
    """Every target's :class:`Target`, from the tokenizers and configs (no weights loaded)."""
    from transformers import AutoConfig, AutoTokenizer

    per_model: dict[str, int] = {}
    for path in models.values():
        per_model[path] = per_model.get(path, 0) + 1
    targets = []
    for lang, path in models.items():
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"translation model {path} (for {lang}): no config.json there")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        targets.append(resolve_target(tokenizer, model_type, lang, source, path, per_model[path] == 1))
    return targets


def clean_caption(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


@dataclass(frozen=True)
class TranslateOptions:
    source: str = "en"
    batch_size: int = 32  # sentences per generate() call
    max_new_tokens: int = 128
    num_beams: int = 1


class CaptionTranslator:
    """``map_batches`` callable: rows (``path``, ``id``, ``captions``) -> one result row each
    (:func:`~rsir.data.enrichment.result_schema` of ``captions``): the captions to add."""

    def __init__(self, targets: Sequence[Target], options: TranslateOptions, device: str = "cpu",
                 torch_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.targets, self.options, self.device = list(targets), options, device
        self.models = {t.model: load_translator(t.model, device) for t in self.targets}
        for target in self.targets:
            if target.family in ("nllb", "m2m100"):
                tokenizer = self.models[target.model][0]
                tokenizer.src_lang = FLORES200[options.source] if target.family == "nllb" else options.source

    def translate(self, target: Target, texts: Sequence[str]) -> list[str]:
        """``texts`` in ``target``'s language, batched by length (the order is kept)."""
        import torch

        tokenizer, model = self.models[target.model]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        step = self.options.batch_size
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            enc = tokenizer([target.prefix + texts[i] for i in idx], return_tensors="pt",
                            padding=True, truncation=True).to(self.device)
            kwargs = {} if target.forced_bos_token_id is None else {
                "forced_bos_token_id": target.forced_bos_token_id}
            with torch.inference_mode():
                generated = model.generate(**enc, num_beams=self.options.num_beams, do_sample=False,
                                           max_new_tokens=self.options.max_new_tokens, **kwargs)
            for i, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                out[i] = clean_caption(text)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths, ids = batch.column("path").to_pylist(), batch.column("id").to_pylist()
        captions = [c or [] for c in batch.column("captions").to_pylist()]
        added: list[list[dict[str, str]]] = [[] for _ in ids]
        reasons: list[str | None] = [None] * len(ids)
        for target in self.targets:
            # (row, caption index) of every source caption of a row without this language
            todo = [(r, i) for r, caps in enumerate(captions)
                    if not any(c["lang"] == target.lang for c in caps)
                    for i, c in enumerate(caps) if c["lang"] == self.options.source]
            texts = self.translate(target, [captions[r][i]["text"] for r, i in todo])
            for (r, i), text in zip(todo, texts):
                if not text and reasons[r] is None:
                    reasons[r] = f"translate: caption {i} translated to {target.lang} is empty"
                added[r].append({"text": text, "lang": target.lang})
        return result_table(
            ({"path": p, "id": i, "value": None if r else a, "reason": r}
             for p, i, a, r in zip(paths, ids, added, reasons)), CAPTIONS_TYPE)
