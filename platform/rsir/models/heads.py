"""Projection heads mapping tower features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn

from rsir.models.registry import HEADS


@HEADS.register("ffn")
class FFNHead(nn.Module):
    """The time-series paper's head: a 256-unit ReLU hidden layer, then the output layer."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """A linear projection (the multilanguage paper maps the visual feature to the text width)."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@HEADS.register("identity")
class IdentityHead(nn.Module):
    """No projection: the tower's output is the embedding (``out_dim`` must equal ``in_dim``)."""

    def __init__(self, in_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        if out_dim is not None and out_dim != in_dim:
            raise ValueError(f"identity head: out_dim {out_dim} != tower width {in_dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
