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
    """GFF: Concatenation of the two dates' global features."""

    def __init__(self, width: int, token_width: int | None = None) -> None:
        super().__init__()
        self.out_dim = 2 * width

    def forward(self, t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([t1["global"], t2["global"]], dim=-1)


@FUSIONS.register("gff_sub")
class GlobalSubtractionFusion(nn.Module):
    """GFF: Subtraction, the element-wise difference of the global features (date 2 - date 1)."""

    def __init__(self, width: int, token_width: int | None = None) -> None:
        super().__init__()
        self.out_dim = width

    def forward(self, t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
        return t2["global"] - t1["global"]


@FUSIONS.register("tff")
class TransformerFeatureFusion(nn.Module):
    """TFF: transformer-based feature fusion of the patch tokens (time-series paper, III-B).

    With ``f1, f2 ∈ R^{T×d}`` the two dates' patch tokens (class token excluded, ``d`` the
    token width) the steps are, following eqs. (6)-(12) and Fig. 2:

    1. ``s = f2 - f1`` (eq. 6).
    2. Multi-head cross-attention (eqs. 7-9), ``heads`` heads, key = value = ``s``, query
       = "the bitemporal features in a compact manner" ``f_{1,2}``: both dates' tokens
       stacked into one ``2T``-long query sequence. Each query row attends to ``s`` on its
       own, so this is the same as running one shared-weight attention per date (the
       dual-branch encoder of [35], RSICCformer). Projections are the paper's bias-free
       matrices ``W^Q, W^K, W^V, W^O``, so identical dates (``s = 0``) give an attention
       output of exactly zero.
    3. ``f' = LN(f + MultiHead(f, s, s))`` (eq. 10) and ``f'' = LN(f' + g(f'))`` (eq. 11),
       ``g`` two linear layers with a ReLU between (hidden ``ffn_hidden``, default ``4d``).
    4. ``l = stages`` fusion stages (eq. 12) on ``c = Concat(f''_1, f''_2)`` concatenated
       along the feature axis (``R^{T×2d}``, as the paper's ``f_{l-1} ∈ R^{T×2d}`` says):
       ``f_l = LN(c + f_{l-1} + r(c + f_{l-1}))`` with ``f_0 = 0``. ``r`` is the residual
       branch of [35]: 1×1 conv (2d→d), BN, ReLU, 3×3 conv (d→d), BN, ReLU, 1×1 conv
       (d→2d), BN, dropout — 2-D convolutions over the ``√T × √T`` patch grid (the tokens
       of a square ViT input), so the 3×3 conv mixes neighbouring patches.
    5. Global average pooling over the ``T`` positions: ``[B, 2d]`` (``out_dim = 2d``).
    """

    def __init__(
        self,
        width: int,
        token_width: int | None = None,
        heads: int = 8,
        stages: int = 3,
        ffn_hidden: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if token_width is None:
            raise ValueError("tff fusion needs an image tower that outputs patch tokens")
        if token_width % heads:
            raise ValueError(f"tff: token width {token_width} is not divisible by heads={heads}")
        if stages < 1:
            raise ValueError(f"tff: stages={stages}, need at least one")
        d = token_width
        self.token_width = d
        self.attn = nn.MultiheadAttention(d, heads, bias=False, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        hidden = ffn_hidden or 4 * d
        self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.norm2 = nn.LayerNorm(d)
        self.stages = nn.ModuleList(_FusionStage(2 * d, dropout) for _ in range(stages))
        self.out_dim = 2 * d

    def cross_attend(self, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """MultiHead(f, s, s) of eqs. (8)-(9): ``[B, T, d]``."""
        return self.attn(f, s, s, need_weights=False)[0]

    def encode_dates(self, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Eqs. (10)-(11): ``f''`` for the query tokens ``f`` (``[B, 2T, d]``, both dates)."""
        h = self.norm1(f + self.cross_attend(f, s))
        return self.norm2(h + self.ffn(h))

    def forward(self, t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
        f1, f2 = t1["tokens"], t2["tokens"]
        t = f1.shape[1]
        side = round(t**0.5)
        if side * side != t:
            raise ValueError(f"tff: {t} patch tokens do not form a square grid")
        s = f2 - f1
        h1, h2 = self.encode_dates(torch.cat([f1, f2], dim=1), s).split(t, dim=1)
        c = torch.cat([h1, h2], dim=-1)  # [B, T, 2d]: the dates side by side per patch
        f = torch.zeros_like(c)
        for stage in self.stages:
            f = stage(c + f, side)
        return f.mean(dim=1)


class _FusionStage(nn.Module):
    """One fusion stage of eq. (12): ``LN(x + r(x))`` with ``x = c + f_{l-1}``."""

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
        return self.norm(x + r)
