"""``rsir index`` and ``rsir evaluate`` (Ray glue): embed a split with Ray Data, publish the
archive, and score it with the papers' protocols into a report directory.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rsir.config import RecipeConfig, load_config, save_config, to_dict
from rsir.preflight import check_recipe, start_job

log = logging.getLogger(__name__)


def _checkpoint(cfg: RecipeConfig, given: str | None) -> str:
    path = given or cfg.model.checkpoint
    if not path or not Path(path).is_file():
        raise SystemExit(f"a trained checkpoint is needed: --checkpoint FILE (got {path!r})")
    return path


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


def evaluate(cfg: RecipeConfig, checkpoint: str, out: Path) -> dict[str, Any]:
    """Embed the test split (archive published under ``out/archive``), score it, and write
    ``report.json``, ``report.md``, plots and ``gallery.html`` into ``out``."""
    from rsir import report as rep
    from rsir.inference import embed_splits, load_trained, publish_split
    from rsir.metrics.retrieval import cross_modal_recall
    from rsir.retrieval.embed import embed_texts

    split = cfg.data.test_split
    # Pairs: val too, in the same pass, for the caption protocol. Every language.
    protocol = cfg.data.task == "pair" and cfg.eval.caption_protocol
    splits = [split, cfg.data.val_split] if protocol else [split]
    embedded = embed_splits(cfg, checkpoint, splits, language=None)
    emb = embedded[split]
    publish_split(emb, cfg, checkpoint, out / "archive")
    meta = _split_meta(cfg, split, emb.ids)
    main_lang = cfg.data.languages[0] if cfg.data.language == "random" else cfg.data.language
    vectors, owner, texts = emb.in_language(main_lang)
    sim = emb.visual @ vectors.T
    rerank = ({"k": cfg.eval.rerank_k, "w_c1": cfg.eval.w_c1, "w_c2": cfg.eval.w_c2}
              if cfg.eval.rerank else None)
    report: dict[str, Any] = {"name": cfg.name, "split": split, "checkpoint": checkpoint,
                              "task": cfg.data.task, "language": main_lang,
                              "recall": rep.recall_section(sim, owner, cfg.eval.ks, rerank)}
    report["per_language"] = {}
    for lang in cfg.data.languages:  # exactly the declared ones (preflight: all present)
        lang_vectors, lang_owner, _ = emb.in_language(lang)
        report["per_language"][lang] = cross_modal_recall(emb.visual @ lang_vectors.T, lang_owner,
                                                          ks=cfg.eval.ks)
    if cfg.data.task == "pair":
        changed = np.array(emb.changed, bool)
        report["recall_change_queries"] = cross_modal_recall(sim, owner, ks=cfg.eval.ks,
                                                             query_images=changed)
        if protocol:
            report["captions"], report["caption_protocol_pairs"] = _caption_protocol(
                embedded[cfg.data.val_split], emb, main_lang, cfg.eval.caption_metrics)
    elif any(meta["attributes"]):
        _, model = load_trained(to_dict(cfg), checkpoint)
        report["composed"] = rep.composed_section(
            emb.ids, meta["class_name"], meta["attributes"], emb.visual,
            lambda ts: embed_texts(model, ts))
    plot_paths = rep.plots(report, emb.visual, vectors, meta["class_name"], owner, out)
    gallery = rep.gallery(sim, emb.ids, meta["thumbs"], texts, owner,
                          title="pairs" if cfg.data.task == "pair" else "images",
                          composed=report.get("composed", {}).get("examples", ()))
    rep.write_report(report, out, gallery, plot_paths)
    save_config(cfg, out / "config.yaml")
    return report


def evaluate_main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    checkpoint = _checkpoint(cfg, args.checkpoint)
    start_job(check_recipe(cfg, "evaluate", checkpoint=checkpoint), args.address,
              cfg.scaling.resource_timeout_s)
    out = Path(args.out or Path(cfg.train.run_dir) / cfg.name / "report")
    report = evaluate(cfg, checkpoint, out)
    print(f"{cfg.name}: mR {report['recall']['plain']['mR']:.2f} "
          f"(chance {report['recall']['chance']['mR']:.2f}); report in {out}")
    return 0


def index_main(args: argparse.Namespace) -> int:
    from rsir.inference import embed_split, publish_split

    cfg = load_config(args.config, args.overrides)
    checkpoint = _checkpoint(cfg, args.checkpoint)
    start_job(check_recipe(cfg, "index", checkpoint=checkpoint, split=args.split), args.address,
              cfg.scaling.resource_timeout_s)
    out = Path(args.out or Path(cfg.train.run_dir) / cfg.name / "archive")
    emb = embed_split(cfg, checkpoint, args.split or cfg.data.test_split, language=None)
    versions = publish_split(emb, cfg, checkpoint, out)
    print(f"published {len(emb.ids)} vectors and {len(emb.texts)} captions to {out}: {versions}")
    return 0
