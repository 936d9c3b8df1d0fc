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
    torch.testing.assert_close(cat(t1, t2), torch.cat([t1["global"], t2["global"]], -1))
    torch.testing.assert_close(sub(t1, t2), t2["global"] - t1["global"])
    assert torch.equal(sub(t1, t1), torch.zeros(B, 8))  # no change, no feature


def test_tff_registered_and_shapes() -> None:
    fusion = FUSIONS.build("tff", width=8, token_width=D, heads=4, stages=2)
    assert isinstance(fusion, TransformerFeatureFusion)
    assert fusion.out_dim == 2 * D and len(fusion.stages) == 2
    t1, t2 = _dates()
    out = fusion(t1, t2)
    assert out.shape == (B, fusion.out_dim)
    assert torch.isfinite(out).all()
    assert len(_tff().stages) == 3  # the paper's l = 3 is the default


def test_tff_identical_dates_attention_contributes_nothing() -> None:
    """s = f2 - f1 = 0 is the key and value: with the paper's bias-free W^K, W^V, W^O the
    multi-head output is exactly zero, so eq. (10) reduces to LN(f) and no attention
    weight can change the fused feature; with a change, the attention weights matter."""
    fusion = _tff().eval()
    t1, t2 = _dates()
    f = t1["tokens"]
    zero = torch.zeros_like(f)
    assert torch.equal(fusion.cross_attend(f, zero), zero)

    same = fusion(t1, t1)
    with torch.no_grad():  # re-draw every attention matrix (W^Q, W^K, W^V, W^O)
        for p in fusion.attn.parameters():
            p.normal_()
    assert torch.equal(fusion(t1, t1), same)

    changed = _tff().eval()
    before = changed(t1, t2)
    with torch.no_grad():
        for p in changed.attn.parameters():
            p.normal_()
    assert not torch.allclose(changed(t1, t2), before)


def test_tff_identical_dates_equal_attention_free_reference() -> None:
    """Identical dates, recomputed by hand: f'' = LN(LN(f) + g(LN(f))) for both dates,
    c = [f'', f''], then the fusion stages on c and global average pooling."""
    fusion = _tff().eval()
    t1, _ = _dates()
    f = t1["tokens"]
    with torch.no_grad():
        h = fusion.norm1(f)  # eq. (10) with MultiHead = 0
        h = fusion.norm2(h + fusion.ffn(h))  # eq. (11)
        c = torch.cat([h, h], dim=-1)
        x = torch.zeros_like(c)
        for stage in fusion.stages:
            x = stage(c + x, 4)
        expected = x.mean(dim=1)
        torch.testing.assert_close(fusion(t1, t1), expected, rtol=0, atol=1e-6)


def test_tff_stacked_query_equals_one_attention_per_date() -> None:
    """Both dates as one 2T-long query == the shared-weight attention run per date."""
    fusion = _tff().eval()
    t1, t2 = _dates()
    f1, f2 = t1["tokens"], t2["tokens"]
    s = f2 - f1
    with torch.no_grad():
        stacked = fusion.encode_dates(torch.cat([f1, f2], dim=1), s)
        per_date = torch.cat([fusion.encode_dates(f1, s), fusion.encode_dates(f2, s)], dim=1)
    torch.testing.assert_close(stacked, per_date, atol=1e-6, rtol=0)


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
