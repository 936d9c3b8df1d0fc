"""Models: encoder towers, fusions, heads and architectures, each registered by name."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from rsir.config import DataConfig, LossConfig, ModelConfig, RecipeConfig
from rsir.data.contract import InputContract

# Importing the modules registers their classes.
from rsir.models import dual_encoder, fusion, galr, heads, text_towers, towers  # noqa: F401
from rsir.models.registry import FUSIONS, HEADS, IMAGE_TOWERS, MODEL_FIELDS, MODELS, TEXT_TOWERS

log = logging.getLogger(__name__)


def create_model(cfg: ModelConfig, loss: LossConfig | None = None) -> nn.Module:
    """Build the architecture ``cfg.name``; load ``cfg.checkpoint`` when one is given."""
    model = MODELS.get(cfg.name)(cfg, loss or LossConfig())
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    return model


def input_contract(cfg: RecipeConfig) -> InputContract:
    """What the recipe's model reads from an archive: the one declaration every stage uses.

    Raises ``ValueError`` when the training language is not among the declared languages.
    """
    data = cfg.data
    if data.language != "random" and data.languages and data.language not in data.languages:
        raise ValueError(f"recipe {cfg.name}: data.language {data.language!r} is not in "
                         f"data.languages {data.languages}")
    return InputContract.of(data, cfg.name, MODEL_FIELDS.get(cfg.model.name)(cfg.model))


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load a state dict from a local file (an rsir checkpoint or a bare state dict).

    ``strict=False`` loads only the tensors whose name and shape match the model (e.g. a
    single-image run's towers into a pair model, whose fusion and head stay as built) and
    fails when none does. Returns the names of the model's tensors left as they were.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    # Weights saved from a DDP-wrapped model carry a ``module.`` prefix.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if strict:
        model.load_state_dict(state)
        log.info("loaded weights from %s", path)
        return []
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"model checkpoint {path}: no tensor matches the model's names and shapes")
    model.load_state_dict(matching, strict=False)
    kept = sorted(set(own) - set(matching))
    log.info("initialised %d of %d tensors from %s (%d left as built)", len(matching), len(own),
             path, len(kept))
    return kept


def preprocessing_mismatches(model: nn.Module, data: DataConfig) -> list[str]:
    """How ``data`` differs from the evaluation transform of the model's pretrained
    open_clip image tower (``data.resize``, ``data.image_size``, and ``data.mean`` /
    ``data.std`` for an RGB tower); empty when it agrees or there is no such tower."""
    tower = getattr(model, "image_tower", None)
    want = getattr(tower, "eval_transform", None)
    if not want or not getattr(tower, "pretrained", None):
        return []
    out = []
    resize = "bicubic_center_crop" if (want.get("interpolation"), want.get("resize_mode")) == (
        "bicubic", "shortest") else None
    if resize and data.resize != resize:
        out.append(f"data.resize is {data.resize!r}, the tower's transform is {resize!r}")
    size = tuple(want.get("size", ()))
    if size and size != (data.image_size, data.image_size):
        out.append(f"data.image_size is {data.image_size}, the tower takes {size}")
    if len(data.bands) == 3:
        for key in ("mean", "std"):
            given, own = list(getattr(data, key)), [float(v) for v in want.get(key, ())]
            if own and (len(given) != 3 or max(abs(a - b) for a, b in zip(given, own)) > 1e-6):
                out.append(f"data.{key} is {given}, the tower's is {own}")
    return out


def list_models() -> dict[str, list[str]]:
    """Every registered name, by kind."""
    return {
        "models": MODELS.names(),
        "image_towers": IMAGE_TOWERS.names(),
        "text_towers": TEXT_TOWERS.names(),
        "fusions": FUSIONS.names(),
        "heads": HEADS.names(),
    }
