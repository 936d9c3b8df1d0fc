"""One contrastive training step, shared by the Ray Train loop and the benchmarks.

Pure PyTorch: the Ray loop (``rsir.train.loop``), the plain baseline loop of
``bench/train_throughput.py`` and ``bench/model_step.py`` all call these, so the step they
time is the step that trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rsir.models.text_towers import tokens_to
from rsir.retrieval.embed import unwrap

# CLIP's clamp on the learnable logit scale: the temperature never drops below 0.01.
MAX_LOGIT_SCALE = 4.6052


def batch_inputs(model: nn.Module, batch: Mapping[str, Any], image_key: str,
                 device: torch.device, fields: Sequence[str] = ()) -> dict[str, Any]:
    """A preprocessed batch (images as arrays, captions in ``text``, the model's ``fields``
    such as GaLR's per-image ``objects`` lists) as model inputs on ``device``."""
    inputs = {image_key: torch.as_tensor(batch[image_key], device=device),
              "tokens": tokens_to(unwrap(model).tokenize(list(batch["text"])), device)}
    for f in fields:
        inputs[f] = list(batch[f])
    return inputs


def contrastive_loss(model: nn.Module, loss_fn: nn.Module, inputs: Mapping[str, Any],
                     bf16: bool = False) -> dict[str, torch.Tensor]:
    """Forward pass and loss; under bf16 autocast the loss itself is computed in fp32."""
    device_type = next(unwrap(model).parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        out = model(dict(inputs))
        return loss_fn(out["image_features"].float(), out["text_features"].float(),
                       out["logit_scale"].float())


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   grad_clip_norm: float | None = None) -> None:
    """Clip, step, clear the gradients and clamp the learnable temperature."""
    if grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        unwrap(model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)
