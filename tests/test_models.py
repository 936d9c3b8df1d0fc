"""Models: every registered part builds; open_clip / transformers / MiniLM / USE towers;
the multilanguage configuration; recipes; a short overfit of each dual-encoder variant.

Nothing is downloaded: open_clip models are rsir's tiny config (random or a local file),
transformers models are a tiny BertConfig saved to a tmp dir, MiniLM and USE come from
their installed PyPI packages.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsir.config import LossConfig, ModelConfig, TowerConfig, load_config
from rsir.losses import create_loss
from rsir.models import create_model, list_models
from rsir.models.dual_encoder import DualEncoder
from rsir.models.registry import FUSIONS, HEADS, IMAGE_TOWERS, MODELS, TEXT_TOWERS
from rsir.models.text_towers import HFTextTower, minilm_dir, tokens_to
from rsir.models.towers import OpenClipImageTower, OpenClipTextTower, create_open_clip
from test_config import archive_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = {"model_name": "rsir-tiny"}
WORDS = [
    "a", "an", "the", "of", "in", "on", "near", "is", "are", "there", "many", "some", "several",
    "one", "two", "three", "green", "red", "blue", "white", "tree", "trees", "building",
    "buildings", "river", "road", "car", "cars", "boat", "boats", "harbor", "forest", "parking",
    "lot", "plane", "airport", "beside",
]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A from-scratch 2-layer BERT (32-d) and a word-level vocab, saved like a real model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _n_trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _n_params(*parts) -> int:
    total = 0
    for part in parts:
        if isinstance(part, torch.nn.Parameter):
            total += part.numel()
        else:
            total += sum(p.numel() for p in part.parameters())
    return total


# ---------------------------------------------------------------------------------------
# Every registered name builds with tiny options
# ---------------------------------------------------------------------------------------

# Tiny options per registered name. A name missing here is built with the ``tiny_options``
# dict its builder carries (``build_x.tiny_options = {...}``; ModelConfig fields for a
# model), else with its defaults: register a part, and this test builds it.
TINY_OPTIONS = {
    "image_towers": {"open_clip": TINY},
    "text_towers": {"open_clip": TINY, "minilm": {}, "muse": {}},  # hf: the tiny BERT dir
    "fusions": {"tff": {"heads": 4, "stages": 1}},
    "models": {"dual_encoder": {}},
}
REGISTRIES = {"image_towers": IMAGE_TOWERS, "text_towers": TEXT_TOWERS, "fusions": FUSIONS,
              "heads": HEADS, "models": MODELS}


def _tiny(kind: str, name: str) -> dict:
    if name in TINY_OPTIONS.get(kind, {}):
        return dict(TINY_OPTIONS[kind][name])
    return dict(getattr(REGISTRIES[kind].get(name), "tiny_options", {}))


def test_every_registered_name_builds(tiny_bert_dir: Path) -> None:
    names = list_models()
    assert set(names) == {"models", "image_towers", "text_towers", "fusions", "heads"}
    assert {"open_clip"} <= set(names["image_towers"])
    assert {"open_clip", "hf", "minilm", "muse"} <= set(names["text_towers"])
    assert {"gff_concat", "gff_sub", "tff"} <= set(names["fusions"])
    assert {"ffn", "linear", "identity"} <= set(names["heads"])
    assert "dual_encoder" in names["models"]

    images = torch.randn(2, 3, 64, 64)
    for name in names["image_towers"]:
        tower = IMAGE_TOWERS.build(name, **_tiny("image_towers", name))
        out = tower(images)
        assert out["global"].shape == (2, tower.width), name
        assert out["tokens"].shape[0] == 2 and out["tokens"].shape[-1] == tower.token_width, name
    for name in names["text_towers"]:
        opts = {"model_dir": str(tiny_bert_dir)} if name == "hf" else _tiny("text_towers", name)
        tower = TEXT_TOWERS.build(name, **opts)
        if name == "muse":  # loads 30 MB of weights on first use: see test_muse_*
            assert tower.width == 512 and not list(tower.parameters())
            continue
        feats = tower(tower.tokenize(["two green trees", "a boat in a harbor"]))
        assert feats.shape == (2, tower.width), name
    t = {"global": torch.randn(2, 32), "tokens": torch.randn(2, 16, 32)}
    for name in names["fusions"]:
        fusion = FUSIONS.build(name, width=32, token_width=32, **_tiny("fusions", name))
        assert fusion(t, t).shape == (2, fusion.out_dim), name
    for name in names["heads"]:
        head = HEADS.build(name, **{"in_dim": 32, "out_dim": 32, **_tiny("heads", name)})
        assert head(torch.randn(2, 32)).shape == (2, 32), name
    for name in names["models"]:
        model = create_model(ModelConfig(name=name, **_tiny("models", name)))
        assert isinstance(model, torch.nn.Module), name


def test_unknown_names_and_options_are_errors() -> None:
    with pytest.raises(KeyError, match="valid: .*gff_concat.*tff"):
        FUSIONS.get("nope")
    with pytest.raises(TypeError, match="no option 'layers'"):
        FUSIONS.build("tff", width=8, token_width=8, layers=2)
    with pytest.raises(KeyError, match="unknown text tower"):
        TEXT_TOWERS.get("bert")


# ---------------------------------------------------------------------------------------
# open_clip towers
# ---------------------------------------------------------------------------------------


def test_open_clip_towers_load_a_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    clip = create_open_clip("rsir-tiny").eval()
    ckpt = tmp_path / "rsir-tiny.pt"
    torch.save(clip.state_dict(), ckpt)

    image_tower = OpenClipImageTower("rsir-tiny", pretrained=str(ckpt)).eval()
    text_tower = OpenClipTextTower("rsir-tiny", pretrained=str(ckpt)).eval()
    images = torch.randn(2, 3, 64, 64)
    tokens = text_tower.tokenize(["two green trees", "a harbor"])
    with torch.no_grad():
        assert torch.equal(image_tower(images)["global"], clip.encode_image(images))
        assert torch.equal(text_tower(tokens), clip.encode_text(tokens))
        # a second random model differs: the weights really came from the file
        assert not torch.equal(OpenClipImageTower("rsir-tiny").eval()(images)["global"],
                               clip.encode_image(images))
    with pytest.raises(FileNotFoundError, match="no such file"):
        OpenClipImageTower("rsir-tiny", pretrained=str(tmp_path / "missing" / "w.pt"))


def test_open_clip_image_tower_outputs_global_and_patch_tokens() -> None:
    tower = OpenClipImageTower(**TINY).eval()
    out = tower(torch.randn(3, 3, 64, 64))
    # rsir-tiny: 64 px, 8 px patches -> 8×8 = 64 patch tokens (class token excluded), width 128
    assert out["global"].shape == (3, 128) and tower.width == 128
    assert out["tokens"].shape == (3, 64, 128) and tower.token_width == 128


def test_open_clip_freeze_and_unfreeze_last() -> None:
    total = _n_trainable(OpenClipImageTower(**TINY))
    assert _n_trainable(OpenClipImageTower(**TINY, freeze=True)) == 0
    tower = OpenClipImageTower(**TINY, freeze=True, unfreeze_last=2)
    v = tower.visual
    blocks = list(v.transformer.resblocks)
    assert len(blocks) == 4
    # the last two blocks plus what follows them (ln_post, proj), nothing else
    assert _n_trainable(tower) == _n_params(*blocks[-2:], v.ln_post, v.proj) < total
    assert not v.conv1.weight.requires_grad and not blocks[0].attn.in_proj_weight.requires_grad

    text = OpenClipTextTower(**TINY, freeze=True, unfreeze_last=1)
    c = text.clip
    assert _n_trainable(text) == _n_params(c.transformer.resblocks[-1], c.ln_final,
                                           c.text_projection)
    assert _n_trainable(OpenClipTextTower(**TINY, freeze=True)) == 0
    with pytest.raises(ValueError, match="unfreeze_last=5"):
        OpenClipImageTower(**TINY, freeze=True, unfreeze_last=5)


def test_open_clip_widened_patch_embedding_keeps_uniform_response() -> None:
    torch.manual_seed(0)
    rgb = OpenClipImageTower(**TINY)
    torch.manual_seed(0)
    six = OpenClipImageTower(**TINY, in_channels=6)
    assert six.visual.conv1.in_channels == 6
    uniform = torch.full((1, 3, 64, 64), 0.3)
    torch.testing.assert_close(six.visual.conv1(torch.full((1, 6, 64, 64), 0.3)),
                               rgb.visual.conv1(uniform))
    assert six(torch.randn(2, 6, 64, 64))["global"].shape == (2, 128)


def test_open_clip_gap_pooling() -> None:
    """Multilanguage paper: global average pooling of the token outputs, class token
    ignored, then CLIP's linear projection of the visual feature to the text width."""
    tower = OpenClipImageTower(**TINY, pool="gap").eval()
    out = tower(torch.randn(2, 3, 64, 64))
    # tokens are ln_post'ed patch tokens without the class token
    torch.testing.assert_close(out["global"], out["tokens"].mean(dim=1) @ tower.visual.proj)

    torch.manual_seed(0)
    text = OpenClipTextTower(**TINY, pool="gap").eval()
    tokens = text.tokenize(["two green trees near a river", "a harbor"])
    eot = tokens.argmax(dim=-1)
    with torch.no_grad():
        pooled = text(tokens)
        # padding after the end-of-text token is ignored (causal attention + mask)
        noisy = tokens.clone()
        for i, e in enumerate(eot.tolist()):
            noisy[i, e + 1:] = torch.randint(1, 1000, (tokens.shape[1] - e - 1,))
        torch.testing.assert_close(text(noisy), pooled)
        # the start token's own output is not averaged: changing only its embedding row...
        # ...would change every later token, so check the mean by hand instead
        c = text.clip
        x = c.token_embedding(tokens) + c.positional_embedding
        x = c.ln_final(c.transformer(x, attn_mask=c.attn_mask))
        by_hand = torch.stack([x[i, 1:e + 1].mean(0) for i, e in enumerate(eot.tolist())])
        torch.testing.assert_close(pooled, by_hand @ c.text_projection)
    with pytest.raises(ValueError, match="pool"):
        OpenClipImageTower(**TINY, pool="max")


# ---------------------------------------------------------------------------------------
# transformers towers
# ---------------------------------------------------------------------------------------


def test_hf_tower_tokenize_and_pooling(tiny_bert_dir: Path) -> None:
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(str(tiny_bert_dir), local_files_only=True).eval()
    texts = ["two green trees near a river", "a boat"]
    for pooling in ("cls", "gap", "mean"):
        tower = HFTextTower(str(tiny_bert_dir), pooling=pooling, max_length=16).eval()
        tokens = tower.tokenize(texts)
        assert set(tokens) == {"input_ids", "attention_mask"}
        assert tokens["input_ids"].shape == (2, 16) and tokens["input_ids"].dtype == torch.long
        assert tokens["attention_mask"].sum(1).tolist() == [8, 4]  # [CLS] words [SEP]
        assert (tokens["input_ids"] != 1).all()  # every word is in the vocab
        with torch.no_grad():
            out = tower(tokens)
            hidden = reference(**tokens).last_hidden_state  # the saved weights were loaded
            # padding is masked: the length we pad to does not change the feature
            longer = HFTextTower(str(tiny_bert_dir), pooling=pooling, max_length=24).eval()
            torch.testing.assert_close(longer(longer.tokenize(texts)), out, atol=1e-5, rtol=0)
            shortest = HFTextTower(str(tiny_bert_dir), pooling=pooling, padding="longest").eval()
            short_tokens = shortest.tokenize(texts)
            assert short_tokens["input_ids"].shape == (2, 8)
            torch.testing.assert_close(shortest(short_tokens), out, atol=1e-5, rtol=0)
        first, second = hidden[0, :8], hidden[1, :4]
        if pooling == "cls":
            expected = torch.stack([first[0], second[0]])
        elif pooling == "gap":  # CLS ignored, [SEP] kept
            expected = torch.stack([first[1:].mean(0), second[1:].mean(0)])
        else:  # sentence-transformers mean pooling: every real token
            expected = torch.stack([first.mean(0), second.mean(0)])
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_hf_tower_freeze_random_init_and_errors(tiny_bert_dir: Path, tmp_path: Path) -> None:
    tower = HFTextTower(str(tiny_bert_dir), freeze=True, unfreeze_last=1)
    layers = tower.model.encoder.layer
    assert _n_trainable(tower) == _n_params(layers[-1]) > 0
    frozen = HFTextTower(str(tiny_bert_dir), freeze=True).train()
    assert _n_trainable(frozen) == 0
    assert not frozen.model.training  # a frozen encoder is a fixed feature extractor: no dropout
    assert tower.train().model.training  # a partly trainable one trains
    scratch = HFTextTower(str(tiny_bert_dir), pretrained=False)
    loaded = HFTextTower(str(tiny_bert_dir))
    assert not torch.equal(scratch.model.embeddings.word_embeddings.weight,
                           loaded.model.embeddings.word_embeddings.weight)
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFTextTower(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="pooling"):
        HFTextTower(str(tiny_bert_dir), pooling="max")


def test_dual_encoder_with_dict_and_list_tokens(tiny_bert_dir: Path) -> None:
    cfg = ModelConfig(text_tower=TowerConfig("hf", {"model_dir": str(tiny_bert_dir),
                                                    "pooling": "gap"}))
    model = create_model(cfg)
    tokens = model.tokenize(["two green trees", "a boat", "one red car"])
    assert isinstance(tokens, dict)
    out = model({"image": torch.randn(3, 3, 64, 64), "tokens": tokens_to(tokens, "cpu")})
    assert out["image_features"].shape == out["text_features"].shape == (3, 128)
    create_loss(LossConfig())(**out)["loss"].backward()
    assert model.text_tower.model.embeddings.word_embeddings.weight.grad is not None

    muse = create_model(ModelConfig(text_tower=TowerConfig("muse", {}), fusion="gff_concat"))
    tokens = muse.tokenize(["two green trees", "deux arbres verts"])
    assert tokens == ["two green trees", "deux arbres verts"]
    assert tokens_to(tokens, "cpu") is tokens
    out = muse({"image_pair": torch.randn(2, 2, 3, 64, 64), "tokens": tokens})
    create_loss(LossConfig(name="triplet"))(**out)["loss"].backward()
    head = muse.text_head.net[0].weight
    assert head.grad is not None and head.grad.abs().sum() > 0  # the head trains on USE
    assert not list(muse.text_tower.parameters())  # USE itself is frozen (no parameters)


# ---------------------------------------------------------------------------------------
# Real pretrained text towers from PyPI packages: MiniLM (English), USE (multilingual)
# ---------------------------------------------------------------------------------------

ENGLISH = "many buildings are near a river"
PARAPHRASE = "a lot of houses are beside a river"
UNRELATED = "a plane is parked at the airport"
TRANSLATIONS = {
    "ar": "توجد العديد من المباني بالقرب من نهر",
    "fr": "de nombreux bâtiments sont près d'une rivière",
    "it": "molti edifici sono vicino a un fiume",
}


def test_minilm_matches_sentence_transformers_and_ranks_paraphrases() -> None:
    from sentence_transformers import SentenceTransformer

    tower = TEXT_TOWERS.build("minilm", freeze=True).eval()
    assert tower.width == 384 and _n_trainable(tower) == 0
    assert (minilm_dir() / "model.safetensors").is_file()
    texts = [ENGLISH, PARAPHRASE, UNRELATED]
    with torch.no_grad():
        ours = F.normalize(tower(tower.tokenize(texts)), dim=-1)
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    reference = torch.from_numpy(st.encode(texts, convert_to_numpy=True))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    sim = ours @ ours.T  # measured: paraphrase 0.79, unrelated 0.04
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.3


def test_muse_translations_are_closer_than_an_unrelated_sentence() -> None:
    tower = TEXT_TOWERS.build("muse")
    texts = [ENGLISH, UNRELATED, *TRANSLATIONS.values()]
    emb = tower(tower.tokenize(texts))
    assert emb.shape == (5, 512) and emb.dtype == torch.float32 and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))  # USE returns unit vectors
    sim = emb @ emb.T
    unrelated = sim[0, 1].item()  # measured 0.16
    for i, lang in enumerate(TRANSLATIONS, start=2):
        # measured: ar 0.85, fr 0.89, it 0.93
        assert sim[0, i] > 0.75 > unrelated + 0.4, lang
        assert sim[i, 1] < 0.35, lang  # the translation is not close to the unrelated one
    clone = pickle.loads(pickle.dumps(tower))  # the numpy encoder is not pickled...
    assert clone._use is None
    torch.testing.assert_close(clone(texts[:1]), emb[:1])  # ...and reloads on first use
    with pytest.raises(TypeError, match="list of strings"):
        tower("one string")


def test_muse_cache_returns_the_encoded_vectors_and_stays_bounded() -> None:
    tower = TEXT_TOWERS.build("muse", cache_size=3)
    first = tower([ENGLISH, UNRELATED, ENGLISH])
    calls = []
    encoder = tower._encoder()
    tower._use = type("Spy", (), {"encode": lambda _, t: calls.append(list(t)) or encoder.encode(t)})()
    again = tower([UNRELATED, ENGLISH])  # both cached: USE is not called
    assert calls == [] and torch.equal(again, first[[1, 0]]) and torch.equal(first[0], first[2])
    fresh = tower([*TRANSLATIONS.values()])  # three new strings: the two old ones are evicted
    assert calls == [list(TRANSLATIONS.values())] and len(tower._cache) == 3
    assert ENGLISH not in tower._cache
    expected = np.asarray(encoder.encode(list(TRANSLATIONS.values())), dtype=np.float32)
    torch.testing.assert_close(fresh, torch.from_numpy(expected))


# ---------------------------------------------------------------------------------------
# Multilanguage configuration and the recipes
# ---------------------------------------------------------------------------------------


def test_multilanguage_model_is_a_dual_encoder_config() -> None:
    """GAP for both towers, CLIP's projection of the visual feature to the text width,
    identity heads, L2 normalisation: the rsir-tiny stand-in of the multilingual recipes."""
    cfg = ModelConfig(
        image_tower=TowerConfig("open_clip", {**TINY, "pool": "gap"}),
        text_tower=TowerConfig("open_clip", {**TINY, "pool": "gap"}),
        head="identity", embed_dim=128,
    )
    model = create_model(cfg, LossConfig(temperature=0.07)).eval()
    assert isinstance(model, DualEncoder)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.encode_image(images)
        tower = model.image_tower(images)
    torch.testing.assert_close(feats, F.normalize(tower["tokens"].mean(1) @
                                                  model.image_tower.visual.proj, dim=-1))
    text = model.encode_text(model.tokenize(["مبانٍ قرب نهر", "des bateaux"]))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)


RECIPES = {
    "levircc_gff_concat.yaml": "gff_concat",
    "levircc_gff_sub.yaml": "gff_sub",
    "levircc_tff.yaml": "tff",
    "dubaiccd_gff_concat.yaml": "gff_concat",
    "dubaiccd_gff_sub.yaml": "gff_sub",
    "dubaiccd_tff.yaml": "tff",
    "rsicd_multilingual.yaml": None,
    "rsitmd_multilingual.yaml": None,
    "ucm_multilingual.yaml": None,
}
TINY_OVERRIDES = [
    "model.image_tower.options.model_name=rsir-tiny",
    "model.image_tower.options.pretrained=null",
    "model.text_tower.options.model_name=rsir-tiny",
    "model.text_tower.options.pretrained=null",
]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_loads_with_the_papers_hyperparameters(recipe: str, tmp_path: Path) -> None:
    path = REPO / "configs" / recipe
    archive = archive_overrides(path, tmp_path / "shards")  # Dubai-CCD: the archive's band stats
    cfg = load_config(path, archive)
    assert cfg.model.name == "dual_encoder"
    fusion = RECIPES[recipe]
    if fusion:  # time-series paper: SGD bs 32 lr 0.01 wd 5e-4 momentum 0.9, 30 epochs
        assert cfg.data.task == "pair" and cfg.model.fusion == fusion
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (
            "sgd", 0.01, 5e-4, 0.9)
        assert cfg.data.batch_size == 32 and cfg.train.epochs == 30
        assert cfg.model.head == "ffn" and cfg.model.embed_dim == 128
        assert (cfg.loss.name, cfg.loss.temperature, cfg.loss.learnable_temperature) == (
            "infonce", 0.07, True)
        assert (cfg.loss.lambda_i2t, cfg.loss.lambda_t2i) == (0.5, 0.5)
        image = cfg.model.image_tower.options
        assert image["model_name"] == "ViT-B-16" and image["pretrained"] == "openai"
        if recipe.startswith("dubaiccd"):
            assert image["in_channels"] == 6 and len(cfg.data.bands) == 6
    else:  # multilanguage paper: SGD Nesterov 0.1 -> 0.01 (40) -> 0.001 (last 20), clip 0.1
        assert cfg.data.task == "single" and cfg.data.batch_size == 120
        o = cfg.optim
        assert (o.name, o.lr, o.momentum, o.nesterov, o.schedule) == ("sgd", 0.1, 0.9, True, "step")
        assert o.milestones == [40, cfg.train.epochs - 20] and o.gamma == pytest.approx(0.1)
        assert o.grad_clip_norm == 0.1
        assert (cfg.loss.name, cfg.loss.temperature) == ("infonce", 0.07)
        assert (cfg.loss.lambda_i2t, cfg.loss.lambda_t2i) == (0.5, 0.5)
        for tower in (cfg.model.image_tower, cfg.model.text_tower):
            assert tower.name == "open_clip" and tower.options["pool"] == "gap"
            assert tower.options["model_name"] == "ViT-B-32"
            assert tower.options["pretrained"] == "openai"
        assert cfg.model.head == "identity" and cfg.model.embed_dim == 512
        assert cfg.data.language == "random" and cfg.data.color_jitter > 0
        assert cfg.data.hflip and cfg.data.vflip
    # the same recipe with rsir-tiny towers builds (the real weights are the user's)
    tiny = load_config(path, archive + TINY_OVERRIDES + (["model.embed_dim=128"] if not fusion else []))
    model = create_model(tiny.model, tiny.loss)
    assert isinstance(model, DualEncoder)


# ---------------------------------------------------------------------------------------
# Overfit: each dual-encoder variant memorises 16 samples (R@1 = 1.0 both directions)
# ---------------------------------------------------------------------------------------


def _demo_samples(kind: str, n: int = 16) -> tuple[torch.Tensor, list[str]]:
    """``n`` demo-world rows with distinct English captions (changed pairs for ``pair``)."""
    try:
        from rsir.data import demo_world
        from rsir.data.schema import decode_image
    except ImportError:  # pragma: no cover - the demo world is optional for this test
        g = torch.Generator().manual_seed(0)
        shape = (n, 2, 3, 64, 64) if kind == "pair" else (n, 3, 64, 64)
        return torch.randn(shape, generator=g), [f"caption number {i}" for i in range(n)]

    def tensor(data: bytes) -> torch.Tensor:
        return (torch.from_numpy(decode_image(data).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.25

    images, captions, index = [], [], 0
    while len(captions) < n:
        row = (demo_world.pair_row if kind == "pair" else demo_world.scene_row)(index, 0, "train")
        index += 1
        caption = next(c["text"] for c in row["captions"] if c["lang"] == "en")
        if caption in captions or (kind == "pair" and not row["changed"]):
            continue
        image = tensor(row["image"])
        images.append(torch.stack([image, tensor(row["image_t2"])]) if kind == "pair" else image)
        captions.append(caption)
    return torch.stack(images), captions


@pytest.mark.parametrize("fusion", ["single", "gff_sub", "gff_concat", "tff"])
def test_overfit_16_samples(fusion: str) -> None:
    kind = "single" if fusion == "single" else "pair"
    images, captions = _demo_samples(kind)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead (and fight on 2 cores)
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(fusion="gff_sub" if kind == "single" else fusion,
                          fusion_options={"heads": 4} if fusion == "tff" else {})
        model = create_model(cfg)
        loss_fn = create_loss(LossConfig())
        tokens = model.tokenize(captions)
        key = "image_pair" if kind == "pair" else "image"
        steps = 80
        try:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
        except (RuntimeError, TypeError):  # pragma: no cover - no fused AdamW on this build
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps,
                                                    pct_start=0.2)
        target = torch.arange(len(captions))
        recall = (0.0, 0.0)
        for _ in range(steps):
            model.train()
            loss = loss_fn(**model({key: images, "tokens": tokens}))["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            model.eval()
            with torch.no_grad():
                out = model({key: images, "tokens": tokens})
            sim = out["image_features"] @ out["text_features"].T
            recall = ((sim.argmax(1) == target).float().mean().item(),  # image -> text R@1
                      (sim.argmax(0) == target).float().mean().item())  # text -> image R@1
            if recall == (1.0, 1.0):
                break
        assert recall == (1.0, 1.0), f"{fusion}: R@1 {recall} after {steps} steps"
    finally:
        torch.set_num_threads(threads)


def test_init_from_a_single_image_run_loads_the_towers_of_a_pair_model(tmp_path: Path) -> None:
    from rsir.models import load_weights

    single_cfg = load_config(REPO / "configs" / "demo.yaml")
    pair_cfg = load_config(REPO / "configs" / "demo.yaml", ["data.task=pair", "model.fusion=gff_concat"])
    torch.manual_seed(0)
    single = create_model(single_cfg.model, single_cfg.loss)
    torch.save({"model": {f"module.{k}": v for k, v in single.state_dict().items()}}, tmp_path / "best.pt")
    torch.manual_seed(1)
    pair = create_model(pair_cfg.model, pair_cfg.loss)
    head_before = {k: v.clone() for k, v in pair.pair_head.state_dict().items()}
    kept = load_weights(pair, tmp_path / "best.pt", strict=False)
    for k, v in single.image_tower.state_dict().items():
        assert torch.equal(pair.image_tower.state_dict()[k], v)
    assert torch.equal(pair.text_head.state_dict()["net.0.weight"], single.text_head.state_dict()["net.0.weight"])
    # the concat head's first layer takes 2 x width: the single model's does not fit it
    assert kept == ["pair_head.net.0.weight"]
    assert torch.equal(pair.pair_head.state_dict()["net.0.weight"], head_before["net.0.weight"])
    torch.save({"model": {"unrelated.weight": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_weights(pair, tmp_path / "other.pt", strict=False)


def _activations(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if type(m).__name__ in ("QuickGELU", "GELU")}


def _openai_towers(path: Path) -> list[tuple[str, dict]]:
    from rsir.config import load_yaml

    model = load_yaml(path).get("model") or {}
    return [(kind, model[kind]) for kind in ("image_tower", "text_tower")
            if isinstance(model.get(kind), dict) and model[kind].get("name") == "open_clip"
            and (model[kind].get("options") or {}).get("pretrained") == "openai"]


OPENAI_RECIPES = [p for p in sorted((REPO / "configs").glob("*.yaml")) if _openai_towers(p)]


@pytest.mark.parametrize("path", OPENAI_RECIPES, ids=lambda p: p.stem)
def test_every_recipe_with_openai_weights_builds_quickgelu(path: Path) -> None:
    """OpenAI's CLIP was trained with QuickGELU; a recipe loading it must build that variant.
    Each such tower is built from the recipe's own options (tiny architecture, no weights)."""
    assert len(OPENAI_RECIPES) >= 10  # the time-series, multilingual and WEICOM recipes
    for kind, tower in _openai_towers(path):
        options = {**tower["options"], "model_name": "rsir-tiny", "pretrained": None}
        options.pop("in_channels", None)  # widening the patch embedding is beside the point
        built = (OpenClipImageTower if kind == "image_tower" else OpenClipTextTower)(**options)
        assert _activations(built) == {"QuickGELU"}, f"{path.name} {kind}: {_activations(built)}"


def test_openai_tag_without_quickgelu_is_refused_and_the_option_builds_it() -> None:
    with pytest.raises(ValueError, match="quick_gelu: true"):
        OpenClipImageTower("rsir-tiny", pretrained="openai")
    assert _activations(OpenClipTextTower("rsir-tiny")) == {"GELU"}
    assert _activations(OpenClipTextTower("rsir-tiny", quick_gelu=True)) == {"QuickGELU"}
