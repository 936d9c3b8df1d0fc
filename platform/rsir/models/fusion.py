"""Bitemporal fusion: how the two dates of a pair become one feature (time-series paper).

A fusion takes the two dates' tower outputs (``{"global": [B, D], "tokens": [B, L, W]}``)
and returns ``[B, out_dim]``.
"""

from __future__ import annotations

import torch
from torch import nn

from rsir.models.registry import FUSIONS


@FUSIONS.register("gff_concat")
class GlobalConcatFusion(nn.Module):
    """GFF: Concatenation of the two dates' global features, date 2 first (eq. 5:
    ``Concat(f^{I_t2}, f^{I_t1})``)."""

    def __init__(self, width: int, token_width: int | None = None) -> None:
        super().__init__()
        self.out_dim = 2 * width

    def forward(self, t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([t2["global"], t1["global"]], dim=-1)


@FUSIONS.register("gff_sub")
class GlobalSubtractionFusion(nn.Module):
    """GFF: Subtraction, the element-wise difference of the global features (date 2 - date 1)."""

    def __init__(self, width: int, token_width: int | None = None) -> None:
        super().__init__()
        self.out_dim = width

    def forward(self, t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
        return t2["global"] - t1["global"]


CROSS_LAYERS = ("stacked", "single")


@FUSIONS.register("tff")
class TransformerFeatureFusion(nn.Module):
    """TFF: transformer-based feature fusion of the patch tokens (time-series paper, III-B).

    The paper says its TFF is "mainly based on" RSICCformer [35]; this follows the
    RSICCformer code (Chen-Yang-Liu/RSICC, ``models_RSICCformerDfusion.py``,
    ``MCCFormers_diff_as_Q``) where the paper's equations leave a choice. With
    ``f1, f2 ∈ R^{T×d}`` the two dates' patch tokens (class token excluded):

    1. Cross-attention layers (eqs. 6-11), ``stages`` of them stacked (``cross_layers:
       stacked``, the default, as RSICCformer): layer l takes the previous layer's two
       outputs, recomputes their difference ``s = f2 - f1`` (eq. 6) and gives each date
       ``f' = LN(f + MultiHead(f, s, s))`` (eq. 10), ``f'' = LN(f' + g(f'))`` (eq. 11); one
       set of weights per layer serves both dates (the two queries are stacked into one
       2T-long sequence, which is the same as one attention per date). ``heads`` heads,
       bias-free ``W^Q, W^K, W^V, W^O`` as the paper writes them (so identical dates give
       an attention output of exactly zero); ``g``: Linear, ReLU, Linear (hidden 4d);
       dropout on the attention weights and both residual branches, as RSICCformer.
    2. ``stages`` fusion stages (eq. 12), stage l fed by layer l's outputs
       ``c_l = Concat(f''_1, f''_2)`` (``R^{T×2d}``): ``x = c_l + f_{l-1}`` (``f_0 = 0``),
       ``f_l = LN(ReLU(x + r(x)))``. The ReLU after the residual sum is RSICCformer's
       ``resblock``; ``r``: 1×1 conv (2d→d), BN, ReLU, 3×3 conv, BN, ReLU, 1×1 conv (d→2d),
       BN, dropout (the paper's "drop out layers"), as 2-D convolutions over the
       ``√T × √T`` patch grid.
    3. Global average pooling over the ``T`` positions: ``[B, 2d]`` (``out_dim = 2d``).

    ``cross_layers: single`` is eq. (12) as printed: one cross-attention layer, and every
    fusion stage adds the same ``c`` (measured against the default on the demo world's
    change queries in the README).
    """

    def __init__(
        self,
        width: int,
        token_width: int | None = None,
        heads: int = 8,
        stages: int = 3,
        ffn_hidden: int | None = None,
        dropout: float = 0.1,
        cross_layers: str = "stacked",
    ) -> None:
        super().__init__()
        if token_width is None:
            raise ValueError("tff fusion needs an image tower that outputs patch tokens")
        if token_width % heads:
            raise ValueError(f"tff: token width {token_width} is not divisible by heads={heads}")
        if stages < 1:
            raise ValueError(f"tff: stages={stages}, need at least one")
        if cross_layers not in CROSS_LAYERS:
            raise ValueError(f"tff: cross_layers={cross_layers!r}, expected one of {list(CROSS_LAYERS)}")
        d = token_width
        self.token_width = d
        self.cross_layers = cross_layers
        n_layers = stages if cross_layers == "stacked" else 1
        self.layers = nn.ModuleList(
            _CrossAttentionLayer(d, heads, ffn_hidden or 4 * d, dropout) for _ in range(n_layers))
        self.stages = nn.ModuleList(_FusionStage(2 * d, dropout) for _ in range(stages))
        self.out_dim = 2 * d

    def forward(self, t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
        f1, f2 = t1["tokens"], t2["tokens"]
        t = f1.shape[1]
        side = round(t**0.5)
        if side * side != t:
            raise ValueError(f"tff: {t} patch tokens do not form a square grid")
        per_layer = []  # c_l = [f''_1, f''_2] side by side per patch, [B, T, 2d]
        for layer in self.layers:
            f1, f2 = layer(torch.cat([f1, f2], dim=1), f2 - f1).split(t, dim=1)
            per_layer.append(torch.cat([f1, f2], dim=-1))
        f = torch.zeros_like(per_layer[0])
        for i, stage in enumerate(self.stages):
            f = stage(per_layer[min(i, len(per_layer) - 1)] + f, side)
        return f.mean(dim=1)


class _CrossAttentionLayer(nn.Module):
    """Eqs. (7)-(11) for the query tokens ``f`` (``[B, 2T, d]``, both dates) and ``s``."""

    def __init__(self, d: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, bias=False, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d))
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def cross_attend(self, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """MultiHead(f, s, s) of eqs. (8)-(9)."""
        return self.attn(f, s, s, need_weights=False)[0]

    def forward(self, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.norm1(f + self.drop(self.cross_attend(f, s)))
        return self.norm2(h + self.drop(self.ffn(h)))


class _FusionStage(nn.Module):
    """One fusion stage of eq. (12): ``LN(ReLU(x + r(x)))`` with ``x = c_l + f_{l-1}``."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        mid = channels // 2
        self.r = nn.Sequential(
            nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, channels, 1), nn.BatchNorm2d(channels), nn.Dropout(dropout),
        )
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, t, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, side, side)
        r = self.r(grid).reshape(b, c, t).transpose(1, 2)
        return self.norm(torch.relu(x + r))
