"""open_clip encoder towers: any open_clip model name, rsir's own small configs included.

Weights come from an open_clip pretrained tag (the cluster downloads them), a local
file, or nowhere (random init). A local file is open_clip's ``load_checkpoint``: a bare
state dict of the whole open_clip model (the RemoteCLIP releases) or one under
``state_dict``. The image tower returns both the global
feature and the patch tokens (TFF needs the tokens); the text tower returns one vector.

Pooling (``pool``): ``tok`` / ``argmax`` is CLIP's own (the class token for images, the
end-of-text token for text); ``gap`` is the multilanguage paper's global average pooling
of the last layer's token outputs with the class / start token ignored (padding masked
for text). In both cases CLIP's final LayerNorm and projection follow the pooling.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from rsir.models.registry import IMAGE_TOWERS, TEXT_TOWERS

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("open_clip_configs")


def _open_clip():
    import open_clip

    # rsir's own small configs (``rsir-tiny``...) become ordinary open_clip model names.
    if "rsir-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


def create_open_clip(model_name: str, pretrained: str | None = None, quick_gelu: bool = False) -> nn.Module:
    """An open_clip model by name; ``pretrained`` is a tag or a local file (None: random).

    OpenAI's CLIP weights were trained with QuickGELU, but open_clip builds ``ViT-B-16`` etc.
    with GELU and only warns when given them; ``quick_gelu`` builds the variant they
    expect. The ``openai`` tag without it is refused rather than silently mismatched (a
    local file of OpenAI weights cannot be recognised: its recipe sets ``quick_gelu``).
    """
    open_clip = _open_clip()
    if pretrained == "openai" and not quick_gelu and "quickgelu" not in model_name.lower():
        raise ValueError(f"{model_name} with pretrained 'openai': OpenAI's weights were trained with "
                         "QuickGELU; set the tower option quick_gelu: true")
    if pretrained and not Path(pretrained).exists() and "/" in pretrained:
        raise FileNotFoundError(f"pretrained weights {pretrained!r}: no such file")
    return open_clip.create_model(model_name, pretrained=pretrained or None, force_quick_gelu=quick_gelu)


def residual_blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an open_clip tower, in order."""
    return [m for m in module.modules() if type(m).__name__ == "ResidualAttentionBlock"]


def set_trainable(
    blocks: list[nn.Module],
    whole: nn.Module,
    freeze: bool,
    unfreeze_last: int,
    tail: tuple[nn.Module | nn.Parameter | None, ...] = (),
) -> None:
    """Freeze ``whole``; then unfreeze everything (freeze=False) or the last N ``blocks``.

    With ``unfreeze_last > 0`` the ``tail`` (what follows the last block: the final
    LayerNorm and projection) is unfrozen too, as open_clip's ``lock_*_tower`` does.
    """
    if unfreeze_last < 0 or unfreeze_last > len(blocks):
        raise ValueError(f"unfreeze_last={unfreeze_last}: the tower has {len(blocks)} blocks")
    whole.requires_grad_(not freeze)
    if freeze and unfreeze_last > 0:
        for block in blocks[-unfreeze_last:]:
            block.requires_grad_(True)
        for part in tail:
            if part is not None:
                part.requires_grad_(True)


@IMAGE_TOWERS.register("open_clip")
class OpenClipImageTower(nn.Module):
    """The visual tower of an open_clip model; outputs ``{"global", "tokens"}``."""

    def __init__(
        self,
        model_name: str = "rsir-tiny",
        pretrained: str | None = None,
        freeze: bool = False,
        unfreeze_last: int = 0,
        in_channels: int = 3,
        pool: str = "tok",
        quick_gelu: bool = False,
    ) -> None:
        super().__init__()
        if pool not in ("tok", "gap"):
            raise ValueError(f"image tower pool {pool!r}: expected 'tok' or 'gap'")
        clip = create_open_clip(model_name, pretrained, quick_gelu)
        self.pretrained = pretrained
        # open_clip's evaluation transform of this model (size, mean, std, interpolation,
        # resize_mode), the preprocessing its pretrained weights expect.
        self.eval_transform = dict(_open_clip().get_model_preprocess_cfg(clip))
        self.visual = clip.visual
        self.visual.output_tokens = True
        if pool == "gap":
            # open_clip's VisionTransformer 'avg' pool: mean of the patch tokens, class
            # token ignored, then ln_post and proj (checked against open_clip 3.3).
            if getattr(self.visual, "attn_pool", None) is not None or not hasattr(
                self.visual, "pool_type"
            ):
                raise ValueError(f"{model_name}: pool='gap' needs a plain ViT visual tower")
            self.visual.pool_type = "avg"
        self.width = int(self.visual.output_dim)
        self.token_width = int(self.visual.transformer.width)
        self.image_size = tuple(self.visual.image_size)
        if in_channels != 3:
            widen_patch_embedding(self.visual, in_channels)
        set_trainable(residual_blocks(self.visual), self.visual, freeze, unfreeze_last,
                      tail=(getattr(self.visual, "ln_post", None), getattr(self.visual, "proj", None)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled, tokens = self.visual(images)
        return {"global": pooled, "tokens": tokens}


def widen_patch_embedding(visual: nn.Module, in_channels: int) -> None:
    """Feed N bands to a ViT: new channels start from the mean RGB filter, rescaled.

    Each new input channel's filter is the mean of the RGB filters, and all filters are
    scaled by 3/N so the response to a uniform input keeps its magnitude.
    """
    conv: nn.Conv2d = visual.conv1
    weight = conv.weight.data  # [width, 3, p, p]
    mean = weight.mean(dim=1, keepdim=True)
    new = torch.cat([weight[:, : min(3, in_channels)]]
                    + [mean] * max(0, in_channels - 3), dim=1) * (3.0 / in_channels)
    widened = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        bias=conv.bias is not None)
    widened.weight.data.copy_(new)
    visual.conv1 = widened


@TEXT_TOWERS.register("open_clip")
class OpenClipTextTower(nn.Module):
    """The text encoder of an open_clip model, with its bundled (offline) tokenizer."""

    def __init__(
        self,
        model_name: str = "rsir-tiny",
        pretrained: str | None = None,
        freeze: bool = False,
        unfreeze_last: int = 0,
        context_length: int | None = None,
        pool: str = "argmax",
        quick_gelu: bool = False,
    ) -> None:
        super().__init__()
        if pool not in ("argmax", "gap"):
            raise ValueError(f"text tower pool {pool!r}: expected 'argmax' or 'gap'")
        open_clip = _open_clip()
        clip = create_open_clip(model_name, pretrained, quick_gelu)
        clip.visual = nn.Identity()  # this tower keeps only the text half
        if pool == "gap" and not hasattr(clip, "token_embedding"):
            raise ValueError(f"{model_name}: pool='gap' needs CLIP's own text transformer")
        self.clip = clip
        self.pool = pool
        self._tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
        with torch.no_grad():  # open_clip text encoders differ in where the width is kept
            self.width = int(self.forward(self.tokenize([""])).shape[-1])
        tail = (getattr(clip, "ln_final", None), getattr(clip, "text_projection", None))
        set_trainable(residual_blocks(clip), self, freeze, unfreeze_last, tail=tail)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool == "argmax":
            return self.clip.encode_text(tokens)
        return self._encode_gap(tokens)

    def _encode_gap(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean of the token outputs from the first word to the end-of-text token.

        The start token (CLIP's class-token analogue) and the padding are ignored. The
        end-of-text token has the largest id, so ``argmax`` finds it (as open_clip does).
        """
        clip = self.clip
        x = clip.token_embedding(tokens) + clip.positional_embedding[: tokens.shape[1]]
        mask = clip.attn_mask
        if mask is not None:
            mask = mask[: tokens.shape[1], : tokens.shape[1]]
        x = clip.ln_final(clip.transformer(x, attn_mask=mask))
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        eot = tokens.argmax(dim=-1, keepdim=True)
        keep = ((pos >= 1) & (pos <= eot)).to(x.dtype).unsqueeze(-1)  # [B, L, 1]
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        proj = clip.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
