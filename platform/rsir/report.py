"""Evaluation reports from embeddings (pure): every number as JSON, the papers' tables as
Markdown, plots (R@K, λ curve, a 2-D map of images and captions) and an HTML gallery.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsir.metrics.retrieval import chance_recall, cross_modal_recall, ranking_metrics
from rsir.retrieval.composed import (
    DEFAULT_LAMBDAS,
    PATTERNCOM_CLASS_MAPPING,
    composed_queries,
    patterncom_eval,
    weicom,
)
from rsir.retrieval.rerank import multivariate_rerank

BASELINES = ("text_only", "image_only", "average")


def recall_section(sim: np.ndarray, owner: np.ndarray, ks: Sequence[int], rerank: dict | None) -> dict:
    """R@K / mR against chance, and with the MR rerank when ``rerank`` gives its weights."""
    out = {"plain": cross_modal_recall(sim, owner, ks=ks),
           "chance": chance_recall(sim.shape[0], sim.shape[1], owner, ks=ks)}
    if rerank:
        i2t, t2i = multivariate_rerank(sim, **rerank)
        # i2t scores rank texts per image; t2i scores rank images per text.
        r_i2t = cross_modal_recall(i2t, owner, ks=ks)["i2t"]
        r_t2i = cross_modal_recall(t2i, owner, ks=ks)["t2i"]
        out["rerank"] = {"i2t": r_i2t, "t2i": r_t2i,
                         "mR": float(np.mean(list(r_i2t.values()) + list(r_t2i.values())))}
    return out


def composed_section(
    ids: Sequence[str], classes: Sequence[str], attributes: Sequence[dict[str, str]],
    visual: np.ndarray, encode_texts: Callable[[list[str]], np.ndarray], lam: float,
) -> dict[str, Any]:
    """WEICOM at the recipe's λ (mAP, P@k, R@k per attribute: the headline), its λ table
    (mAP per attribute, λ = 0 … 1; ``best_lambda`` is the table's best, chosen on the
    evaluated split itself) and the three baselines."""
    image_sims = visual @ visual.T
    # Every query text is an attribute value: encode them once for the sweep, the baselines
    # and the examples.
    values = sorted({v for attrs in attributes for v in attrs.values()})
    cached = dict(zip(values, encode_texts(values) @ visual.T))

    def text_sims(texts: list[str]) -> np.ndarray:
        return np.stack([cached[t] for t in texts])

    queries = composed_queries(ids, classes, attributes, cached)

    def scored(method: str, at: float) -> dict[str, Any]:
        res = queries.evaluate(image_sims, method, at)
        return {k: res[k] for k in ("per_attribute", "mAP", "at_k", "at_k_mean", "n_queries")}

    table: dict[float, dict[str, float]] = {}
    for x in DEFAULT_LAMBDAS:
        res = queries.evaluate(image_sims, "weicom", x, ks=())
        table[float(x)] = {**res["per_attribute"], "avg": res["mAP"]}
    best_lam = max(table, key=lambda x: table[x]["avg"])
    baselines = {m: scored(m, 0.0) for m in BASELINES}
    return {"lambda": float(lam), "weicom": scored("weicom", lam),
            "lambda_table": {str(k): v for k, v in table.items()}, "best_lambda": best_lam,
            "best_mAP": table[best_lam]["avg"],
            "baselines": {m: r["mAP"] for m, r in baselines.items()},
            "baselines_at_k": {m: r["at_k_mean"] for m, r in baselines.items()},
            "examples": composed_examples(ids, classes, attributes, image_sims, text_sims, lam)}


def composed_examples(
    ids: Sequence[str], classes: Sequence[str], attributes: Sequence[dict[str, str]],
    image_sims: np.ndarray, text_sims: Callable[[list[str]], np.ndarray], lam: float,
    n_queries: int = 4, k: int = 5,
) -> list[dict[str, Any]]:
    """Top-k WEICOM results of sample composed queries (one per attribute, in turn), each
    result marked relevant by the PATTERNCOM rule (same merged class, the text's value)."""
    queries = patterncom_eval(ids, classes, attributes, image_sims, text_sims, "weicom", lam)["queries"]
    by_attr: dict[str, list[tuple[str, str, str, float]]] = {}
    for q in queries:
        by_attr.setdefault(q[1], []).append(q)
    picked = [group[len(group) // 2] for group in by_attr.values()][:n_queries]
    index = {x: i for i, x in enumerate(ids)}
    merged = [PATTERNCOM_CLASS_MAPPING.get(c, c) for c in classes]
    out = []
    for qid, attr, text, ap in picked:
        q = index[qid]
        scores = weicom(image_sims[q:q + 1], text_sims([text]), lam)[0]
        top = np.argsort(-scores, kind="stable")[:k]
        out.append({"query": qid, "attribute": attr, "text": text, "AP": ap,
                    "top": [ids[i] for i in top],
                    "relevant": [bool(merged[i] == merged[q] and attributes[i].get(attr) == text)
                                 for i in top]})
    return out


def query_check_section(
    visual: np.ndarray, classes: Sequence[str], attributes: Sequence[dict[str, str]],
    queries: dict[str, Sequence[dict[str, str]]], encode_texts: Callable[[list[str]], np.ndarray],
    k: int = 10,
) -> dict[str, Any]:
    """Text → image precision@k of the class and of the colour, for every (class, colour)
    of ``queries`` (per language: ``[{class_name, color, text}]``, several texts per pair).

    A result counts for the class when its ``class_name`` is the query's, for the colour
    when its ``color`` attribute is (whatever its class). Per (class, colour): the mean
    over its texts; ``class_P@k`` / ``color_P@k``: the mean over the pairs (fractions)."""
    classes = np.asarray(classes)
    colors = np.array([a.get("color", "") for a in attributes])
    out: dict[str, Any] = {"k": k, "n_images": len(classes), "languages": {}}
    for lang, qs in queries.items():
        scores = encode_texts([q["text"] for q in qs]) @ visual.T
        p_class = ranking_metrics(scores, classes[None] == np.array([q["class_name"] for q in qs])[:, None],
                                  ks=(k,))[f"P@{k}"]
        p_color = ranking_metrics(scores, colors[None] == np.array([q["color"] for q in qs])[:, None],
                                  ks=(k,))[f"P@{k}"]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, q in enumerate(qs):
            groups.setdefault((q["class_name"], q["color"]), []).append(i)
        rows = [{"class_name": c, "color": col, "queries": [qs[i]["text"] for i in idx],
                 "n_relevant": {"class": int((classes == c).sum()), "color": int((colors == col).sum())},
                 f"class_P@{k}": float(p_class[idx].mean()), f"color_P@{k}": float(p_color[idx].mean())}
                for (c, col), idx in groups.items()]
        out["languages"][lang] = {
            "rows": rows,
            f"class_P@{k}": float(np.mean([r[f"class_P@{k}"] for r in rows])),
            f"color_P@{k}": float(np.mean([r[f"color_P@{k}"] for r in rows])),
            f"min_class_P@{k}": float(min(r[f"class_P@{k}"] for r in rows)),
            f"min_color_P@{k}": float(min(r[f"color_P@{k}"] for r in rows)),
        }
    return out


def _query_check_rows(check: dict[str, Any]) -> list[str]:
    k = check["k"]
    lang, head = next(iter(check["languages"].items()))
    lines = [f"## Query check: (scene class × object colour) → image, precision@{k}", "",
             f"Text queries in {lang} ({check['n_images']} held-out images); a result counts for the "
             "class when it is of the query's class, for the colour when its objects have the "
             "query's colour. Each row: the mean over its queries.", "",
             f"| class | colour | class P@{k} | colour P@{k} | queries |", "|---|---|---|---|---|"]
    for r in head["rows"]:
        texts = "; ".join(f"“{t}”" for t in r["queries"])
        lines.append(f"| {r['class_name']} | {r['color']} | {r[f'class_P@{k}']:.2f} | "
                     f"{r[f'color_P@{k}']:.2f} | {html.escape(texts)} |")
    lines.append(f"| **mean** | | **{head[f'class_P@{k}']:.2f}** | **{head[f'color_P@{k}']:.2f}** | |")
    if len(check["languages"]) > 1:
        lines += ["", "By query language (mean over the pairs; worst pair in brackets):", "",
                  f"| language | class P@{k} | colour P@{k} |", "|---|---|---|"]
        lines += [f"| {lg} | {v[f'class_P@{k}']:.2f} ({v[f'min_class_P@{k}']:.2f}) | "
                  f"{v[f'color_P@{k}']:.2f} ({v[f'min_color_P@{k}']:.2f}) |"
                  for lg, v in check["languages"].items()]
    return lines


def _recall_rows(report: dict[str, Any]) -> list[str]:
    rec = report["recall"]
    ks = list(rec["plain"]["i2t"])
    head = " | ".join(f"R@{k}" for k in ks)
    lines = ["## Cross-modal retrieval (%)", "",
             f"| method | i2t {head} | t2i {head} | mR |", "|---" * (2 * len(ks) + 2) + "|"]
    for name in ("chance", "plain", "rerank"):
        if name in rec:
            r = rec[name]
            lines.append(f"| {name} | " + " | ".join(f"{r['i2t'][k]:.2f}" for k in ks) + " | "
                         + " | ".join(f"{r['t2i'][k]:.2f}" for k in ks) + f" | {r['mR']:.2f} |")
    if "recall_change_queries" in report:
        r = report["recall_change_queries"]
        lines.append("| plain, change queries only | " + " | ".join(f"{r['i2t'][k]:.2f}" for k in ks)
                     + " | " + " | ".join(f"{r['t2i'][k]:.2f}" for k in ks) + f" | {r['mR']:.2f} |")
    return lines


def _composed_rows(comp: dict[str, Any]) -> list[str]:
    head = comp["weicom"]
    attrs = list(head["per_attribute"])
    at_names = list(head["at_k_mean"])
    lines = [f"## Composed retrieval: WEICOM at the recipe's λ = {comp['lambda']:g}", "",
             "| attribute | queries | mAP | " + " | ".join(at_names) + " |",
             "|---" * (len(at_names) + 3) + "|"]
    for a in attrs:
        lines.append(f"| {a} | {head['n_queries'][a]} | {head['per_attribute'][a]:.2f} | "
                     + " | ".join(f"{head['at_k'][a][n]:.2f}" for n in at_names) + " |")
    lines.append(f"| **avg** | {sum(head['n_queries'].values())} | **{head['mAP']:.2f}** | "
                 + " | ".join(f"{head['at_k_mean'][n]:.2f}" for n in at_names) + " |")
    lines += ["", "Baselines (mean over attributes, %):", "",
              "| method | mAP | " + " | ".join(at_names) + " |", "|---" * (len(at_names) + 2) + "|"]
    for m, v in comp["baselines"].items():
        lines.append(f"| {m} | {v:.2f} | "
                     + " | ".join(f"{comp['baselines_at_k'][m][n]:.2f}" for n in at_names) + " |")
    lines.append(f"| WEICOM (λ = {comp['lambda']:g}) | {head['mAP']:.2f} | "
                 + " | ".join(f"{head['at_k_mean'][n]:.2f}" for n in at_names) + " |")
    attrs = [a for a in next(iter(comp["lambda_table"].values())) if a != "avg"]
    lines += ["", "## Composed retrieval, mAP (%) per attribute and λ (WEICOM)", "",
              "| λ | " + " | ".join(attrs) + " | avg |", "|---" * (len(attrs) + 2) + "|"]
    for lam, row in comp["lambda_table"].items():
        lines.append(f"| {float(lam):.1f} | " + " | ".join(f"{row[a]:.2f}" for a in attrs)
                     + f" | {row['avg']:.2f} |")
    lines += ["", f"Best λ of this table: {comp['best_lambda']:.1f} ({comp['best_mAP']:.2f} mAP; "
              "chosen on the evaluated split itself, so not a held-out number)."]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report's tables, in the papers' layouts; a skipped section is named with why."""
    lines = [f"# rsir evaluation: {report['name']}", ""]
    if report.get("model"):
        lines += [f"Model: {report['model']}.", ""]
    if report.get("checkpoint"):
        lines += [f"Weights: checkpoint `{report['checkpoint']}`.", ""]
    elif report.get("pretrained"):
        lines += ["Weights: pretrained towers (no trained checkpoint): " + ", ".join(
            f"{t} `{w['pretrained']}`" for t, w in report["pretrained"].items()) + ".", ""]
    if "recall" in report:
        lines += _recall_rows(report)
    if "per_language" in report:
        lines += ["", "## Per language (mR %)", "", "| language | mR |", "|---|---|"]
        lines += [f"| {lang} | {r['mR']:.2f} |" for lang, r in report["per_language"].items()]
    if "captions" in report:
        backend = report["captions"]["backend"]
        lines += ["", "## Caption metrics of the top-5, val+test merged (time-series paper, Tables I-II)", "",
                  f"Metrics backend: {backend}" + ("" if backend == "coco" else
                  " (NLTK BLEU/METEOR, rouge-score ROUGE-L: not the papers' COCO toolkit)"), "",
                  "| query set | direction | BLEU-1 | BLEU-4 | METEOR | ROUGE-L |", "|---|---|---|---|---|---|"]
        for qset, dirs in report["captions"]["scores"].items():
            for d, m in dirs.items():
                lines.append(f"| {qset} | {d} | {m['bleu1']:.3f} | {m['bleu4']:.3f} | "
                             f"{m['meteor']:.3f} | {m['rougeL']:.3f} |")
    if "composed" in report:
        lines += [""] + _composed_rows(report["composed"])
    if "query_check" in report:
        lines += [""] + _query_check_rows(report["query_check"])
    if report.get("skipped"):
        lines += ["", "## Skipped", ""]
        lines += [f"- {name}: {why}" for name, why in report["skipped"].items()]
    sha = ((report.get("conversion") or {}).get("options") or {}).get("patterncom_sha256")
    if sha:
        lines += ["", "PATTERNCOM files (sha256): " + ", ".join(f"`{f}` {h[:12]}…" for f, h in sha.items())]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], visual: np.ndarray, text_vectors: np.ndarray,
          classes: Sequence[str], owner: np.ndarray, out: Path) -> list[Path]:
    """R@K bars (per language when present), the λ curve, and a 2-D PCA map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if "recall" in report:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        groups = report.get("per_language") or {"all": report["recall"]["plain"]}
        ks = list(report["recall"]["plain"]["i2t"])
        width = 0.8 / len(groups)
        for i, (name, r) in enumerate(groups.items()):
            vals = [r["i2t"][k] for k in ks] + [r["t2i"][k] for k in ks]
            ax.bar(np.arange(len(vals)) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(2 * len(ks)) + 0.4 - width / 2,
                      [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks], fontsize=7)
        ax.set_ylabel("%")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "recall.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if "composed" in report:
        table = report["composed"]["lambda_table"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([float(k) for k in table], [v["avg"] for v in table.values()], marker="o")
        ax.set(xlabel="λ (text weight)", ylabel="mAP (%)", title="WEICOM λ curve")
        fig.tight_layout()
        paths.append(out / "lambda_curve.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    # PCA of images and captions together, coloured by the image's class
    both = np.concatenate([visual, text_vectors])
    both = both - both.mean(0)
    _, _, vt = np.linalg.svd(both, full_matrices=False)
    xy = both @ vt[:2].T
    names = sorted(set(classes))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for j, c in enumerate(names):
        img = np.array([k for k, x in enumerate(classes) if x == c])
        txt = np.nonzero(np.isin(owner, img))[0] + len(visual)
        ax.scatter(*xy[img].T, s=8, marker="o", color=f"C{j}", label=f"{c} (images)")
        ax.scatter(*xy[txt].T, s=4, marker="x", color=f"C{j}", alpha=0.4)
    ax.set_title("images (o) and captions (x), first two principal components" if len(text_vectors)
                 else "images (no captions), first two principal components")
    ax.legend(fontsize=6, markerscale=1.5)
    fig.tight_layout()
    paths.append(out / "embedding_map.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def gallery(sim: np.ndarray, ids: Sequence[str], thumbs: Sequence[bytes | None],
            texts: Sequence[str], owner: np.ndarray, title: str, n_queries: int = 4,
            k: int = 5, composed: Sequence[dict[str, Any]] = ()) -> str:
    """HTML: for sample queries, the top-k results each way, and the ``composed`` examples
    of :func:`composed_examples` (✔ marks a correct one)."""
    def img(data: bytes | None) -> str:
        if data is None:
            return ""
        src = base64.b64encode(data).decode()
        return f'<img src="data:image/png;base64,{src}" width="96" height="96">'

    rows = []
    if len(texts):
        rows.append(f"<h2>{html.escape(title)}: text → visual</h2>")
        for t in np.linspace(0, len(texts) - 1, n_queries).astype(int):
            top = np.argsort(-sim[:, t], kind="stable")[:k]
            cells = "".join(f"<td>{img(thumbs[i])}<br>{'✔' if i == owner[t] else ''}</td>" for i in top)
            rows.append(f"<p><b>{html.escape(texts[t])}</b></p><table><tr>{cells}</tr></table>")
        rows.append(f"<h2>{html.escape(title)}: visual → text</h2>")
        for i in np.linspace(0, len(ids) - 1, n_queries).astype(int):
            top = np.argsort(-sim[i], kind="stable")[:k]
            items = "".join(f"<li>{'✔ ' if owner[t] == i else ''}{html.escape(texts[t])}</li>" for t in top)
            rows.append(f"<table><tr><td>{img(thumbs[i])}</td><td><ol>{items}</ol></td></tr></table>")
    else:
        rows.append(f"<p>{html.escape(title)}: no captions, no text ↔ visual examples.</p>")
    if composed:
        rows.append("<h2>composed: image + text → image (WEICOM)</h2>")
        index = {x: i for i, x in enumerate(ids)}
    for ex in composed:
        cells = "".join(f"<td>{img(thumbs[index[r]])}<br>{'✔' if ok else ''}</td>"
                        for r, ok in zip(ex["top"], ex["relevant"]))
        rows.append(f"<p><b>{html.escape(ex['attribute'])} → “{html.escape(ex['text'])}”</b> "
                    f"(AP {ex['AP']:.2f})</p><table><tr><td>{img(thumbs[index[ex['query']]])}<br>query</td>"
                    f"<td>+</td>{cells}</tr></table>")
    return "\n".join(rows)


def write_report(report: dict[str, Any], out: Path, gallery_html: str, plot_paths: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    md = markdown(report) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plot_paths) + "\n"
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "gallery.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(report['name'])}</title>"
        f"<body style='font-family:sans-serif'>{gallery_html}</body>", encoding="utf-8")
