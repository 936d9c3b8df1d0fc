"""The model registries: every tower, fusion, head and architecture a recipe can name."""

from __future__ import annotations

from torch import nn

from rsir.registry import Registry

IMAGE_TOWERS: Registry[nn.Module] = Registry("image tower")
TEXT_TOWERS: Registry[nn.Module] = Registry("text tower")
FUSIONS: Registry[nn.Module] = Registry("fusion")
HEADS: Registry[nn.Module] = Registry("head")
MODELS: Registry[nn.Module] = Registry("model")
# Per architecture (same names as MODELS): ModelConfig -> the shard columns the model reads
# beyond its task's images and captions (``rsir.data.contract``).
MODEL_FIELDS: Registry[tuple[str, ...]] = Registry("model input declaration")
