"""``rsir demo``: the whole platform end to end on the generated world.

1. generate the demo world as Parquet shards (single-date scenes and bitemporal pairs);
2. for each task (``single``, ``pair``) train the recipe with Ray Train (DDP on the CPU
   workers), a checkpoint every epoch;
3. embed the held-out test split with Ray Data batch inference, publish the archives and
   write the evaluation report (``OUT/reports/<task>/``: tables, plots, gallery);
4. print R@1/5/10 and mR in both directions beside chance level, and write the table's
   numbers to ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from rsir.config import RecipeConfig, apply_overrides, from_dict, load_config, save_config, to_dict
from rsir.data.demo_world import ensure_world

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("configs/demo.yaml")
TASK_SHARDS = {"single": "single", "pair": "pairs"}


def evaluate_task(cfg: RecipeConfig, checkpoint: Path, out: Path) -> dict[str, Any]:
    """``rsir evaluate`` on the test split (archive published, report written to ``out``);
    returns the numbers of the demo's table."""
    from rsir.evaluate import evaluate

    full = evaluate(cfg, str(checkpoint), out)
    rec, chance = full["recall"]["plain"], full["recall"]["chance"]
    summary = {
        "kind": cfg.data.task,
        "model": cfg.model.name,
        "fusion": cfg.model.fusion,
        "i2t": {f"R@{k}": v for k, v in rec["i2t"].items()},
        "t2i": {f"R@{k}": v for k, v in rec["t2i"].items()},
        "mR": rec["mR"],
        "chance_i2t": {f"R@{k}": v for k, v in chance["i2t"].items()},
        "chance_t2i": {f"R@{k}": v for k, v in chance["t2i"].items()},
        "chance_mR": chance["mR"],
        "per_language_mR": {lang: r["mR"] for lang, r in full["per_language"].items()},
    }
    if "recall_change_queries" in full:  # pairs: the queries of changed pairs alone
        summary["change_queries_mR"] = full["recall_change_queries"]["mR"]
    if cfg.model.name == "galr":  # the local-branch ablation's two arms
        summary["local_branch"] = bool(cfg.model.options.get("local_branch", True))
        summary["epochs"] = cfg.train.epochs
    if "query_check" in full:  # single images: the (class × colour) queries
        check = full["query_check"]
        k, (lang, head) = check["k"], next(iter(check["languages"].items()))
        summary["query_check"] = {"k": k, "language": lang,
                                  **{key: v for key, v in head.items() if key != "rows"}}
    if "composed" in full:
        summary["composed"] = {"weicom_best_lambda": full["composed"]["best_lambda"],
                               "weicom_mAP": full["composed"]["best_mAP"],
                               **full["composed"]["baselines"]}
    return summary


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """The held-out results as a Markdown table, each R@K beside its chance level."""
    lines = ["| task | direction | R@1 | R@5 | R@10 | mean | chance mean | × chance |",
             "|---|---|---|---|---|---|---|---|"]
    for task, r in report.items():
        item = "pair" if r["kind"] == "pair" else "image"
        for d, name in (("t2i", f"text → {item}"), ("i2t", f"{item} → text")):
            vals = r[d]
            mean = sum(vals.values()) / len(vals)
            cmean = sum(r[f"chance_{d}"].values()) / len(vals)
            cells = " | ".join(f"{v:.1f} ({r[f'chance_{d}'][k]:.1f})" for k, v in vals.items())
            lines.append(f"| {task} | {name} | {cells} | {mean:.1f} | {cmean:.2f} | "
                         f"{mean / cmean:.0f}× |")
        lines.append(f"| {task} | **mR** | | | | **{r['mR']:.1f}** | {r['chance_mR']:.2f} | "
                     f"{r['mR'] / r['chance_mR']:.0f}× |")
    return "\n".join(lines)


def format_language_table(report: dict[str, dict[str, Any]]) -> str:
    """mR per query language (one column per task) beside chance."""
    tasks = list(report)
    langs = sorted({lang for r in report.values() for lang in r["per_language_mR"]})
    lines = ["| language | " + " | ".join(tasks) + " | chance |", "|---" * (len(tasks) + 2) + "|"]
    for lang in langs:
        cells = " | ".join(f"{report[t]['per_language_mR'].get(lang, float('nan')):.1f}" for t in tasks)
        lines.append(f"| {lang} | {cells} | {report[tasks[0]]['chance_mR']:.2f} |")
    return "\n".join(lines)


def format_change_table(report: dict[str, dict[str, Any]]) -> str:
    """mR of all queries and of the change queries alone, for the pair tasks."""
    lines = ["| task | fusion | mR | change queries mR |", "|---|---|---|---|"]
    lines += [f"| {t} | {r['fusion']} | {r['mR']:.1f} | {r['change_queries_mR']:.1f} |"
              for t, r in report.items() if "change_queries_mR" in r]
    return "\n".join(lines)


def format_galr_ablation_table(report: dict[str, dict[str, Any]]) -> str:
    """GaLR's local-branch ablation (the paper's Table VI layout): mR of full GaLR (global +
    local objects) and of its global branch alone, held-out split."""
    lines = ["| task | GaLR branches | epochs | i2t R@1/5/10 | t2i R@1/5/10 | mR | chance mR |",
             "|---|---|---|---|---|---|---|"]
    for t, r in report.items():
        if "local_branch" not in r:
            continue
        arms = "global + local (objects, MIDF)" if r["local_branch"] else "global only"
        i2t, t2i = ("/".join(f"{v:.1f}" for v in r[d].values()) for d in ("i2t", "t2i"))
        lines.append(f"| {t} | {arms} | {r['epochs']} | {i2t} | {t2i} | {r['mR']:.1f} | "
                     f"{r['chance_mR']:.2f} |")
    return "\n".join(lines)


def format_query_check_table(report: dict[str, dict[str, Any]]) -> str:
    """Text → image precision@k of the class and of the colour, mean and worst of the
    (class × colour) queries, per task that ran the query check."""
    rows = {t: r["query_check"] for t, r in report.items() if "query_check" in r}
    k = next(iter(rows.values()))["k"]
    lines = [f"| task | language | class P@{k} | colour P@{k} | worst class P@{k} | worst colour P@{k} |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t} | {q['language']} | {q[f'class_P@{k}']:.2f} | {q[f'color_P@{k}']:.2f} | "
              f"{q[f'min_class_P@{k}']:.2f} | {q[f'min_color_P@{k}']:.2f} |" for t, q in rows.items()]
    return "\n".join(lines)


def task_config(cfg: RecipeConfig, task: str, shards_root: Path, runs_root: Path) -> RecipeConfig:
    """The recipe of one demo task: ``demo.tasks[task]``'s overrides on the demo recipe
    (``{runs}`` in an override is the folder of the demo's runs, ``runs_root``)."""
    overrides = [o.replace("{runs}", str(runs_root)) for o in cfg.demo.tasks[task]]
    data = apply_overrides(to_dict(cfg), [*overrides, f"name={cfg.name}-{task}"])
    data["data"]["shards"] = str(shards_root / TASK_SHARDS[data["data"]["task"]])
    return from_dict(RecipeConfig, data, f"demo.tasks.{task}")


def run_demo(cfg: RecipeConfig, out: Path, local: bool = True) -> dict[str, dict[str, Any]]:
    """Every task of ``cfg.demo.tasks``; ``local``: Ray was started by this process (a task
    whose resources do not fit stops at once rather than waiting)."""
    from rsir.preflight import check_recipe, preflight
    from rsir.train.trainer import fit

    out.mkdir(parents=True, exist_ok=True)
    shards_root = out / "shards"
    ensure_world(cfg, shards_root)
    report: dict[str, dict[str, Any]] = {}
    for task in cfg.demo.tasks:
        task_cfg = task_config(cfg, task, shards_root, out / "runs")
        run_dir = out / "runs" / task
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo always trains from scratch
        t0 = time.perf_counter()
        preflight(check_recipe(task_cfg, "train"), local=local,
                  timeout_s=task_cfg.scaling.resource_timeout_s)
        result = fit(task_cfg, run_dir)
        last = result.history[-1]
        print(f"[{task}] trained {len(result.history)} epochs in "
              f"{time.perf_counter() - t0:.0f} s: loss {last['loss']:.3f}, val mR "
              f"{last.get('val_mR', float('nan')):.1f}, {last['samples_per_s']:.0f} samples/s",
              flush=True)
        report[task] = evaluate_task(task_cfg, result.checkpoint, out / "reports" / task)
        report[task]["train_seconds"] = time.perf_counter() - t0
    return report


def watch(cfg: RecipeConfig, out: Path) -> dict[str, Any]:
    """Find, then monitor, with the ``pair`` task's model on its archive (the test pairs):

    1. a filtered search: ``demo.watch_query`` inside the region's west half, pairs whose
       dates reach 2021 or later (``rsir.retrieval.filters``, what the endpoint's shards run);
    2. a monitor for the same described change and scope, calibrated to the archive's top
       ``demo.watch_top`` (``rsir.monitor``: SQLite store under ``OUT/watch/``);
    3. ``demo.watch_new_pairs`` new pair tiles of the world (south of the others) are
       embedded with Ray Data and land as a delta version (an append); its rows are scored
       against the monitor on Ray (``rsir.monitor.job.score_version``);
    4. the alerts' precision (and recall) against the world's ground truth
       (``demo.watch_truth``: the change the generator made), and a map of it all.
    """
    import numpy as np

    from rsir.data.demo_world import pair_row
    from rsir.data.schema import write_shards
    from rsir.inference import embed_split, load_trained
    from rsir.monitor.job import score_version
    from rsir.monitor.store import MonitorStore
    from rsir.retrieval.archive import load_archive, publish_archive
    from rsir.retrieval.embed import embed_texts
    from rsir.retrieval.filters import MetadataTable, filtered_top_k, parse_filter
    from rsir.retrieval.monitors import calibrate

    d = cfg.demo
    pair_cfg = task_config(cfg, "pair", out / "shards", out / "runs")
    ckpt = out / "runs" / "pair" / "last.pt"
    root = out / "reports" / "pair" / "archive" / "visual"
    wdir = out / "watch"
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir(parents=True)
    old = load_archive(root)
    _, model = load_trained(to_dict(pair_cfg), str(ckpt))
    q = embed_texts(model, [d.watch_query])[0]
    boxes = np.array([b for b in old.metadata["bbox"] if b is not None])
    west, south, east, north = boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()
    # the west half, reaching south over where the new tiles will land
    scope = [float(west), float(south - (north - south)), float((west + east) / 2), float(north)]
    flt = parse_filter({"bbox": scope, "datetime": "2021-01-01T00:00:00Z/.."})
    table = MetadataTable(old.metadata, len(old))
    cand = table.candidates(flt)
    scores, rows = filtered_top_k(old.vectors, q[None], 5, cand)
    found = [{"id": old.ids[r], "score": float(s), "acquired": old.metadata["acquired"][r].isoformat(),
              "acquired_t2": old.metadata["acquired_t2"][r].isoformat()} for s, r in zip(scores[0], rows[0]) if r >= 0]

    in_scope = table.candidates(parse_filter({"bbox": scope}))
    threshold, best = calibrate(old.vectors[in_scope] @ q, d.watch_top)
    store = MonitorStore(wdir / "monitors.db")
    store.create(name="new-buildings-west", target="pairs", vector=q, threshold=threshold,
                 calibration=best, scope={"bbox": scope}, archive_version=old.version,
                 definition={"query": {"kind": "text", "text": d.watch_query}, "target": "pairs",
                             "scope": {"bbox": scope}, "calibrate": {"top": d.watch_top}})

    # new imagery: pair tiles the world had not shown, embedded like the archive, landing as a version
    start = d.n_pairs
    new_rows = [pair_row(i, d.seed, "test", d.image_size) for i in range(start, start + d.watch_new_pairs)]
    truth = {r["id"]: all(dict(r["attributes"]).get(k) == v for k, v in d.watch_truth.items()) for r in new_rows}
    write_shards(new_rows, wdir / "new_pairs")
    delta_cfg = from_dict(RecipeConfig, apply_overrides(to_dict(pair_cfg), [f"data.shards={wdir / 'new_pairs'}"]),
                          "demo watch")
    emb = embed_split(delta_cfg, str(ckpt), "test")
    new_meta = {"changed": emb.changed, **emb.metadata}
    t_land = time.perf_counter()  # the delta lands: a version of the new rows on the old one
    new = publish_archive(root, emb.ids, emb.visual, old.manifest,
                          {k: new_meta.get(k, [None] * len(emb.ids)) for k in old.metadata}, base=old.version)
    result = score_version(store, "pairs", str(root), new, old.version, use_ray=True)
    latency = time.perf_counter() - t_land
    alerts = store.alerts("new-buildings-west")
    hits = [a for a in alerts if truth.get(a["row_id"])]
    new_table = MetadataTable({k: emb.metadata.get(k, [None] * len(emb.ids)) for k in ("bbox",)}, len(emb.ids))
    true_in_scope = sum(truth[emb.ids[i]] for i in new_table.candidates(parse_filter({"bbox": scope})))
    summary = {
        "query": d.watch_query, "scope_bbox": scope, "filtered_search": found,
        "filtered_search_in_scope": all(_in_box(old.metadata["bbox"][old.ids.index(f["id"])], scope)
                                        and f["acquired_t2"] >= "2021" for f in found),
        "threshold": threshold, "calibrated_top": d.watch_top, "new_pairs": len(emb.ids),
        "alerts": len(alerts), "alerts_showing_the_change": len(hits),
        "precision": len(hits) / len(alerts) if alerts else float("nan"),
        "recall": len(hits) / true_in_scope if true_in_scope else float("nan"),
        "true_changes_in_scope": int(true_in_scope), "seconds_to_last_alert": latency,
        "version": result.version,
    }
    _watch_map(wdir / "map.png", old, emb, scope, found, alerts, truth)
    (wdir / "watch.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _in_box(bbox: list[float] | None, scope: list[float]) -> bool:
    return bbox is not None and bbox[0] <= scope[2] and bbox[2] >= scope[0] and bbox[1] <= scope[3] \
        and bbox[3] >= scope[1]


def _watch_map(path: Path, old: Any, emb: Any, scope: list[float], found: list[dict[str, Any]],
               alerts: list[dict[str, Any]], truth: dict[str, bool]) -> None:
    """Footprints on lon/lat axes: the archive, the new tiles, the scope, the filtered
    search's results and the alerts (right or wrong by the world's ground truth)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(8, 8))

    def boxes(bbs, **kw):
        for b in bbs:
            if b is not None:
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], **kw))

    boxes(old.metadata["bbox"], facecolor="0.9", edgecolor="0.8", lw=0.2)
    boxes(emb.metadata["bbox"], facecolor="#dbe9f6", edgecolor="#9ecae1", lw=0.2)
    by_id = dict(zip(old.ids, old.metadata["bbox"])) | dict(zip(emb.ids, emb.metadata["bbox"]))
    boxes([by_id[f["id"]] for f in found], facecolor="orange", edgecolor="darkorange")
    boxes([by_id[a["row_id"]] for a in alerts if truth.get(a["row_id"])], facecolor="tab:green", edgecolor="darkgreen")
    boxes([by_id[a["row_id"]] for a in alerts if not truth.get(a["row_id"])], facecolor="tab:red", edgecolor="darkred")
    ax.add_patch(Rectangle((scope[0], scope[1]), scope[2] - scope[0], scope[3] - scope[1], fill=False,
                           edgecolor="black", lw=1.5, ls="--"))
    all_b = [b for b in by_id.values() if b is not None]
    ax.set_xlim(min(b[0] for b in all_b), max(b[2] for b in all_b))
    ax.set_ylim(min(b[1] for b in all_b), max(b[3] for b in all_b))
    ax.set_aspect(1 / np.cos(np.radians(np.mean([b[1] for b in all_b]))))
    ax.grid(True, lw=0.3)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title("grey: archive pairs, blue: new pairs, dashed: the monitor's scope\n"
                 "orange: filtered search top 5, green / red: alerts that do / do not show the change",
                 fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def format_watch(w: dict[str, Any]) -> str:
    lines = [f"Filtered search \"{w['query']}\" in the west half, dates reaching 2021 or later "
             f"(all in the filter: {w['filtered_search_in_scope']}):"]
    lines += [f"  {f['id']}  {f['score']:.3f}  {f['acquired'][:10]} -> {f['acquired_t2'][:10]}"
              for f in w["filtered_search"]]
    lines.append(f"Monitor \"{w['query']}\" (west half, threshold {w['threshold']:.3f} = the archive's "
                 f"top {w['calibrated_top']}): {w['new_pairs']} new pairs landed; {w['alerts']} alerts in "
                 f"{w['seconds_to_last_alert']:.1f} s, {w['alerts_showing_the_change']} show the change "
                 f"(precision {w['precision']:.2f}; recall {w['recall']:.2f} of the "
                 f"{w['true_changes_in_scope']} new pairs in scope that do); map: watch/map.png")
    return "\n".join(lines)


def cli_main(args: argparse.Namespace) -> int:
    from rsir.cluster import init_ray

    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    out = Path(args.out)
    local = init_ray(args.address)  # workers import rsir from the installed package
    t0 = time.perf_counter()
    report = run_demo(cfg, out, local)
    watched = None
    if "pair" in report:
        t1 = time.perf_counter()
        watched = watch(cfg, out)
        print(f"[watch] filtered search and monitor in {time.perf_counter() - t1:.0f} s", flush=True)
    save_config(cfg, out / "config.yaml")
    (out / "report.json").write_text(json.dumps({**report, **({"watch": watched} if watched else {})},
                                                indent=2, default=str), encoding="utf-8")
    table = ("Held-out test split, English queries: R@K in % (chance in brackets)\n\n"
             + format_table(report) + "\n\nmR by query language (test split)\n\n"
             + format_language_table(report))
    if any("change_queries_mR" in r for r in report.values()):
        table += "\n\nBitemporal pairs: every query, and the queries of changed pairs alone\n\n"
        table += format_change_table(report)
    if any("local_branch" in r for r in report.values()):
        table += ("\n\nGaLR's local-branch ablation: the same small GaLR with and without its local "
                  "branch, same world and epochs (held-out test split, English queries; a few "
                  "epochs of a small config: the comparison, not GaLR's best)\n\n")
        table += format_galr_ablation_table(report)
    if any("query_check" in r for r in report.values()):
        table += ("\n\nQuery check: text → image precision@10 of the class and of the colour, mean "
                  "over the world's (scene class × object colour) queries (held-out test split)\n\n")
        table += format_query_check_table(report)
    if watched:
        table += "\n\nFind, then monitor (the pair model, its test archive)\n\n" + format_watch(watched)
    (out / "report.md").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; report: {out / 'report.json'}")
    return 0
