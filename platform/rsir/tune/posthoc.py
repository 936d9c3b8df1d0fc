"""Post-hoc campaigns: similarities computed once, each trial only rescores them.

Payloads (plain dicts of numpy arrays, put once in the object store):

* ``weicom``: ``ids``, ``classes``, ``attributes`` (list of dicts), ``image_sims`` [N, N]
  and ``text_sims`` (attribute value -> [N]) — the PATTERNCOM protocol on one split.
  npz keys: ``ids``, ``classes``, ``attributes`` (JSON strings), ``image_sims``,
  ``values`` (the value strings) and ``value_sims`` [V, N].
  A campaign hands trials :func:`prepare_weicom` of it.
* ``rerank``: ``sim`` [N_images, N_texts] and ``text_image`` [N_texts]. npz: same keys.

``synthetic_*`` build a small generated world with random embeddings whose structure
makes the tuned parameters matter (see each docstring).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rsir.metrics.retrieval import cross_modal_recall
from rsir.retrieval.composed import composed_queries, normalize_similarities
from rsir.retrieval.rerank import multivariate_rerank


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_weicom(n: int = 400, seed: int = 0, noise: float = 1.0, dim: int = 64) -> dict[str, Any]:
    """Demo-world scenes (real class / attribute distribution from ``sample_scene``) with
    random embeddings: an image is its class vector + 0.6 × each attribute value's vector +
    noise; a query text (an attribute value) is that value's vector + noise. Image-only
    ranking finds the same class with the *old* value, text-only the new value in any
    class: the composed optimum lies strictly inside (0, 1)."""
    from rsir.data.demo_world import sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    classes = [s.scene_class for s in scenes]
    attributes = [s.attributes() for s in scenes]
    cls_names = sorted(set(classes))
    values = sorted({v for a in attributes for v in a.values()})
    c_vec = {c: rng.standard_normal(dim) for c in cls_names}
    v_vec = {v: rng.standard_normal(dim) for v in values}
    img = np.stack([c_vec[c] + 0.6 * sum(v_vec[v] for v in a.values())
                    for c, a in zip(classes, attributes)])
    img = _unit(img + noise * rng.standard_normal(img.shape) * np.sqrt(3.0))
    txt = _unit(np.stack([v_vec[v] for v in values]) + 0.5 * noise * rng.standard_normal((len(values), dim)))
    return {
        "ids": [f"s{i:05d}" for i in range(n)], "classes": classes, "attributes": attributes,
        "image_sims": (img @ img.T).astype(np.float32),
        "text_sims": dict(zip(values, (txt @ img.T).astype(np.float32))),
    }


def synthetic_rerank(n: int = 400, seed: int = 0, noise: float = 1.0, captions: int = 5,
                     dim: int = 32) -> dict[str, Any]:
    """n images with ``captions`` captions each: caption = image vector + noise; plus a
    "hub" direction of random per-item strength (hubs are what MR's reverse ranks
    demote). Similarities mapped to [0, 1] as MR's column normalisation assumes."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, dim))
    text_image = np.repeat(np.arange(n), captions)
    txt = img[text_image] + noise * rng.standard_normal((len(text_image), dim))
    hub = _unit(rng.standard_normal(dim))
    img = img + 2.0 * rng.exponential(1.0, (n, 1)) * hub
    txt = txt + 2.0 * rng.exponential(1.0, (len(text_image), 1)) * hub
    sim = 0.5 * (1.0 + _unit(img) @ _unit(txt).T)
    return {"sim": sim.astype(np.float32), "text_image": text_image}


def load_npz(kind: str, path: str) -> dict[str, Any]:
    z = np.load(path, allow_pickle=False)
    if kind == "rerank":
        return {"sim": z["sim"], "text_image": z["text_image"]}
    return {
        "ids": [str(i) for i in z["ids"]], "classes": [str(c) for c in z["classes"]],
        "attributes": [json.loads(str(a)) for a in z["attributes"]],
        "image_sims": z["image_sims"],
        "text_sims": dict(zip([str(v) for v in z["values"]], z["value_sims"])),
    }


def save_npz(kind: str, payload: dict[str, Any], path: str) -> None:
    """The inverse of ``load_npz`` (what an embedding pass writes)."""
    if kind == "rerank":
        np.savez(path, sim=payload["sim"], text_image=payload["text_image"])
        return
    values = sorted(payload["text_sims"])
    np.savez(path, ids=np.asarray(payload["ids"]), classes=np.asarray(payload["classes"]),
             attributes=np.asarray([json.dumps(a) for a in payload["attributes"]]),
             image_sims=payload["image_sims"], values=np.asarray(values),
             value_sims=np.stack([payload["text_sims"][v] for v in values]))


def from_checkpoint(recipe_cfg: Any, checkpoint: str, split: str) -> dict[str, Any]:
    """``rerank`` payload from one embedding pass of ``split`` with a trained checkpoint."""
    from rsir.inference import embed_split

    emb = embed_split(recipe_cfg, checkpoint, split)
    return {"sim": emb.visual @ emb.text_vectors.T, "text_image": emb.text_owner}


# ---------------------------------------------------------------------------------------
# Scores (what one trial computes)
# ---------------------------------------------------------------------------------------


def prepare_weicom(payload: dict[str, Any]) -> dict[str, Any]:
    """What every λ trial of a ``weicom`` payload shares, computed once: the PATTERNCOM
    queries, and both modalities' similarities Φ-normalised (WEICOM's normalisation does
    not depend on λ, so a trial only mixes)."""
    queries = composed_queries(payload["ids"], payload["classes"], payload["attributes"],
                               payload["text_sims"])
    return {"queries": queries.map_text_sims(normalize_similarities),
            "image_sims": normalize_similarities(payload["image_sims"])}


def score_weicom(prepared: dict[str, Any], lam: float) -> dict[str, float]:
    """WEICOM mAP of one λ on a :func:`prepare_weicom` payload."""
    res = prepared["queries"].evaluate(prepared["image_sims"], "linear_mix", float(lam), ks=())
    return {"val_mAP": res["mAP"], **{f"val_mAP_{a}": v for a, v in res["per_attribute"].items()}}


def _recall_metrics(i2t_scores: np.ndarray, t2i_scores: np.ndarray, text_image: np.ndarray,
                    ks: tuple[int, ...]) -> dict[str, float]:
    i2t = cross_modal_recall(i2t_scores, text_image, ks)["i2t"]
    t2i = cross_modal_recall(t2i_scores, text_image, ks)["t2i"]
    out = {f"val_i2t_R@{k}": float(v) for k, v in i2t.items()}
    out.update({f"val_t2i_R@{k}": float(v) for k, v in t2i.items()})
    out["val_mR"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
    return out


def score_rerank(payload: dict[str, Any], params: dict[str, Any],
                 ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """MR with ``eval.rerank_k`` / ``eval.w_c1`` / ``eval.w_c2``; ``eval.rerank`` false
    (the baseline) scores the raw similarities."""
    sim, text_image = payload["sim"], payload["text_image"]
    if not params.get("eval.rerank", True):
        return _recall_metrics(sim, sim, text_image, ks)
    k = int(params.get("eval.rerank_k", 25))
    i2t, t2i = multivariate_rerank(sim, k=min(k, min(sim.shape)),
                                   w_c1=float(params.get("eval.w_c1", 0.5)),
                                   w_c2=float(params.get("eval.w_c2", 1.25)),
                                   ties=params.get("eval.rerank_ties", "numpy"))
    return _recall_metrics(i2t, t2i, text_image, ks)
