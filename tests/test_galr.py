"""GaLR: DREA on hand-made boxes, collation, each part's shapes and gradients, MIDF's
dynamic weights, the recipe, and a 16-sample overfit to R@1 = 1 both ways."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rsir.config import LossConfig, ModelConfig, load_config
from rsir.losses import create_loss
from rsir.models import create_model
from rsir.models.galr import (
    MIDF,
    GaLR,
    GlobalBranch,
    LocalGCN,
    adjacency_distance,
    area_ranks,
    boosted_adjacency,
    collate_objects,
    drea_adjacency,
    merge_objects,
    merge_threshold_distance,
)
from rsir.models.galr_text import BiGRUTextEncoder, WordVocab, split_words

REPO = Path(__file__).resolve().parents[1]
CATS = ["car", "building", "tree"]
TINY = {
    "backbone": "tiny", "widths": [8, 16, 32, 64], "image_size": 32, "node_dim": 16,
    "max_objects": 6, "heads": 4, "ff_dim": 64, "dynamic_dim": 32, "attn_dropout": 0.0,
    "dynamic_dropout": 0.0, "word_dim": 32, "text_hidden": 32, "max_words": 12,
    "categories": CATS,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small ops on a shared 2-core machine run faster (and steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def d_a(s: float) -> float:
    """Eq. 12 written out for a squared distance ``s``."""
    return math.exp(-s) * (1 - s)


def gain(m: int, n: int, boost: float = 1.15) -> float:
    """Eq. 18's factor for area ranks m, n."""
    return boost * math.exp(1 - math.sqrt(m * n))


def sq_box(cx: float, cy: float, half: float = 0.05) -> list[float]:
    return [cx - half, cy - half, cx + half, cy + half]


# ------------------------------------------------------------------------------- DREA


def test_adjacency_distance_is_eq12():
    c = torch.tensor([[0.0, 0.0], [0.3, 0.4], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    d = adjacency_distance(c)
    assert d.shape == (4, 4)
    assert torch.allclose(d.diagonal(), torch.ones(4, dtype=torch.float64))
    assert d[0, 1].item() == pytest.approx(d_a(0.25))  # 0.3² + 0.4²
    assert d[0, 2].item() == pytest.approx(0.0)  # distance 1
    assert d[0, 3].item() == pytest.approx(d_a(2.0))  # beyond 1: slightly negative
    assert d[0, 3].item() < 0
    assert torch.allclose(d, d.T)
    # d_A > 0.8 <=> squared distance below ~0.1084 (|dx| ~ 0.33 of the image)
    s = merge_threshold_distance(0.8)
    assert d_a(s) == pytest.approx(0.8, abs=1e-9) and 0.108 < s < 0.109


def test_drea_merges_near_same_category_pairs_only():
    boxes = [
        [0.10, 0.10, 0.20, 0.20],  # 0 car, centre (0.15, 0.15), area 0.01
        [0.20, 0.10, 0.30, 0.20],  # 1 car, centre (0.25, 0.15): s = 0.01 -> d_A 0.980: merge
        [0.80, 0.80, 0.90, 0.90],  # 2 car, far away: kept
        [0.10, 0.20, 0.30, 0.40],  # 3 building, centre (0.2, 0.3), near 0 but another class
    ]
    cats = ["car", "car", "car", "building"]
    g = drea_adjacency(boxes, cats, scores=[0.9, 0.6, 0.5, 0.7])
    # nodes sorted by area: building 0.04, merged cars 0.01 + 0.01, far car 0.01
    assert g.categories == ["building", "car", "car"]
    assert g.members == [[3], [0, 1], [2]]
    assert np.allclose(g.areas, [0.04, 0.02, 0.01])
    assert np.allclose(g.centers, [[0.2, 0.3], [0.2, 0.15], [0.85, 0.85]])  # eq. 14
    assert np.allclose(g.scores, [0.7, 0.9, 0.5])  # eq. 16: max
    assert np.allclose(g.boxes[1], [0.1, 0.1, 0.3, 0.2])  # union box
    expected = np.empty((3, 3))
    expected[0, 0], expected[1, 1], expected[2, 2] = 1.15, 1.15 / math.e, 1.15 / math.e**2
    expected[0, 1] = expected[1, 0] = gain(1, 2) * d_a(0.15**2)  # (0.2,0.3)-(0.2,0.15)
    expected[0, 2] = expected[2, 0] = gain(1, 3) * d_a(0.65**2 + 0.55**2)
    expected[1, 2] = expected[2, 1] = gain(2, 3) * d_a(0.65**2 + 0.70**2)
    assert np.allclose(g.adjacency, expected)
    assert g.adjacency[0, 1] == pytest.approx(0.7263607, abs=1e-6)


def test_merge_threshold_edge_and_chain_order():
    # squared distance 0.1 (d_A 0.814) merges, 0.13 (d_A 0.764) does not
    near = merge_objects([sq_box(0.2, 0.5), sq_box(0.5, 0.6)], ["car", "car"])
    far = merge_objects([sq_box(0.2, 0.5), sq_box(0.5, 0.7)], ["car", "car"])
    assert len(near[2]) == 1 and len(far[2]) == 2
    assert np.allclose(near[1], [[0.35, 0.55]]) and near[2][0] == pytest.approx(0.02)
    # a tie between pairs (0,1) and (1,2) (both d_A(0.0625) = 0.881): the lower pair merges
    # first; the merged centre 0.25 is then 0.375 from object 2: d_A(0.14) = 0.757, kept
    boxes = [sq_box(0.125, 0.5), sq_box(0.375, 0.5), sq_box(0.625, 0.5)]
    _, centers, areas, _, _, members = merge_objects(boxes, ["tree"] * 3)
    assert members == [[0, 1], [2]]
    assert np.allclose(centers, [[0.25, 0.5], [0.625, 0.5]])
    assert np.allclose(areas, [0.02, 0.01])
    # the threshold and the boost can each be switched off ("LF w/o DREA")
    g = drea_adjacency(boxes, ["tree"] * 3, threshold=None, boost=None)
    slot = {m[0]: i for i, m in enumerate(g.members)}  # equal areas: any order
    assert len(g) == 3 and g.adjacency[slot[0], slot[1]] == pytest.approx(d_a(0.0625))
    assert g.adjacency[slot[0], slot[2]] == pytest.approx(d_a(0.25))
    assert np.allclose(g.adjacency.diagonal(), 1.0)


def test_area_ranks_and_batched_boost_with_padding():
    areas = torch.tensor([[0.1, 0.3, 0.3, 0.0], [0.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert area_ranks(areas, mask).tolist() == [[3, 1, 2, 4], [1, 2, 3, 4]]
    centers = torch.rand(2, 4, 2)
    adj = boosted_adjacency(centers, areas, 1.15, mask)
    assert adj.shape == (2, 4, 4)
    assert (adj[0, 3] == 0).all() and (adj[0, :, 3] == 0).all() and (adj[1, 1:] == 0).all()
    assert adj[1, 0, 0].item() == pytest.approx(1.15)
    d01 = adjacency_distance(centers[0])[0, 1].item()
    assert adj[0, 0, 1].item() == pytest.approx(gain(3, 1) * d01, rel=1e-5)


# -------------------------------------------------------------------------- collation


def test_collate_objects_format():
    objs = [
        [
            {"box": [0.10, 0.10, 0.20, 0.20], "category": "car", "score": 0.9},
            {"box": [0.20, 0.10, 0.30, 0.20], "category": "car", "score": 0.6},
            {"box": [0.80, 0.80, 0.90, 0.90], "category": "car", "score": 0.5},
            {"box": [0.10, 0.20, 0.30, 0.40], "category": "building", "score": 0.7},
        ],
        [],
        None,
        [{"box": np.array([0.5, 0.5, 0.4, 0.4]), "category": "ufo", "score": None}],
    ]
    out = collate_objects(objs, CATS, max_objects=5)
    assert out["object_boxes"].shape == (4, 5, 4)
    assert out["object_adjacency"].shape == (4, 5, 5)
    assert out["object_categories"].dtype == torch.long and out["object_mask"].dtype == torch.bool
    assert out["object_mask"].sum(1).tolist() == [3, 0, 0, 1]
    assert out["object_categories"][0].tolist() == [2, 1, 1, 0, 0]  # building, car, car
    assert out["object_members"][0].tolist() == [1, 2, 1, 0, 0]
    assert torch.allclose(out["object_scores"][0, :3], torch.tensor([0.7, 0.9, 0.5]))
    g = drea_adjacency([o["box"] for o in objs[0]], [o["category"] for o in objs[0]],
                       [o["score"] for o in objs[0]])
    assert torch.allclose(out["object_adjacency"][0, :3, :3], torch.from_numpy(g.adjacency).float())
    assert (out["object_adjacency"][0, 3:] == 0).all() and (out["object_adjacency"][1] == 0).all()
    # unknown category -> 0; a flipped box is reordered; no score -> 1.0
    assert out["object_categories"][3, 0].item() == 0
    assert torch.allclose(out["object_boxes"][3, 0], torch.tensor([0.4, 0.4, 0.5, 0.5]))
    assert out["object_scores"][3, 0].item() == 1.0


def test_collate_keeps_the_largest_objects():
    # five far-apart objects of distinct areas; 3 slots keep the 3 largest, ranks 1..3
    objs = [[{"box": sq_box(0.15 + 0.17 * i, 0.5, 0.01 * (i + 1)), "category": CATS[i % 3],
              "score": 1.0} for i in range(5)]]
    out = collate_objects(objs, CATS, max_objects=3, threshold=None)
    assert out["object_mask"].all()
    assert torch.allclose(out["object_areas"][0], torch.tensor([0.01, 0.0064, 0.0036]))
    diag = out["object_adjacency"][0].diagonal()
    assert torch.allclose(diag, torch.tensor([1.15, 1.15 / math.e, 1.15 / math.e**2]))


# ------------------------------------------------------------------------------ parts


def test_global_branch_shapes_and_gradients():
    torch.manual_seed(0)
    branch = GlobalBranch("tiny", embed_dim=24, image_size=32, widths=[8, 16, 32, 64])
    x = torch.randn(3, 3, 32, 32)
    v = branch(x)
    assert v.shape == (3, 24)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    v.sum().backward()
    assert branch.backbone.layer1[0].weight.grad is not None
    assert branch.mvsa.lf_conv.weight.grad is not None
    assert branch.mvsa.solo_attention.weight.grad is not None
    # the paper's backbone: torchvision ResNet-18, weights=None (and another input size)
    resnet = GlobalBranch("resnet18", embed_dim=16, image_size=64)
    assert resnet.mvsa.grid == (4, 4)  # ResNet-18's f3 at 1/16
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, 16)
    assert branch(torch.randn(1, 3, 48, 48)).shape == (1, 24)  # pooled to the 32-px grid


def _objects(batch: int, slots: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random objects: 0-4 boxes of random size, category and score per image."""
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(batch):
        objs = []
        for _ in range(int(rng.integers(0, 5))):
            (x0, x1), (y0, y1) = np.sort(rng.random(2)), np.sort(rng.random(2))
            objs.append({"box": [x0, y0, x1, y1], "category": CATS[int(rng.integers(3))],
                         "score": float(rng.random())})
        lists.append(objs)
    return collate_objects(lists, CATS, slots)


def test_local_gcn_shapes_gradients_and_padding():
    torch.manual_seed(0)
    gcn = LocalGCN(num_categories=3, max_objects=6, node_dim=16, embed_dim=24)
    objs = collate_objects([[{"box": sq_box(0.2, 0.2), "category": "car", "score": 0.9},
                             {"box": sq_box(0.6, 0.3, 0.1), "category": "tree", "score": 0.8}],
                            [], [{"box": sq_box(0.5, 0.5), "category": "x", "score": 1.0}]],
                           CATS, 6)
    v = gcn(objs)
    assert v.shape == (3, 24)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    v[0].sum().backward()
    for p in (gcn.geometry.weight, gcn.category.weight, gcn.convs[0].lin.weight, gcn.out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with torch.no_grad():
        # whatever sits in padded slots does not matter
        noisy = {k: v.clone() for k, v in objs.items()}
        noisy["object_centers"][:, 2:] = torch.rand(3, 4, 2)
        noisy["object_areas"][:, 2:] = 0.5
        noisy["object_categories"][:, 2:] = 2
        assert torch.allclose(gcn(noisy), gcn(objs), atol=1e-6)
        # the adjacency does
        other = {k: v.clone() for k, v in objs.items()}
        other["object_adjacency"][0, 0, 1] = other["object_adjacency"][0, 1, 0] = 0.0
        assert not torch.allclose(gcn(other)[0], gcn(objs)[0])


def test_midf_equations_and_dynamic_weights():
    torch.manual_seed(0)
    midf = MIDF(16, heads=4, ff_dim=32, dropout=0.0, dynamic_dim=8, dynamic_dropout=0.0)
    v_g, v_l = torch.randn(5, 16, requires_grad=True), torch.randn(5, 16, requires_grad=True)
    p = midf.parts(v_g, v_l)
    assert p["v"].shape == (5, 16) and p["gamma"].shape == (5, 2)
    assert torch.allclose(p["gamma"].sum(-1), torch.ones(5))  # softmax: γ1 + γ2 = 1
    assert ((p["gamma"] > 0) & (p["gamma"] < 1)).all()
    assert torch.allclose(p["v_g_prime"], p["v_g_sga"] * torch.sigmoid(p["v_l_sga"]))  # mask
    assert torch.allclose(p["v_l_prime"], p["v_l_sga"] + p["v_g_sga"])  # supplement
    assert torch.allclose(p["v_mix"], p["v_g_prime"] + p["v_l_prime"])
    hidden = torch.sigmoid(midf.w_alpha(p["v_mix"]))
    assert torch.allclose(p["gamma"], torch.softmax(midf.w_beta(hidden), -1))  # eq. 23
    assert torch.allclose(p["v"], p["gamma"][:, :1] * p["v_g_prime"]
                          + p["gamma"][:, 1:] * p["v_l_prime"])  # eq. 24
    assert torch.allclose(midf(v_g, v_l), p["v"])
    # the weights are dynamic: they differ per sample
    assert p["gamma"][:, 0].std() > 0
    p["v"].sum().backward()
    assert v_g.grad.abs().sum() > 0 and v_l.grad.abs().sum() > 0
    assert midf.w_beta.weight.grad is not None and midf.ga_local.guided_att.v.weight.grad is not None
    # steering W_β's bias moves v to v'_g (γ1 -> 1) or to v'_l (γ2 -> 1)
    with torch.no_grad():
        midf.w_beta.bias.copy_(torch.tensor([30.0, 0.0]))
        q = midf.parts(v_g, v_l)
        assert torch.allclose(q["v"], q["v_g_prime"], atol=1e-5)
        midf.w_beta.bias.copy_(torch.tensor([0.0, 30.0]))
        q = midf.parts(v_g, v_l)
        assert torch.allclose(q["v"], q["v_l_prime"], atol=1e-5)


# ------------------------------------------------------------------------------- text


def test_vocab_build_save_load(tmp_path):
    caps = ["Two red cars, near the water.", "a red building", "two trees"]
    vocab = WordVocab.build(caps)
    assert split_words("Two red cars, near the water.") == ["two", "red", "cars", "near", "the",
                                                            "water"]
    assert vocab.index("red") == 1 and vocab.index("two") == 2  # most frequent first
    assert vocab.index("zebra") == vocab.index("<unk>")
    vocab.save_json(tmp_path / "v.json")
    again = WordVocab.from_file(tmp_path / "v.json")
    assert again.word2idx == vocab.word2idx and again.size == vocab.size
    (tmp_path / "v.txt").write_text("red\ncar\n")
    assert WordVocab.from_file(tmp_path / "v.txt").encode("Red car bus") == [1, 2, 3]
    hashed = WordVocab.hashed(100)
    assert hashed.size == 101 and 1 <= hashed.index("anything") <= 100
    with pytest.raises(FileNotFoundError, match="GaLR vocabulary"):
        WordVocab.from_file(tmp_path / "missing.json")


def test_released_rsitmd_vocab(shared_data):
    path = shared_data / "captions" / "precomp" / "vocab" / "rsitmd_splits_vocab.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    vocab = WordVocab.from_file(path)
    assert vocab.size == 1350  # indices 1..1349 plus padding
    assert vocab.encode("Baseball field beside the green park") == [
        1, 2, 3, vocab.index("<unk>"), 4, 6]  # "the" is a stop-word: not in the vocab


def test_text_encoder_shapes_gradients_and_padding():
    torch.manual_seed(0)
    vocab = WordVocab.build(["a red car near the water", "two gray buildings"])
    enc = BiGRUTextEncoder(vocab, embed_dim=16, word_dim=12, hidden=10, max_words=8)
    tok = enc.tokenize(["a red car near the water and more words beyond", "two buildings", ""])
    assert tok.shape == (3, 8) and tok.dtype == torch.long
    assert (tok[0] != 0).all() and (tok[1, 2:] == 0).all() and (tok[2] == 0).all()
    out = enc(tok)
    assert out.shape == (3, 16)
    out.sum().backward()
    assert enc.embedding.weight.grad is not None and enc.gru.weight_hh_l0_reverse.grad is not None
    with torch.no_grad():  # padding never changes a caption's vector (packed sequences)
        alone = enc(enc.tokenize(["two buildings"])[:, :2])
        assert torch.allclose(alone[0], enc(tok)[1], atol=1e-6)


# ------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def tiny_model() -> GaLR:
    torch.manual_seed(0)
    caps = ["a red car near water", "two gray buildings", "many green trees", "a road"]
    cfg = ModelConfig(name="galr", embed_dim=24, options={**TINY, "vocab": sorted(
        {w for c in caps for w in c.split()})})
    return create_model(cfg, LossConfig(name="triplet", margin=0.2))


def test_galr_forward_shapes_and_gradients(tiny_model):
    model = tiny_model
    model.train()
    images = torch.randn(4, 3, 32, 32)
    objects = _objects(4)
    tokens = model.tokenize(["a red car", "two gray buildings", "many trees", "unknown words"])
    out = model({"image": images, "objects": objects, "tokens": tokens})
    assert out["image_features"].shape == (4, 24) and out["text_features"].shape == (4, 24)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out["logit_scale"].ndim == 0
    assert not model.logit_scale.requires_grad  # triplet: no temperature to learn
    model.zero_grad()
    (out["image_features"] @ out["text_features"].T).diag().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    for part in (model.global_branch, model.local_branch, model.fusion, model.text_encoder):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0
    model.zero_grad()


def test_galr_object_inputs_agree(tiny_model):
    model = tiny_model.eval()
    images = torch.randn(2, 3, 32, 32)
    raw = [[{"box": sq_box(0.3, 0.3), "category": "car", "score": 0.8},
            {"box": sq_box(0.35, 0.3), "category": "car", "score": 0.9},
            {"box": sq_box(0.7, 0.6, 0.2), "category": "building", "score": 1.0}], []]
    objects = model.collate_objects(raw)
    assert objects["object_mask"].sum().item() == 2  # the two cars merged (DREA)
    with torch.no_grad():
        nested = model.encode_image(images, objects)
        assert torch.allclose(model.encode_image(images, raw), nested, atol=1e-6)
        tokens = model.tokenize(["a", "b"])
        flat = model({"image": images, "tokens": tokens, **objects})["image_features"]
        assert torch.allclose(flat, nested, atol=1e-6)
        fewer = {k: (v[:, :4, :4] if k == "object_adjacency" else v[:, :4])
                 for k, v in objects.items()}  # fewer slots are padded to max_objects
        assert torch.allclose(model.encode_image(images, fewer), nested, atol=1e-6)
        # no objects at all: the local branch sees an empty graph
        assert model.encode_image(images).shape == (2, 24)
        # objects matter
        moved = model.collate_objects([[{"box": sq_box(0.8, 0.1), "category": "tree",
                                         "score": 0.3}], []])
        assert not torch.allclose(model.encode_image(images, moved)[0], nested[0])


def test_galr_options_are_checked():
    with pytest.raises(TypeError, match="no option 'bogus'"):
        create_model(ModelConfig(name="galr", options={**TINY, "bogus": 1}))
    with pytest.raises(ValueError, match="backbone"):
        create_model(ModelConfig(name="galr", options={**TINY, "backbone": "vgg"}))
    # no vocab given: a hashed vocabulary; contrastive losses learn the temperature
    model = create_model(ModelConfig(name="galr", embed_dim=24, options={**TINY, "fusion": "add"}),
                         LossConfig(name="infonce"))
    assert model.logit_scale.requires_grad
    assert model.text_encoder.vocab.buckets == 8192


def test_local_gcn_is_eq11_without_bias():
    """Each GCN layer is ReLU(D~^-1/2 (A + I) D~^-1/2 X W), no bias (eq. 11; the authors'
    Linear(bias=False)), written out per image here."""
    torch.manual_seed(1)
    m = 4
    gcn = LocalGCN(num_categories=3, max_objects=m, node_dim=8, embed_dim=6)
    assert all(conv.bias is None for conv in gcn.convs)
    objs = collate_objects([[{"box": sq_box(0.2, 0.2), "category": "car", "score": 0.9},
                             {"box": sq_box(0.6, 0.3, 0.1), "category": "tree", "score": 0.8},
                             {"box": sq_box(0.7, 0.8, 0.15), "category": "building", "score": 0.7}],
                            [{"box": sq_box(0.5, 0.5), "category": "car", "score": 1.0}]], CATS, m)
    with torch.no_grad():
        got = gcn(objs)
        for b in range(2):
            keep = objs["object_mask"][b].float()[:, None]
            geo = torch.cat([objs["object_centers"][b], objs["object_areas"][b, :, None],
                             objs["object_scores"][b, :, None]], dim=1)
            x = (geo @ gcn.geometry.weight.T + gcn.geometry.bias
                 + gcn.category.weight[objs["object_categories"][b]]) * keep
            a = objs["object_adjacency"][b] + torch.eye(m)
            d = a.sum(1).clamp(min=1) ** -0.5
            a_hat = d[:, None] * a * d[None, :]
            for conv in gcn.convs:
                x = torch.relu(a_hat @ x @ conv.lin.weight.T) * keep
            want = gcn.out.weight @ x.flatten() + gcn.out.bias
            assert torch.allclose(got[b], want / want.norm(), atol=1e-6)


def test_rotation_augment_as_the_authors_random_rotation():
    from rsir.data.transforms import Augment, apply_augment

    x = torch.arange(25.0).view(1, 5, 5) + 1
    full = (0.0, 0.0, 1.0, 1.0)
    # 90 degrees counter-clockwise, nearest: exactly rot90; the first row becomes the first column
    turned = apply_augment(x, Augment(full, False, False, 1.0, 1.0, rotation=90.0), 5)
    assert torch.equal(turned, torch.rot90(x, 1, dims=(1, 2)))
    assert turned[0, :, 0].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0]
    # 45 degrees: the corners come from outside the image (black), the centre stays
    ones = apply_augment(torch.ones(1, 5, 5), Augment(full, False, False, 1.0, 1.0, rotation=45.0), 5)
    assert ones[0, [0, 0, 4, 4], [0, 4, 0, 4]].tolist() == [0.0] * 4 and ones[0, 2, 2] == 1.0
    cfg = load_config(REPO / "configs" / "rsitmd_galr.yaml")
    assert cfg.data.random_rotation == 90
    angles = [Augment.sample(np.random.default_rng(s), cfg.data).rotation for s in range(200)]
    assert 0 <= min(angles) < 10 and 80 < max(angles) <= 90
    # off (every other recipe): no angle drawn, the other draws unchanged
    off = load_config(REPO / "configs" / "rsitmd_galr.yaml", ["data.random_rotation=0"]).data
    a, b = Augment.sample(np.random.default_rng(3), off), Augment.sample(np.random.default_rng(3), cfg.data)
    assert a.rotation == 0.0 and (a.crop, a.hflip, a.vflip) == (b.crop, b.hflip, b.vflip)


def test_recipe_loads_and_builds(shared_data):
    cfg = load_config(REPO / "configs" / "rsitmd_galr.yaml")
    assert cfg.model.name == "galr" and cfg.model.embed_dim == 512
    assert cfg.loss.name == "triplet" and cfg.loss.margin == 0.2
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("adam", 1e-4, "step")
    assert (cfg.optim.step_every, cfg.optim.gamma) == (20, 0.7)
    assert cfg.train.epochs == 70 and cfg.data.batch_size == 100
    opts = cfg.model.options
    assert (opts["merge_threshold"], opts["boost"]) == (0.8, 1.15) and opts["word_dim"] == 300
    vocab = shared_data / "captions" / "precomp" / "vocab" / "rsitmd_splits_vocab.json"
    if not vocab.is_file():
        pytest.skip(f"{vocab} not found")
    cfg = load_config(REPO / "configs" / "rsitmd_galr.yaml", [f"model.options.vocab={vocab}"])
    model = create_model(cfg.model, cfg.loss)
    assert model.text_encoder.embedding.num_embeddings == 1350
    with torch.no_grad():
        out = model.eval()({"image": torch.randn(1, 3, 256, 256),
                            "objects": [[{"box": [0.1, 0.1, 0.3, 0.3], "category": "plane",
                                          "score": 0.9}]],
                            "tokens": model.tokenize(["a plane at the airport"])})
    assert out["image_features"].shape == (1, 512)


# ---------------------------------------------------------------------------- overfit


def test_galr_overfits_16_samples():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    colors, things = ["red", "gray", "green", "white"], ["cars", "roofs", "trees", "boats"]
    captions = [f"{n} {c} {t}" for n, (c, t) in zip(
        ["one", "two", "three", "four"] * 4, [(c, t) for c in colors for t in things])]
    assert len(set(captions)) == 16
    objects = [[{"box": [x0, y0, x0 + 0.2, y0 + 0.2], "category": CATS[int(rng.integers(3))],
                 "score": float(rng.uniform(0.5, 1))}
                for x0, y0 in rng.uniform(0, 0.8, size=(int(rng.integers(1, 5)), 2))]
               for _ in range(16)]
    images = torch.randn(16, 3, 32, 32)
    cfg = ModelConfig(name="galr", embed_dim=32, options={**TINY, "vocab": sorted(
        {w for c in captions for w in c.split()})})
    loss_cfg = LossConfig(name="triplet", margin=0.2)
    model, criterion = create_model(cfg, loss_cfg), create_loss(loss_cfg)
    batch = {"image": images, "objects": model.collate_objects(objects),
             "tokens": model.tokenize(captions)}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    target = torch.arange(16)
    for step in range(300):
        model.train()
        out = model(batch)
        loss = criterion(**out)["loss"]  # eq. 31, summed over negatives both ways
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                out = model(batch)
            sim = out["image_features"] @ out["text_features"].T
            r1_i2t = (sim.argmax(1) == target).float().mean().item()
            r1_t2i = (sim.argmax(0) == target).float().mean().item()
            if r1_i2t == 1.0 and r1_t2i == 1.0:
                break
    assert (r1_i2t, r1_t2i) == (1.0, 1.0), f"R@1 {r1_i2t}/{r1_t2i} after {step + 1} steps"
