"""The encoder deployments: images / pairs and texts -> L2-normalised vectors, batched
across requests (``@serve.batch``), each forward on a thread of its own."""

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve


class _ForwardThread:
    """Runs an encoder's forwards one at a time on a thread of its own: off the replica's
    event loop (which, with ``proxy: haproxy``, also runs Serve's request handling and
    health checks), and never two at once (the text tower's vector cache is not locked)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    async def __call__(self, fn, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


@serve.deployment
class ImageEncoder:
    """Images or pairs (bytes) -> L2-normalised vectors, batched across requests."""

    def __init__(self, recipe: dict[str, Any], checkpoint: str | None, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.01) -> None:
        from rsir.inference import load_trained
        from rsir.models import input_contract

        self.cfg, self.model = load_trained(recipe, checkpoint)
        # A query image carries no detections: a model field (GaLR's objects) reads as empty.
        self.fields = input_contract(self.cfg).fields
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._forward = _ForwardThread()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, items: list[dict[str, Any]]) -> list[np.ndarray | None]:
        return await self._forward(self._embed, items)

    def _embed(self, items: list[dict[str, Any]]) -> list[np.ndarray | None]:
        from rsir.data.transforms import preprocess_batch
        from rsir.retrieval.embed import embed_visual

        out: list[np.ndarray | None] = [None] * len(items)
        for pair in (False, True):
            idx = [i for i, it in enumerate(items) if (it.get("image_t2") is not None) == pair]
            if not idx:
                continue
            data_cfg = dataclasses.replace(self.cfg.data, task="pair" if pair else "single")
            batch = {"id": np.array([str(i) for i in idx], dtype=object),
                     "image": [items[i]["image"] for i in idx],
                     "image_t2": [items[i].get("image_t2") for i in idx],
                     "bands": [items[i].get("bands") or list(data_cfg.bands) for i in idx],
                     **{f: [items[i].get(f) or [] for i in idx] for f in self.fields}}
            inputs = preprocess_batch(batch, data_cfg, train=False, with_captions=False,
                                      fields=self.fields)
            if len(inputs["id"]):
                vectors = embed_visual(self.model, inputs)
                for row, i in enumerate(inputs["id"]):
                    out[int(i)] = vectors[row]
        return out


@serve.deployment
class TextEncoder:
    """Texts -> L2-normalised vectors, batched across requests."""

    def __init__(self, recipe: dict[str, Any], checkpoint: str | None, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.01) -> None:
        from rsir.inference import load_trained

        self.cfg, self.model = load_trained(recipe, checkpoint)
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._forward = _ForwardThread()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        return list(await self.embed_many(texts))

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """A batch the caller already formed (the ingress's text search): one forward."""
        from rsir.retrieval.embed import embed_texts

        return await self._forward(embed_texts, self.model, texts)
