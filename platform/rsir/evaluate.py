"""``rsir index`` and ``rsir evaluate`` (Ray glue): embed a split with Ray Data, publish the
archive, and score it with the papers' protocols into a report directory.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rsir.config import RecipeConfig, evaluated_splits, load_config, save_config, to_dict
from rsir.preflight import check_recipe, start_job

log = logging.getLogger(__name__)


def _checkpoint(cfg: RecipeConfig, given: str | None) -> str | None:
    """The checkpoint to load, or None for a training-free recipe (its pretrained towers)."""
    from rsir.inference import resolve_checkpoint

    try:
        return resolve_checkpoint(cfg, given)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _conversion_summary(shards: str) -> dict[str, Any] | None:
    """The converter's ``_SUCCESS`` summary of the shards (its options carry, e.g., the
    PATTERNCOM CSVs' sha256), when the shards come from ``rsir convert``."""
    path = Path(shards) / "_SUCCESS"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _split_meta(cfg: RecipeConfig, split: str, ids: list[str]) -> dict[str, list[Any]]:
    """Class, attributes and thumbnails of the embedded rows, in the archive's order."""
    from rsir.data.schema import attributes_dict, decode_image, encode_image, read_table

    table = read_table(cfg.data.shards, split=split,
                       columns=["id", "split", "image", "image_t2", "class_name", "attributes"])
    rows = {r["id"]: r for r in table.to_pylist()}
    thumbs = []
    for i in ids:
        r = rows[i]
        if r["image_t2"] is not None:  # a pair: both dates side by side
            a, b = decode_image(r["image"]), decode_image(r["image_t2"])
            thumbs.append(encode_image(np.concatenate([a[..., :3], b[..., :3]], axis=1)))
        else:
            thumbs.append(r["image"])
    return {"class_name": [rows[i]["class_name"] or "" for i in ids],
            "attributes": [attributes_dict(rows[i]["attributes"]) for i in ids],
            "thumbs": thumbs}


def _caption_protocol(val: Any, test: Any, lang: str, backend: str) -> tuple[dict[str, Any], int]:
    """The time-series paper's caption-metric protocol on val+test merged, as it specifies
    (captions of ``lang``, metrics of ``backend``); returns the result (scores and the
    backend that ran) and the number of pairs merged."""
    from rsir.metrics.captions import caption_retrieval_scores

    (val_vec, val_owner, val_texts), (test_vec, test_owner, test_texts) = (
        val.in_language(lang), test.in_language(lang))
    visual = np.concatenate([val.visual, test.visual])
    vectors = np.concatenate([val_vec, test_vec])
    owner = np.concatenate([val_owner, test_owner + len(val.ids)])
    changed = np.array(val.changed + test.changed, bool)
    return caption_retrieval_scores(visual @ vectors.T, owner, val_texts + test_texts,
                                    changed, backend=backend), len(visual)


NO_CAPTIONS = "the archive has no captions"


def evaluate(cfg: RecipeConfig, checkpoint: str | None, out: Path) -> dict[str, Any]:
    """Embed the test split (archive published under ``out/archive``), score it, and write
    ``report.json``, ``report.md``, plots and ``gallery.html`` into ``out``. ``checkpoint``
    None: a training-free recipe. Without captions (PatternNet) every caption section is
    skipped, with a note in ``report["skipped"]``."""
    from rsir import report as rep
    from rsir.inference import embed_splits, load_trained, publish_split, weights_manifest
    from rsir.metrics.retrieval import cross_modal_recall
    from rsir.retrieval.embed import embed_texts

    split = cfg.data.test_split
    # Pairs: val too, in the same pass, for the caption protocol. Every language.
    protocol = cfg.data.task == "pair" and cfg.eval.caption_protocol
    embedded = embed_splits(cfg, checkpoint, evaluated_splits(cfg), language=None)
    emb = embedded[split]
    publish_split(emb, cfg, checkpoint, out / "archive")
    meta = _split_meta(cfg, split, emb.ids)
    main_lang = cfg.data.languages[0] if cfg.data.language == "random" else cfg.data.language
    vectors, owner, texts = emb.in_language(main_lang)
    sim = emb.visual @ vectors.T
    report: dict[str, Any] = {"name": cfg.name, "split": split, "task": cfg.data.task,
                              "language": main_lang, "model": model_description(cfg),
                              **weights_manifest(cfg, checkpoint), "skipped": {}}
    conversion = _conversion_summary(cfg.data.shards)
    if conversion is not None:
        report["conversion"] = conversion
    if len(texts):
        rerank = ({"k": cfg.eval.rerank_k, "w_c1": cfg.eval.w_c1, "w_c2": cfg.eval.w_c2,
                   "ties": cfg.eval.rerank_ties}
                  if cfg.eval.rerank else None)
        report["recall"] = rep.recall_section(sim, owner, cfg.eval.ks, rerank)
    else:
        report["skipped"]["recall"] = f"{NO_CAPTIONS} in language {main_lang!r}"
    if emb.langs:
        report["per_language"] = {}
        for lang in cfg.data.languages:  # exactly the declared ones (preflight: all present)
            lang_vectors, lang_owner, _ = emb.in_language(lang)
            report["per_language"][lang] = cross_modal_recall(emb.visual @ lang_vectors.T,
                                                              lang_owner, ks=cfg.eval.ks)
    else:
        report["skipped"]["per_language"] = NO_CAPTIONS
    if cfg.data.task == "pair" and len(texts):
        changed = np.array(emb.changed, bool)
        report["recall_change_queries"] = cross_modal_recall(sim, owner, ks=cfg.eval.ks,
                                                             query_images=changed)
        if protocol:
            report["captions"], report["caption_protocol_pairs"] = _caption_protocol(
                embedded[cfg.data.val_split], emb, main_lang, cfg.eval.caption_metrics)
    elif cfg.data.task == "pair":
        report["skipped"]["recall_change_queries"] = NO_CAPTIONS
        if protocol:
            report["skipped"]["captions"] = NO_CAPTIONS
    elif any(meta["attributes"]):
        _, model = load_trained(to_dict(cfg), checkpoint)
        report["composed"] = rep.composed_section(
            emb.ids, meta["class_name"], meta["attributes"], emb.visual,
            lambda ts: embed_texts(model, ts), cfg.eval.weicom_lambda)
        if cfg.eval.query_check:
            report["query_check"] = _query_check(cfg, meta, emb.visual, model, main_lang)
    if cfg.eval.query_check and "query_check" not in report:
        report["skipped"]["query_check"] = ("single images with class_name and attributes only "
                                            f"(task {cfg.data.task})")
    if not len(texts):
        report["skipped"]["gallery_captions"] = NO_CAPTIONS + " (the gallery shows composed queries only)"
        report["skipped"]["embedding_map_captions"] = NO_CAPTIONS + " (the map shows images only)"
    plot_paths = rep.plots(report, emb.visual, vectors, meta["class_name"], owner, out)
    gallery = rep.gallery(sim, emb.ids, meta["thumbs"], texts, owner,
                          title="pairs" if cfg.data.task == "pair" else "images",
                          composed=report.get("composed", {}).get("examples", ()))
    rep.write_report(report, out, gallery, plot_paths)
    save_config(cfg, out / "config.yaml")
    return report


def _query_check(cfg: RecipeConfig, meta: dict[str, list[Any]], visual: np.ndarray, model: Any,
                 main_lang: str) -> dict[str, Any]:
    """The demo world's (class × colour) queries in the recipe's languages that its lexicon
    has (the training language first) against the embedded split."""
    from rsir import report as rep
    from rsir.data.demo_lexicon import LANGS
    from rsir.data.demo_world import vocabulary_queries
    from rsir.retrieval.embed import embed_texts

    langs = [lg for lg in dict.fromkeys([main_lang, *cfg.data.languages]) if lg in LANGS]
    return rep.query_check_section(visual, meta["class_name"], meta["attributes"],
                                   {lg: vocabulary_queries(lg) for lg in langs},
                                   lambda ts: embed_texts(model, ts))


def model_description(cfg: RecipeConfig) -> str:
    """The architecture and what it reads, as the report states it (a GaLR run without its
    local branch says so: it is the paper's ablation, not GaLR)."""
    from rsir.models import input_contract

    name = cfg.model.name
    if name == "galr":
        name = ("GaLR, global branch only (model.options.local_branch: false; no objects read)"
                if not cfg.model.options.get("local_branch", True) else
                "GaLR: global branch + local branch (GCN over the rows' objects), MIDF fusion")
    return f"{name}; {input_contract(cfg).describe()}"


def headline(report: dict[str, Any]) -> str:
    """One line of the report's main numbers, for the command line."""
    parts = []
    if "recall" in report:
        rec = report["recall"]
        parts.append(f"mR {rec['plain']['mR']:.2f} (chance {rec['chance']['mR']:.2f})")
    if "composed" in report:
        comp = report["composed"]
        parts.append(f"WEICOM mAP {comp['weicom']['mAP']:.2f} at λ = {comp['lambda']:g}")
    return ", ".join(parts) or "no caption and no composed query to score"


def evaluate_main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    checkpoint = _checkpoint(cfg, args.checkpoint)
    start_job(check_recipe(cfg, "evaluate", checkpoint=checkpoint), args.address,
              cfg.scaling.resource_timeout_s)
    out = Path(args.out or Path(cfg.train.run_dir) / cfg.name / "report")
    report = evaluate(cfg, checkpoint, out)
    print(f"{cfg.name}: {headline(report)}; report in {out}")
    return 0


def _index_config(cfg: RecipeConfig, source: str) -> None:
    """Refuse a bad ``index`` section before anything starts, naming the key."""
    from rsir.retrieval.index import IndexKey, parse_memory

    parse_memory(cfg.index.max_memory, f"{source}:index.max_memory")
    if cfg.index.key:
        try:
            IndexKey.parse(cfg.index.key)
        except ValueError as err:
            raise SystemExit(f"{source}:index.key: {err}") from None


def _publish(out: Path, versions: dict[str, str], cfg: RecipeConfig) -> dict[str, Any]:
    """Index each new version, then name it in CURRENT (a reader sees it whole or not)."""
    from rsir.inference import build_archive_index
    from rsir.retrieval.archive import set_current

    built = {}
    for target, version in versions.items():
        meta = build_archive_index(out / target, version, cfg.index)
        if meta is not None:
            built[target] = {k: meta.get(k) for k in ("key", "rows", "nprobe", "bytes_per_vector")}
            if "report" in meta:
                built[target]["recall@10"] = meta["report"].get("recall@10")
        set_current(out / target, version)
    return built


def _delete(out: Path, ids: list[str]) -> dict[str, str]:
    """Tombstone the rows with these ids (and the captions they own)."""
    from rsir.retrieval.archive import positions_of, publish_archive, read_manifest

    versions = {}
    for target, column in (("visual", "id"), ("captions", "owner")):
        root = out / target
        if not (root / "CURRENT").is_file():
            continue
        pos = positions_of(root, ids, column)
        if target == "visual" and len(pos) < len(set(ids)):
            from rsir.retrieval.archive import live_ids

            live = set(live_ids(root)[0])
            missing = sorted(set(ids) - live)
            raise SystemExit(f"{root}: no live row with id {missing[:5]}")
        manifest = read_manifest(root)
        versions[target] = publish_archive(root, [], np.zeros((0, manifest["dim"]), np.float32),
                                           {k: manifest[k] for k in ("model", "kind") if k in manifest},
                                           base=manifest["version"], deleted=pos)
    return versions


def index_main(args: argparse.Namespace) -> int:
    """``rsir index``: embed a split and publish it (a full build, with its index), or
    ``--append`` it to the current version as a delta (rows with an id already there
    replace theirs), ``--delete`` ids (tombstones), ``--compact`` (a full rebuild of the
    live rows). Every change reaches CURRENT in one rename, index included."""
    from rsir.inference import embed_split, publish_split
    from rsir.retrieval.archive import compact_archive, current_version, positions_of

    cfg = load_config(args.config, args.overrides)
    _index_config(cfg, args.config)
    out = Path(args.out or Path(cfg.train.run_dir) / cfg.name / "archive")
    if getattr(args, "delete", None):
        versions = _delete(out, list(args.delete))
        print(f"deleted {len(args.delete)} ids from {out}: {versions}")
        return 0
    checkpoint = _checkpoint(cfg, args.checkpoint)
    start_job(check_recipe(cfg, "index", checkpoint=checkpoint, split=args.split), args.address,
              cfg.scaling.resource_timeout_s)
    if getattr(args, "compact", False):
        versions = {t: compact_archive(out / t) for t in ("visual", "captions") if (out / t / "CURRENT").is_file()}
        built = _publish(out, versions, cfg)
        print(f"compacted {out}: {versions}; index {json.dumps(built)}")
        return 0
    emb = embed_split(cfg, checkpoint, args.split or cfg.data.test_split, language=None)
    base = deleted = None
    if getattr(args, "append", False):
        base = {t: current_version(out / t) for t in ("visual", "captions")}
        # A re-embedded id replaces its old row (and that row's captions).
        deleted = {"visual": positions_of(out / "visual", emb.ids, "id"),
                   "captions": positions_of(out / "captions", emb.ids, "owner")}
    versions = publish_split(emb, cfg, checkpoint, out, base=base, deleted=deleted, current=False)
    built = _publish(out, versions, cfg)
    what = "appended" if base else "published"
    print(f"{what} {len(emb.ids)} vectors and {len(emb.texts)} captions to {out}: {versions}; "
          f"index {json.dumps(built)}")
    return 0
