"""``rsir translate``: captions machine-translated by a local seq2seq model, as a Ray Data job.

The models are tiny and randomly initialised (a ``MarianConfig`` / ``M2M100Config`` and a
SentencePiece model trained here on a few sentences), so their translations are gibberish:
the tests check structure, language tags, counts, how each family is steered to its
target language, and that the same model and input give the same output (greedy).
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rsir.data.schema import SHARD_SCHEMA, encode_image, make_row, read_table, write_shards
from rsir.data.translation import (
    CaptionTranslator,
    TranslateOptions,
    clean_caption,
    parse_languages,
    parse_models,
    resolve_targets,
)

spm = pytest.importorskip("sentencepiece", reason="the translate extra: pip install 'rsir[translate]'")

SENTENCES = [
    "a plane is parked at the airport", "two buildings stand next to a road",
    "many cars are in the parking lot", "a river crosses the green farmland",
    "ships are docked in the harbor", "a baseball field is near some houses",
]
LANG_TOKENS = [">>fr<<", ">>it<<", ">>ara<<"]  # Arabic by its ISO 639-3 code, as opus-mt-en-mul


def _sentencepiece(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n".join(SENTENCES * 3))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"), vocab_size=60,
        model_type="unigram", character_coverage=1.0, pad_id=-1, bos_id=-1, eos_id=-1, unk_id=0,
        hard_vocab_limit=False, minloglevel=2)
    return folder / "sp.model"


def tiny_marian(folder: Path, lang_tokens: list[str], seed: int = 0) -> Path:
    """A random 1-layer MarianMT (d_model 16) with a SentencePiece vocabulary; never emits
    pad/unk and at least 2 tokens, so every translation decodes to non-empty text."""
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    model_file = _sentencepiece(folder / "spm")
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for piece in lang_tokens + [sp.id_to_piece(i) for i in range(sp.get_piece_size())]:
        vocab.setdefault(piece, len(vocab))
    for name in ("source.spm", "target.spm"):
        shutil.copy(model_file, folder / name)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    shutil.rmtree(folder / "spm")
    MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                    vocab=str(folder / "vocab.json")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=2, eos_token_id=0,
        decoder_start_token_id=2, forced_eos_token_id=0)
    model = MarianMTModel(config).eval()
    model.generation_config.bad_words_ids = [[1], [2]]
    model.generation_config.min_new_tokens = 2
    model.save_pretrained(folder)
    return folder


def tiny_m2m100(folder: Path, nllb: bool) -> Path:
    """A random 1-layer M2M100 with an NLLB (FLORES-200 codes) or M2M100 (``__fr__``) tokenizer."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer, NllbTokenizer

    model_file = _sentencepiece(folder / "spm")
    if nllb:
        tokenizer = NllbTokenizer(vocab_file=str(model_file))
    else:
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        for i in range(sp.get_piece_size()):
            vocab.setdefault(sp.id_to_piece(i), len(vocab))
        (folder / "spm" / "vocab.json").write_text(json.dumps(vocab))
        tokenizer = M2M100Tokenizer(vocab_file=str(folder / "spm" / "vocab.json"), spm_file=str(model_file))
    tokenizer.save_pretrained(folder)
    shutil.rmtree(folder / "spm")
    # M2M100's language tokens come after its vocabulary (not in get_vocab)
    ids = [*tokenizer.get_vocab().values(), *getattr(tokenizer, "lang_token_to_id", {}).values()]
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=max(ids) + 1, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    M2M100ForConditionalGeneration(config).eval().save_pretrained(folder)
    return folder


def _image() -> bytes:
    return encode_image(np.full((8, 8, 3), 128, np.uint8))


def _rows() -> list[dict]:
    en = [{"text": s, "lang": "en"} for s in SENTENCES]
    return [
        make_row(id="five", split="train", image=_image(), captions=en[:5], class_name="airport"),
        make_row(id="two", split="val", image=_image(), image_t2=_image(), captions=en[4:], changed=False),
        # already has Italian: gains French and Arabic only
        make_row(id="has-it", split="test", image=_image(),
                 captions=[en[2], {"text": "molte auto nel parcheggio", "lang": "it"}, en[3]]),
        make_row(id="no-captions", split="test", image=_image()),
        make_row(id="one", split="train", image=_image(), captions=en[1:2],
                 attributes={"color": "red"}, objects=[{"box": [0, 0, 0.5, 0.5], "category": "ship"}]),
    ]


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    return tiny_marian(tmp_path_factory.mktemp("marian") / "opus-mt-en-mul-tiny", LANG_TOKENS)


@pytest.mark.ray
def test_translate_job_adds_one_caption_per_english_caption_per_language(ray_session, marian, tmp_path):
    from rsir.enrich import ActorResources, folder_sha256, translate

    rows = _rows()
    write_shards(rows[:3], tmp_path / "in", prefix="a")
    write_shards(rows[3:], tmp_path / "in", prefix="b")
    targets = resolve_targets(parse_models([str(marian)], ["fr", "it", "ar"]), "en")
    assert [t.prefix for t in targets] == [">>fr<< ", ">>it<< ", ">>ara<< "]
    run = dict(targets=targets, options=TranslateOptions(batch_size=4, max_new_tokens=6),
               resources=ActorResources(concurrency=1, num_cpus=1.0), batch_size=2)
    summary = translate(tmp_path / "in", tmp_path / "out", **run)
    assert (summary["rows"], summary["quarantined"], summary["chunks_written"]) == (5, 0, 2)

    got = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    for row in rows:
        caps = got[row["id"]]["captions"]
        original = row["captions"]
        assert caps[: len(original)] == original  # originals first, unchanged
        english = [c for c in original if c["lang"] == "en"]
        present = {c["lang"] for c in original}
        langs = [lang for lang in ("fr", "it", "ar") if lang not in present]
        added = caps[len(original):]
        # per target language, in --to order: one caption per English caption
        assert [c["lang"] for c in added] == [lang for lang in langs for _ in english], row["id"]
        for c in added:
            assert c["text"] and c["text"] == unicodedata.normalize("NFC", c["text"]).strip()
    assert len(got["five"]["captions"]) == 5 + 3 * 5 and len(got["has-it"]["captions"]) == 3 + 2 * 2
    assert got["no-captions"]["captions"] == []

    inputs = [pq.read_table(p, schema=SHARD_SCHEMA) for p in sorted((tmp_path / "in").glob("*.parquet"))]
    outputs = [pq.read_table(p, schema=SHARD_SCHEMA) for p in sorted((tmp_path / "out").glob("*.parquet"))]
    for t_in, t_out in zip(inputs, outputs, strict=True):
        for name in SHARD_SCHEMA.names:
            if name != "captions":
                assert t_out.column(name).equals(t_in.column(name)), name

    meta = json.loads((tmp_path / "out" / "_meta" / "translate.json").read_text())
    assert [(t["lang"], t["name"], t["family"], t["prefix"]) for t in meta["targets"]] == [
        ("fr", marian.name, "marian", ">>fr<< "), ("it", marian.name, "marian", ">>it<< "),
        ("ar", marian.name, "marian", ">>ara<< ")]
    assert {t["sha256"] for t in meta["targets"]} == {folder_sha256(marian)}
    assert meta["num_beams"] == 1

    # Greedy: the same model and input give the same translations; a re-run skips the chunks.
    again = translate(tmp_path / "in", tmp_path / "out2", **run)
    assert again["chunks_written"] == 2
    assert read_table(tmp_path / "out2").column("captions").equals(read_table(tmp_path / "out").column("captions"))
    assert translate(tmp_path / "in", tmp_path / "out", **run)["chunks_skipped"] == 2


def test_each_family_is_steered_to_its_target_language(tmp_path):
    from transformers import AutoTokenizer

    nllb = tiny_m2m100(tmp_path / "nllb", nllb=True)
    m2m = tiny_m2m100(tmp_path / "m2m100", nllb=False)
    pair = tiny_marian(tmp_path / "opus-mt-en-fr", [])
    targets = resolve_targets({"ar": str(nllb), "fr": str(m2m), "it": str(pair)}, "en")
    nllb_tok, m2m_tok = AutoTokenizer.from_pretrained(nllb), AutoTokenizer.from_pretrained(m2m)
    assert [t.family for t in targets] == ["nllb", "m2m100", "marian"]
    assert targets[0].forced_bos_token_id == nllb_tok.convert_tokens_to_ids("arb_Arab") != nllb_tok.unk_token_id
    assert targets[1].forced_bos_token_id == m2m_tok.get_lang_id("fr")
    assert (targets[2].prefix, targets[2].forced_bos_token_id) == ("", None)  # a one-pair model

    translator = CaptionTranslator(targets, TranslateOptions(max_new_tokens=4))
    for target in targets[:2]:  # the forced token is the first the decoder emits
        tokenizer, model = translator.models[target.model]
        enc = tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
        out = model.generate(**enc, forced_bos_token_id=target.forced_bos_token_id, max_new_tokens=4)
        assert out[:, 1].tolist() == [target.forced_bos_token_id] * 2
    assert nllb_tok.src_lang == "eng_Latn" and translator.models[str(nllb)][0].src_lang == "eng_Latn"
    assert translator.models[str(m2m)][0].src_lang == "en"
    assert len(translator.translate(targets[2], SENTENCES[:3])) == 3


def test_model_and_language_arguments(tmp_path):
    assert parse_languages("ar,fr,it") == ["ar", "fr", "it"]
    for bad in ("ar,French", "fr,fr", ""):
        with pytest.raises(ValueError, match="--to"):
            parse_languages(bad)
    assert parse_models(["/m"], ["fr", "it"]) == {"fr": "/m", "it": "/m"}
    assert parse_models(["fr=/a", "it=/b"], ["fr", "it"]) == {"fr": "/a", "it": "/b"}
    with pytest.raises(ValueError, match="do not match --to"):
        parse_models(["fr=/a"], ["fr", "it"])
    pair = tiny_marian(tmp_path / "opus-mt-en-fr", [])
    with pytest.raises(ValueError, match="one language only.*LANG=PATH"):
        resolve_targets(parse_models([str(pair)], ["fr", "it"]), "en")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_targets({"fr": str(tmp_path / "missing")}, "en")


def test_captions_are_nfc_normalised():
    decomposed = "cafe\u0301 pre\u0300s de la rivie\u0300re "
    assert clean_caption(decomposed) == "café près de la rivière"
    assert unicodedata.is_normalized("NFC", clean_caption(decomposed))
