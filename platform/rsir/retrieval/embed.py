"""Embedding with a trained model (pure torch): images, pairs, texts, and a split's recall.

Shared by validation inside training, Ray Data batch inference and the Serve encoders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rsir.config import DataConfig
from rsir.data.transforms import explode_captions, preprocess_batch
from rsir.metrics.retrieval import cross_modal_recall
from rsir.models.text_towers import tokens_to


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def embed_visual(model: nn.Module, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """``image`` ``[B, C, H, W]`` or ``image_pair`` ``[B, 2, C, H, W]`` -> ``[B, E]`` float32;
    a batch with ``objects`` (GaLR's local branch) hands them to the model with the images."""
    m = unwrap(model)
    device = next(m.parameters()).device
    if "image_pair" in batch:
        x = torch.as_tensor(batch["image_pair"], device=device)
        return m.encode_pair(x).float().cpu().numpy()
    x = torch.as_tensor(batch["image"], device=device)
    if "objects" in batch:
        return m.encode_image(x, list(batch["objects"])).float().cpu().numpy()
    return m.encode_image(x).float().cpu().numpy()


@torch.no_grad()
def embed_texts(model: nn.Module, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> ``[T, E]`` float32, in batches."""
    m = unwrap(model)
    device = next(m.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokens_to(m.tokenize(list(texts[i: i + batch_size])), device)
        out.append(m.encode_text(tokens).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate_rows(
    model: nn.Module,
    rows: Mapping[str, Any],
    cfg: DataConfig,
    language: str | None = "en",
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    fields: Sequence[str] = (),
) -> dict[str, Any]:
    """Cross-modal recall of a split held in memory (``rows``: column -> sequence, with the
    model's ``fields``)."""
    was_training = model.training
    model.eval()
    visual = []
    n = len(rows["id"])
    for i in range(0, n, batch_size):
        chunk = {k: v[i: i + batch_size] for k, v in rows.items()}
        inputs = preprocess_batch(chunk, cfg, train=False, with_captions=False, fields=fields)
        if len(inputs["id"]) != len(chunk["id"]):  # texts are matched to rows by position
            raise ValueError("evaluation split has undecodable rows; convert it again")
        visual.append(embed_visual(model, inputs))
    texts, _, owner = explode_captions(rows["captions"], language)
    text_emb = embed_texts(model, texts, batch_size)
    model.train(was_training)
    sim = np.concatenate(visual) @ text_emb.T
    return cross_modal_recall(sim, np.asarray(owner), ks=tuple(ks))
