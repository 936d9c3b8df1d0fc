"""Batch embedding with Ray Data (glue): shards -> actor pool of encoders -> archive.

``map_batches`` runs :class:`SplitEmbedder` actors (one model load per actor, GPUs when the
recipe asks for them) over one or more splits, streaming; the driver collects ids and
vectors and publishes them with ``rsir.retrieval.archive``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsir.config import IndexConfig, RecipeConfig, from_dict, to_dict
from rsir.data.pipeline import read_split
from rsir.data.transforms import explode_captions, preprocess_batch
from rsir.retrieval.archive import file_sha256, publish_archive
from rsir.retrieval.filters import METADATA_COLUMNS
from rsir.retrieval.index import BuildOptions, build_version_index

log = logging.getLogger(__name__)


def pretrained_weights(cfg: RecipeConfig) -> dict[str, str] | None:
    """The towers' pretrained weights (tower -> open_clip tag or local file) when the recipe
    is training-free: a single-image dual encoder whose two towers both name ``pretrained``
    weights and whose head is ``identity`` (no randomly initialised layer between a tower
    and the embedding: WEICOM on CLIP / RemoteCLIP). None otherwise."""
    m = cfg.model
    weights = {"image_tower": m.image_tower.options.get("pretrained"),
               "text_tower": m.text_tower.options.get("pretrained")}
    if (m.name == "dual_encoder" and m.head == "identity" and cfg.data.task == "single"
            and all(weights.values())):
        return {k: str(v) for k, v in weights.items()}
    return None


def resolve_checkpoint(cfg: RecipeConfig, given: str | None) -> str | None:
    """The trained checkpoint to load (``given``, else ``model.checkpoint``), or None for a
    training-free recipe (:func:`pretrained_weights`). Raises ``ValueError`` naming what is
    missing when there is neither."""
    path = given or cfg.model.checkpoint
    if path:
        if not Path(path).is_file():
            raise ValueError(f"checkpoint {path!r}: no such file")
        return str(path)
    if pretrained_weights(cfg) is None:
        m = cfg.model
        raise ValueError(
            f"recipe {cfg.name!r}: a trained checkpoint is needed (--checkpoint FILE or "
            f"model.checkpoint): it runs without one only when both towers name pretrained "
            f"weights (model.*_tower.options.pretrained: an open_clip tag or a local file), "
            f"the head is identity and the task single; here image_tower.pretrained="
            f"{m.image_tower.options.get('pretrained')!r}, text_tower.pretrained="
            f"{m.text_tower.options.get('pretrained')!r}, head={m.head!r}, task={cfg.data.task!r}")
    return None


def weights_manifest(cfg: RecipeConfig, checkpoint: str | None) -> dict[str, Any]:
    """Which weights embedded an archive: the checkpoint and its sha256, or each tower's
    pretrained tag / file (with the file's sha256)."""
    if checkpoint:
        return {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint)}
    towers = {}
    for tower, source in (pretrained_weights(cfg) or {}).items():
        local = Path(source).is_file()
        towers[tower] = {"pretrained": source, "sha256": file_sha256(source) if local else None}
    return {"checkpoint": None, "checkpoint_sha256": None, "pretrained": towers}


def load_trained(recipe: dict[str, Any], checkpoint: str | None):
    """The recipe's model with the checkpoint's weights (None: a training-free recipe, its
    towers' pretrained weights as built; see :func:`resolve_checkpoint`), in eval mode."""
    import torch

    from rsir.models import create_model, load_weights, preprocessing_mismatches

    torch.set_num_threads(1)
    cfg = from_dict(RecipeConfig, recipe, "recipe")
    checkpoint = resolve_checkpoint(cfg, checkpoint)
    model = create_model(cfg.model, cfg.loss)
    mismatches = preprocessing_mismatches(model, cfg.data)
    if checkpoint:
        load_weights(model, checkpoint)
        if mismatches:  # fine-tuned: the recipe's own preprocessing may be deliberate
            log.warning("recipe %s: preprocessing differs from its pretrained image tower's: %s",
                        cfg.name, "; ".join(mismatches))
    elif mismatches:  # the pretrained towers as they are: only their own transform is right
        raise ValueError(f"recipe {cfg.name!r} runs pretrained towers without a checkpoint, so "
                         f"it must preprocess as they expect: {'; '.join(mismatches)}")
    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    return cfg, model.to(device).eval()


# The shard columns an archive keeps per row for filters and results (``changed`` has
# always travelled on its own).
ROW_METADATA = tuple(c for c in METADATA_COLUMNS if c != "changed")
_NO_TIME = np.iinfo(np.int64).min


def shard_metadata_columns(path: str) -> list[str]:
    """The :data:`ROW_METADATA` columns the shards under ``path`` have (shards written
    before the geography columns lack them; their rows publish nulls)."""
    import pyarrow.dataset as pads

    names = set(pads.dataset(path, format="parquet").schema.names)
    return [c for c in ROW_METADATA if c in names]


def _micros(value: Any) -> int:
    """A timestamp as Ray hands it over (numpy datetime64, datetime, pandas) -> int64
    microseconds since the epoch, UTC; null -> ``_NO_TIME``."""
    if value is None:
        return _NO_TIME
    if getattr(value, "tzinfo", None) is not None:  # datetime / pandas: to naive UTC
        from datetime import timezone

        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    t = np.datetime64(value, "us")
    return _NO_TIME if np.isnat(t) else int(t.astype(np.int64))


def encode_metadata(batch: dict[str, Any], rows: list[int]) -> dict[str, np.ndarray]:
    """The metadata of ``rows`` of a shard batch as plain columns a Ray block carries
    without object types: bbox float64 [n, 4] (NaN: none), times int64 microseconds
    (``_NO_TIME``: none), strings and WKB with "" / b"" for none."""
    out: dict[str, np.ndarray] = {}
    for name in ROW_METADATA:
        values = batch.get(name)
        column = [None] * len(rows) if values is None else [values[j] for j in rows]
        if name == "bbox":
            out[name] = np.array([[np.nan] * 4 if b is None else np.asarray(b, np.float64)
                                  for b in column], np.float64).reshape(len(rows), 4)
        elif name in ("acquired", "acquired_t2"):
            out[name] = np.array([_micros(t) for t in column], np.int64)
        elif name == "footprint":
            out[name] = np.array([bytes(v) if v is not None else b"" for v in column], object)
        else:
            out[name] = np.array([str(v) if v is not None else "" for v in column], object)
    return out


def decode_metadata(batch: dict[str, Any]) -> dict[str, list[Any]]:
    """:func:`encode_metadata`'s columns back to archive values (None for none)."""
    from datetime import datetime, timedelta, timezone

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    out: dict[str, list[Any]] = {}
    for name in ROW_METADATA:
        values = batch[name]
        if name == "bbox":
            out[name] = [None if np.isnan(b).any() else [float(v) for v in b] for b in values]
        elif name in ("acquired", "acquired_t2"):
            out[name] = [None if int(t) == _NO_TIME else epoch + timedelta(microseconds=int(t))
                         for t in values]
        else:
            out[name] = [v if len(v) else None for v in values]
    return out


class SplitEmbedder:
    """Ray Data actor: raw shard rows -> one output row per image (or pair) and one per caption.

    One model per actor embeds both modalities of a batch of rows (one pool and one model
    load per evaluation, not one per modality). Output columns: ``id``, ``split``,
    ``kind`` (``visual`` or ``caption``), ``text``, ``lang``, ``changed``, ``embedding``,
    and the row's filter metadata (:func:`encode_metadata`; a caption carries its image's).
    """

    def __init__(self, recipe: dict[str, Any], checkpoint: str | None, language: str | None) -> None:
        from rsir.models import input_contract
        from rsir.retrieval.embed import embed_texts

        self.cfg, self.model = load_trained(recipe, checkpoint)
        self.fields = input_contract(self.cfg).fields
        self.language = language
        self.dim = embed_texts(self.model, ["x"]).shape[1]  # for a batch with no good row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rsir.retrieval.embed import embed_texts, embed_visual

        inputs = preprocess_batch(batch, self.cfg.data, train=False, with_captions=False,
                                  fields=self.fields)
        position = {str(i): j for j, i in enumerate(batch["id"])}
        rows = [position[str(i)] for i in inputs["id"]]  # the rows preprocessing kept
        texts, langs, owner = explode_captions([batch["captions"][j] for j in rows], self.language)
        vectors = [embed_visual(self.model, inputs)] if rows else []
        if texts:
            vectors.append(embed_texts(self.model, texts))
        owners = [*rows, *(rows[o] for o in owner)]
        return {
            "id": np.array([str(batch["id"][j]) for j in owners], dtype=object),
            "split": np.array([str(batch["split"][j]) for j in owners], dtype=object),
            "kind": np.array(["visual"] * len(rows) + ["caption"] * len(texts), dtype=object),
            "text": np.array([""] * len(rows) + texts, dtype=object),
            "lang": np.array([""] * len(rows) + langs, dtype=object),
            "changed": np.array([batch["changed"][j] for j in owners], dtype=object),
            **encode_metadata(batch, owners),
            "embedding": (np.concatenate(vectors) if vectors
                          else np.zeros((0, self.dim), np.float32)),
        }


@dataclass
class SplitEmbeddings:
    ids: list[str]
    visual: np.ndarray  # [N, D]
    texts: list[str]
    langs: list[str]
    text_owner: np.ndarray  # [T] index into ids
    text_vectors: np.ndarray  # [T, D]
    changed: list[bool | None]
    # the filter / result metadata of each row (rsir.retrieval.filters.METADATA_COLUMNS
    # less ``changed``), one value per id
    metadata: dict[str, list[Any]] = field(default_factory=dict)

    def in_language(self, lang: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The captions of ``lang``: their vectors ``[T, D]``, owners (index into ``ids``)
        and texts."""
        keep = np.array(self.langs) == lang
        return (self.text_vectors[keep], self.text_owner[keep],
                [t for t, k in zip(self.texts, keep) if k])


def _actor_kwargs(cfg: RecipeConfig, concurrency: int) -> dict[str, Any]:
    gpu = 1 if cfg.scaling.use_gpu else 0
    # Half a CPU each on CPU machines: the read tasks feeding the actors need CPU too.
    return {"concurrency": concurrency, "num_gpus": gpu, "num_cpus": 0 if gpu else 0.5}


def embed_splits(
    cfg: RecipeConfig, checkpoint: str | None, splits: Sequence[str], language: str | None = "en",
    concurrency: int = 2, batch_size: int = 128,
) -> dict[str, SplitEmbeddings]:
    """Embed every image (or pair) of each split and every caption of ``language`` (all
    languages when None) in one streaming pass. Rows are ordered by id; a row preprocessing
    drops (corrupt image) is logged by the worker and left out."""
    from rsir.models import input_contract

    columns = input_contract(cfg).columns
    columns += [c for c in shard_metadata_columns(cfg.data.shards) if c not in columns]
    ds = read_split(cfg.data.shards, splits, columns).map_batches(
        SplitEmbedder, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs={"recipe": to_dict(cfg), "checkpoint": checkpoint,
                               "language": language},
        **_actor_kwargs(cfg, concurrency),
    )
    visual: dict[str, dict[str, tuple[np.ndarray, bool | None]]] = {s: {} for s in splits}
    captions: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        decoded = decode_metadata(batch)
        for n, (i, split, kind, text, lang, changed, vec) in enumerate(zip(
                batch["id"], batch["split"], batch["kind"], batch["text"], batch["lang"],
                batch["changed"], batch["embedding"])):
            if kind == "visual":
                visual[split][i] = (vec, None if changed is None else bool(changed))
                metadata[i] = {name: values[n] for name, values in decoded.items()}
            else:  # a row's captions stay in their shard order
                captions.setdefault(i, []).append((text, lang, vec))
    return {split: _split_embeddings(rows, captions, metadata) for split, rows in visual.items()}


def _split_embeddings(rows: dict[str, tuple[np.ndarray, bool | None]],
                      captions: dict[str, list[tuple[str, str, np.ndarray]]],
                      metadata: dict[str, dict[str, Any]]) -> SplitEmbeddings:
    ids = sorted(rows)
    owned = [(n, c) for n, i in enumerate(ids) for c in captions.get(i, ())]
    dim = next(iter(rows.values()))[0].shape[0] if rows else 0
    return SplitEmbeddings(
        ids=ids,
        visual=np.stack([rows[i][0] for i in ids]) if ids else np.zeros((0, dim), np.float32),
        texts=[c[0] for _, c in owned], langs=[c[1] for _, c in owned],
        text_owner=np.array([n for n, _ in owned], dtype=np.int64),
        text_vectors=(np.stack([c[2] for _, c in owned]) if owned
                      else np.zeros((0, dim), np.float32)),
        changed=[rows[i][1] for i in ids],
        metadata={name: [metadata.get(i, {}).get(name) for i in ids] for name in ROW_METADATA},
    )


def embed_split(cfg: RecipeConfig, checkpoint: str | None, split: str, language: str | None = "en",
                **kwargs: Any) -> SplitEmbeddings:
    """:func:`embed_splits` of one split."""
    return embed_splits(cfg, checkpoint, [split], language, **kwargs)[split]


def publish_split(emb: SplitEmbeddings, cfg: RecipeConfig, checkpoint: str | None,
                  root: str | Path, base: dict[str, str] | None = None,
                  deleted: dict[str, Any] | None = None, current: bool = True) -> dict[str, str]:
    """Publish the split's visual and caption archives under ``root/{visual,captions}``;
    the manifest names the weights (:func:`weights_manifest`). With ``base`` (archive ->
    version), each is a delta of that version (these rows added, ``deleted`` positions
    tombstoned); ``current=False`` leaves ``CURRENT`` for :func:`build_archive_index`."""
    manifest = {"model": cfg.model.name, "recipe": to_dict(cfg), "task": cfg.data.task,
                **weights_manifest(cfg, checkpoint)}
    root = Path(root)
    base, deleted = base or {}, deleted or {}
    return {
        "visual": publish_archive(root / "visual", emb.ids, emb.visual,
                                  {**manifest, "kind": "pair" if cfg.data.task == "pair" else "image"},
                                  {"changed": emb.changed, **emb.metadata}, base=base.get("visual"),
                                  deleted=deleted.get("visual", ()), current=current),
        # A caption carries its image's metadata: a filtered caption search needs no join.
        "captions": publish_archive(
            root / "captions", [f"{emb.ids[o]}#{i}" for i, o in enumerate(emb.text_owner)],
            emb.text_vectors, {**manifest, "kind": "caption"},
            {"text": emb.texts, "lang": emb.langs,
             "owner": [emb.ids[o] for o in emb.text_owner],
             "changed": [emb.changed[o] for o in emb.text_owner],
             **{name: [values[o] for o in emb.text_owner]
                for name, values in emb.metadata.items()}},
            base=base.get("captions"), deleted=deleted.get("captions", ()), current=current),
    }


def build_options(cfg: IndexConfig) -> BuildOptions:
    """The library's build options of a recipe's ``index`` section."""
    return BuildOptions(max_memory=cfg.max_memory, key=cfg.key, pieces=cfg.pieces,
                        flat_rows=cfg.flat_rows, nlist=cfg.nlist, opq=cfg.opq, refine=cfg.refine,
                        target_recall=cfg.target_recall, eval_queries=cfg.eval_queries)


def _ray_map(fn: Any, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One Ray Data task per piece: each reads its rows from the Parquet archive in
    batches and writes its piece; the driver sees only the tasks' small results."""
    import ray

    return ray.data.from_items(tasks, override_num_blocks=len(tasks)).map(fn, num_cpus=1).take_all()


def build_archive_index(root: str | Path, version: str, cfg: IndexConfig) -> dict[str, Any] | None:
    """Index ``version`` of the archive at ``root`` (its own rows: the full build, or an
    append's delta) with Ray Data filling the pieces; None when there is nothing to index
    (``kind: exact``, or a delete)."""
    if cfg.kind == "exact":
        return None
    return build_version_index(root, version, build_options(cfg), map_fn=_ray_map)
