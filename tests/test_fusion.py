"""Bitemporal fusions: GFF concat / subtraction and TFF (time-series paper, III-A/B)."""

from __future__ import annotations

import pytest
import torch

from rsir.models.fusion import (
    GlobalConcatFusion,
    GlobalSubtractionFusion,
    TransformerFeatureFusion,
)
from rsir.models.registry import FUSIONS

B, T, D = 3, 16, 32  # a 4×4 patch grid of 32-d tokens


def _dates(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    t1 = {"global": torch.randn(B, 8, generator=g), "tokens": torch.randn(B, T, D, generator=g)}
    t2 = {"global": torch.randn(B, 8, generator=g), "tokens": torch.randn(B, T, D, generator=g)}
    return t1, t2


def _tff(**kw) -> TransformerFeatureFusion:
    torch.manual_seed(0)
    return TransformerFeatureFusion(width=8, token_width=D, heads=4, **kw)


def test_gff_operators() -> None:
    t1, t2 = _dates()
    cat = GlobalConcatFusion(8)
    sub = GlobalSubtractionFusion(8)
    assert cat.out_dim == 16 and sub.out_dim == 8
    # eq. (5): Concat(f^{I_t2}, f^{I_t1}), date 2 first
    torch.testing.assert_close(cat(t1, t2), torch.cat([t2["global"], t1["global"]], -1))
    torch.testing.assert_close(sub(t1, t2), t2["global"] - t1["global"])
    assert torch.equal(sub(t1, t1), torch.zeros(B, 8))  # no change, no feature


def test_tff_registered_and_shapes() -> None:
    fusion = FUSIONS.build("tff", width=8, token_width=D, heads=4, stages=2)
    assert isinstance(fusion, TransformerFeatureFusion)
    assert fusion.out_dim == 2 * D and len(fusion.stages) == 2 and len(fusion.layers) == 2
    t1, t2 = _dates()
    out = fusion(t1, t2)
    assert out.shape == (B, fusion.out_dim)
    assert torch.isfinite(out).all()
    assert len(_tff().stages) == 3 and len(_tff().layers) == 3  # the paper's l = 3 is the default
    assert len(_tff(cross_layers="single").layers) == 1
    with pytest.raises(ValueError, match="cross_layers"):
        _tff(cross_layers="parallel")


def _attention(layer, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Eqs. (7)-(9) by hand: per head softmax(Q K^T / sqrt(d_h)) V, heads concatenated, W^O."""
    attn = layer.attn
    d, h = attn.embed_dim, attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.split(d)
    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], h, d // h).transpose(1, 2)
    qh, kh, vh = heads(q @ w_q.T), heads(kv @ w_k.T), heads(kv @ w_v.T)
    a = torch.softmax(qh @ kh.transpose(-1, -2) / (d // h) ** 0.5, dim=-1) @ vh
    return a.transpose(1, 2).reshape(q.shape[0], q.shape[1], d) @ attn.out_proj.weight.T


def _layer_by_hand(layer, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    h = layer.norm1(f + _attention(layer, f, s))  # eq. (10)
    return layer.norm2(h + layer.ffn(h))  # eq. (11)


def _stage_by_hand(stage, x: torch.Tensor, side: int) -> torch.Tensor:
    b, t, c = x.shape
    r = stage.r(x.transpose(1, 2).reshape(b, c, side, side)).reshape(b, c, t).transpose(1, 2)
    return stage.norm(torch.relu(x + r))  # RSICCformer resblock: ReLU after the residual sum


def rsiccformer_reference(fusion, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """RSICCformer's MCCFormers_diff_as_Q.forward, re-stated: each cross layer recomputes
    the difference of the previous layer's outputs and attends each date to it; MBF stage
    i adds the concat of layer i's outputs to the running feature, resblock, LN."""
    outs1, outs2 = [], []
    for layer in fusion.layers:
        dif = f2 - f1
        f1, f2 = _layer_by_hand(layer, f1, dif), _layer_by_hand(layer, f2, dif)
        outs1.append(f1)
        outs2.append(f2)
    out = torch.zeros(f1.shape[0], f1.shape[1], 2 * f1.shape[2])
    for i, stage in enumerate(fusion.stages):
        out = _stage_by_hand(stage, out + torch.cat([outs1[i], outs2[i]], dim=-1), 4)
    return out.mean(dim=1)


def eq12_as_printed_reference(fusion, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """One cross layer; every stage adds the same c = Concat(f''_1, f''_2) (eq. 12)."""
    layer = fusion.layers[0]
    c = torch.cat([_layer_by_hand(layer, f1, f2 - f1), _layer_by_hand(layer, f2, f2 - f1)], dim=-1)
    out = torch.zeros_like(c)
    for stage in fusion.stages:
        out = _stage_by_hand(stage, c + out, 4)
    return out.mean(dim=1)


@pytest.mark.parametrize("cross_layers", ["stacked", "single"])
def test_tff_equals_an_independent_restatement(cross_layers: str) -> None:
    fusion = _tff(cross_layers=cross_layers).eval()
    t1, t2 = _dates()
    reference = rsiccformer_reference if cross_layers == "stacked" else eq12_as_printed_reference
    with torch.no_grad():
        expected = reference(fusion, t1["tokens"], t2["tokens"])
        torch.testing.assert_close(fusion(t1, t2), expected, rtol=0, atol=2e-5)
    # the two readings are different models (same weights where they share them)
    stacked, single = _tff().eval(), _tff(cross_layers="single").eval()
    single.load_state_dict({k: v for k, v in stacked.state_dict().items()
                            if not k.startswith(("layers.1", "layers.2"))})
    with torch.no_grad():
        assert (stacked(t1, t2) - single(t1, t2)).abs().max() > 1e-3


def test_tff_identical_dates_attention_contributes_nothing() -> None:
    """s = f2 - f1 = 0 is the key and value at every layer: with the paper's bias-free
    W^K, W^V, W^O the multi-head output is exactly zero, so eq. (10) reduces to LN(f) and
    no attention weight can change the fused feature; with a change, they matter."""
    fusion = _tff().eval()
    t1, t2 = _dates()
    f = t1["tokens"]
    zero = torch.zeros_like(f)
    for layer in fusion.layers:
        assert torch.equal(layer.cross_attend(f, zero), zero)

    def redraw_attention(module) -> None:
        with torch.no_grad():
            for layer in module.layers:
                for p in layer.attn.parameters():
                    p.normal_()

    same = fusion(t1, t1)
    redraw_attention(fusion)
    assert torch.equal(fusion(t1, t1), same)

    changed = _tff().eval()
    before = changed(t1, t2)
    redraw_attention(changed)
    assert not torch.allclose(changed(t1, t2), before)


def test_tff_gradients_reach_every_parameter() -> None:
    fusion = _tff().train()
    t1, t2 = _dates()
    t1 = {k: v.clone().requires_grad_(True) for k, v in t1.items()}
    fusion(t1, t2).pow(2).sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert t1["tokens"].grad.abs().sum() > 0
    assert t1["global"].grad is None  # TFF reads only the patch tokens


def test_tff_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="patch tokens"):
        TransformerFeatureFusion(width=8, token_width=None)
    with pytest.raises(ValueError, match="divisible"):
        TransformerFeatureFusion(width=8, token_width=30, heads=4)
    fusion = _tff()
    bad = {"tokens": torch.randn(2, 15, D)}
    with pytest.raises(ValueError, match="square"):
        fusion(bad, bad)
