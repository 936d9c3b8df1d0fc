"""Batch embedding with Ray Data (glue): shards -> actor pool of encoders -> archive.

``map_batches`` runs :class:`VisualEmbedder` / :class:`TextEmbedder` actors (one model
load per actor, GPUs when the recipe asks for them) over a split, streaming; the driver
collects ids and vectors and publishes them with ``rsir.retrieval.archive``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.data

from rsir.config import RecipeConfig, from_dict, to_dict
from rsir.data.pipeline import read_split
from rsir.data.transforms import explode_captions, preprocess_batch
from rsir.retrieval.archive import file_sha256, publish_archive

log = logging.getLogger(__name__)


def load_trained(recipe: dict[str, Any], checkpoint: str):
    """The recipe's model with the checkpoint's weights, in eval mode."""
    import torch

    from rsir.models import create_model, load_weights

    torch.set_num_threads(1)
    cfg = from_dict(RecipeConfig, recipe, "recipe")
    model = create_model(cfg.model, cfg.loss)
    load_weights(model, checkpoint)
    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    return cfg, model.to(device).eval()


class VisualEmbedder:
    """Ray Data actor: raw shard rows -> ``id`` + ``embedding`` of the image (or pair)."""

    def __init__(self, recipe: dict[str, Any], checkpoint: str) -> None:
        self.cfg, self.model = load_trained(recipe, checkpoint)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rsir.retrieval.embed import embed_visual

        inputs = preprocess_batch(batch, self.cfg.data, train=False, with_captions=False)
        return {"id": inputs["id"], "embedding": embed_visual(self.model, inputs)}


class TextEmbedder:
    """Ray Data actor: caption rows (``text``) -> ``embedding``."""

    def __init__(self, recipe: dict[str, Any], checkpoint: str) -> None:
        self.cfg, self.model = load_trained(recipe, checkpoint)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rsir.retrieval.embed import embed_texts

        return {**batch, "embedding": embed_texts(self.model, list(batch["text"]))}


@dataclass
class SplitEmbeddings:
    ids: list[str]
    visual: np.ndarray  # [N, D]
    texts: list[str]
    langs: list[str]
    text_owner: np.ndarray  # [T] index into ids
    text_vectors: np.ndarray  # [T, D]
    changed: list[bool | None]


def _actor_kwargs(cfg: RecipeConfig, concurrency: int) -> dict[str, Any]:
    gpu = 1 if cfg.scaling.use_gpu else 0
    # Half a CPU each on CPU machines: the read tasks feeding the actors need CPU too.
    return {"concurrency": concurrency, "num_gpus": gpu, "num_cpus": 0 if gpu else 0.5}


def embed_split(
    cfg: RecipeConfig, checkpoint: str, split: str, language: str | None = "en",
    concurrency: int = 2, batch_size: int = 128,
) -> SplitEmbeddings:
    """Embed every image (or pair) of ``split`` and every caption of ``language``."""
    recipe = to_dict(cfg)
    ds = read_split(cfg.data.shards, split)
    vis = ds.map_batches(
        VisualEmbedder, fn_constructor_kwargs={"recipe": recipe, "checkpoint": checkpoint},
        batch_size=batch_size, batch_format="numpy", **_actor_kwargs(cfg, concurrency),
    )
    ids, vectors = [], []
    for batch in vis.iter_batches(batch_size=1024, batch_format="numpy"):
        ids.extend(str(i) for i in batch["id"])
        vectors.append(np.stack(batch["embedding"]))
    # Captions and flags are small: read them on the driver, in the row order above.
    meta = read_split(cfg.data.shards, split, columns=["id", "split", "captions", "changed"])
    by_id = {str(r["id"]): r for r in meta.iter_rows()}
    if len(ids) < len(by_id):  # preprocessing dropped them (each logged with why by a worker)
        missing = sorted(set(by_id) - set(ids))
        log.warning("embedding %s: skipped %d corrupt or invalid rows of %d, e.g. %s",
                    split, len(missing), len(by_id), missing[:10])
    rows = [by_id[i] for i in ids]
    texts, langs, owner = explode_captions([list(r["captions"]) for r in rows], language)
    text_ds = ray.data.from_items([{"pos": i, "text": t} for i, t in enumerate(texts)])
    txt = text_ds.map_batches(
        TextEmbedder, fn_constructor_kwargs={"recipe": recipe, "checkpoint": checkpoint},
        batch_size=batch_size * 2, batch_format="numpy", **_actor_kwargs(cfg, concurrency),
    )
    text_vectors = np.zeros((len(texts), vectors[0].shape[1] if vectors else 0), np.float32)
    for batch in txt.iter_batches(batch_size=1024, batch_format="numpy"):
        text_vectors[batch["pos"]] = np.stack(batch["embedding"])  # order is not kept
    return SplitEmbeddings(
        ids=ids, visual=np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
        texts=texts, langs=langs, text_owner=np.asarray(owner, dtype=np.int64),
        text_vectors=text_vectors, changed=[r.get("changed") for r in rows],
    )


def publish_split(emb: SplitEmbeddings, cfg: RecipeConfig, checkpoint: str, root: str | Path) -> dict[str, str]:
    """Publish the split's visual and caption archives under ``root/{visual,captions}``."""
    manifest = {"model": cfg.model.name, "recipe": to_dict(cfg), "checkpoint": str(checkpoint),
                "checkpoint_sha256": file_sha256(checkpoint), "task": cfg.data.task}
    root = Path(root)
    return {
        "visual": publish_archive(root / "visual", emb.ids, emb.visual,
                                  {**manifest, "kind": "pair" if cfg.data.task == "pair" else "image"},
                                  {"changed": emb.changed}),
        "captions": publish_archive(
            root / "captions", [f"{emb.ids[o]}#{i}" for i, o in enumerate(emb.text_owner)],
            emb.text_vectors, {**manifest, "kind": "caption"},
            {"text": emb.texts, "lang": emb.langs,
             "owner": [emb.ids[o] for o in emb.text_owner]}),
    }
