"""The dual encoder: image tower (+ bitemporal fusion) and text tower, each with a head.

Embeddings are L2-normalised; the model owns the (learnable or fixed) temperature as
``logit_scale = log(1 / τ)`` so DDP keeps it in sync like any other parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rsir.config import LossConfig, ModelConfig
from rsir.models.registry import FUSIONS, HEADS, IMAGE_TOWERS, MODEL_FIELDS, MODELS, TEXT_TOWERS


class DualEncoder(nn.Module):
    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        fusion: nn.Module,
        image_head: nn.Module,
        pair_head: nn.Module,
        text_head: nn.Module,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.fusion = fusion
        self.image_head = image_head
        self.pair_head = pair_head
        self.text_head = text_head
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable_temperature
        )

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower.tokenize(texts)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, E]``."""
        x = self.image_head(self.image_tower(images)["global"])
        return F.normalize(x, dim=-1) if normalize else x

    def encode_pair(self, pairs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, 2, C, H, W]`` -> ``[B, E]``: both dates through the tower in one pass, fused."""
        b = pairs.shape[0]
        out = self.image_tower(pairs.flatten(0, 1))
        t1 = {k: v.view(b, 2, *v.shape[1:])[:, 0] for k, v in out.items()}
        t2 = {k: v.view(b, 2, *v.shape[1:])[:, 1] for k, v in out.items()}
        x = self.pair_head(self.fusion(t1, t2))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text_head(self.text_tower(tokens))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch keys: ``image`` or ``image_pair``, and ``tokens``."""
        if "image_pair" in batch:
            image_features = self.encode_pair(batch["image_pair"])
        else:
            image_features = self.encode_image(batch["image"])
        return {
            "image_features": image_features,
            "text_features": self.encode_text(batch["tokens"]),
            "logit_scale": self.logit_scale.exp(),
        }


@MODEL_FIELDS.register("dual_encoder")
def dual_encoder_fields(cfg: ModelConfig) -> tuple[str, ...]:
    """A dual encoder reads its task's images and captions, nothing else."""
    return ()


@MODELS.register("dual_encoder")
def build_dual_encoder(cfg: ModelConfig, loss: LossConfig) -> DualEncoder:
    image_tower = IMAGE_TOWERS.build(cfg.image_tower.name, **cfg.image_tower.options)
    text_tower = TEXT_TOWERS.build(cfg.text_tower.name, **cfg.text_tower.options)
    fusion = FUSIONS.build(
        cfg.fusion,
        width=image_tower.width,
        token_width=getattr(image_tower, "token_width", None),
        **cfg.fusion_options,
    )
    head_opts = {"out_dim": cfg.embed_dim, **cfg.head_options}
    return DualEncoder(
        image_tower=image_tower,
        text_tower=text_tower,
        fusion=fusion,
        image_head=HEADS.build(cfg.head, in_dim=image_tower.width, **head_opts),
        pair_head=HEADS.build(cfg.head, in_dim=fusion.out_dim, **head_opts),
        text_head=HEADS.build(cfg.head, in_dim=text_tower.width, **head_opts),
        temperature=loss.temperature,
        learnable_temperature=loss.learnable_temperature,
    )
