"""Contrastive losses. Each returns a dict of named terms; ``loss`` is the one to minimise.

Losses take ``rank`` / ``world_size``; with ``world_size > 1`` and ``global_batch`` they
gather features from every worker with gradients (negatives over the global batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsir.config import LossConfig
from rsir.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def gather_with_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """All-gather ``x`` from every worker; gradients flow back to each worker's own slice."""
    if world_size <= 1:
        return x
    import torch.distributed as dist

    # The autograd-aware functional collective that replaces the deprecated
    # ``torch.distributed.nn.functional.all_gather``. Its backward sums every rank's
    # gradient for this rank's slice (reduce-scatter): world_size × the gradient of the one
    # shared loss, which DDP's averaging turns back into exactly that gradient.
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd

        return all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    except ImportError:  # older torch
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)


@LOSSES.register("infonce")
class SymmetricInfoNCE(nn.Module):
    """λ1·CE(image→text) + λ2·CE(text→image) over cosine similarities scaled by 1/τ.

    With λ1 = λ2 = 0.5 this is the time-series paper's average of the two terms; the
    multilanguage paper weights them explicitly.
    """

    def __init__(
        self,
        lambda_i2t: float = 0.5,
        lambda_t2i: float = 0.5,
        global_batch: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.lambda_i2t = lambda_i2t
        self.lambda_t2i = lambda_t2i
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def from_config(cls, cfg: LossConfig, rank: int = 0, world_size: int = 1) -> SymmetricInfoNCE:
        return cls(cfg.lambda_i2t, cfg.lambda_t2i, cfg.global_batch, rank, world_size)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if self.global_batch and self.world_size > 1:
            image_features = gather_with_grad(image_features, self.world_size)
            text_features = gather_with_grad(text_features, self.world_size)
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        i2t = F.cross_entropy(logits, labels)
        t2i = F.cross_entropy(logits.T, labels)
        loss = self.lambda_i2t * i2t + self.lambda_t2i * t2i
        return {"loss": loss, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach()}


@LOSSES.register("triplet")
class TripletRankingLoss(nn.Module):
    """Bidirectional triplet ranking loss over cosine similarities (VSE / VSE++, GaLR).

    With ``s_ij = <image_i, text_j>`` (features are L2-normalised by the model) and margin
    ``m``: image->text ``Σ_i Σ_{j≠i} [m - s_ii + s_ij]_+`` and text->image
    ``Σ_j Σ_{i≠j} [m - s_jj + s_ij]_+``; with ``hardest_negative`` (VSE++) each anchor keeps
    only its largest violation (``max_j`` instead of ``Σ_j``). The loss is the sum of the
    two directions, summed over anchors as in the VSE++ and GaLR code (so it grows with
    the batch: tune the learning rate with the batch size). λ1/λ2 are InfoNCE-only.
    """

    def __init__(
        self,
        margin: float = 0.2,
        hardest_negative: bool = False,
        global_batch: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.margin = margin
        self.hardest_negative = hardest_negative
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def from_config(cls, cfg: LossConfig, rank: int = 0, world_size: int = 1) -> TripletRankingLoss:
        return cls(cfg.margin, cfg.hardest_negative, cfg.global_batch, rank, world_size)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``logit_scale`` is accepted (the model returns it) and ignored."""
        if self.global_batch and self.world_size > 1:
            image_features = gather_with_grad(image_features, self.world_size)
            text_features = gather_with_grad(text_features, self.world_size)
        scores = image_features @ text_features.T  # [images, texts]
        positive = scores.diagonal()
        eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        # cost_i2t[i, j]: image i ranks text j above its own; cost_t2i[i, j]: text j ranks image i.
        cost_i2t = (self.margin - positive[:, None] + scores).clamp_min(0).masked_fill(eye, 0)
        cost_t2i = (self.margin - positive[None, :] + scores).clamp_min(0).masked_fill(eye, 0)
        if self.hardest_negative:
            i2t = cost_i2t.max(dim=1).values.sum()
            t2i = cost_t2i.max(dim=0).values.sum()
        else:
            i2t, t2i = cost_i2t.sum(), cost_t2i.sum()
        return {"loss": i2t + t2i, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach()}


def create_loss(cfg: LossConfig, rank: int = 0, world_size: int = 1) -> nn.Module:
    """The loss named ``cfg.name``; each loss class reads its options with ``from_config``."""
    return LOSSES.get(cfg.name).from_config(cfg, rank=rank, world_size=world_size)
