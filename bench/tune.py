"""Trials/s of a cached post-hoc WEICOM campaign vs one that re-embeds per trial.

Both do the same trial: WEICOM mAP of one λ (PATTERNCOM protocol) on ``--n`` demo-world
scenes. "re-embed" runs the recipe's dual encoder over every image and query text each
trial (what a campaign without the cache does); "cached" only rescores the similarities
computed once (what ``rsir tune`` does: the payload sits in the object store). Measured on
the trial function itself, in one process: Tune's own per-trial overhead is the same for
both and is not part of what the cache saves.

The ratio depends on the encoder: the demo's tiny model (default) embeds 64 px scenes in
milliseconds; a real recipe's CLIP tower (e.g. ``--config configs/patterncom_weicom.yaml
model.image_tower.options.pretrained=null model.text_tower.options.pretrained=null``,
ViT-L/14 at 224 px, random weights cost the same to run) is what a campaign saves.
Run: .venv/bin/python bench/tune.py [--n 200] [--trials 20] [--config C] [overrides ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _world(n: int, size: int):
    from rsir.data.demo_world import scene_row

    return [scene_row(i, 0, "val", size) for i in range(n)]


def _embedder(config: str, overrides: list[str]):
    from rsir.config import RecipeConfig, load_config
    from rsir.models import create_model
    from rsir.retrieval.embed import embed_texts, embed_visual

    cfg = load_config(config, overrides, cls=RecipeConfig)
    model = create_model(cfg.model, cfg.loss).eval()
    return cfg, model, embed_visual, embed_texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from rsir.tune.posthoc import prepare_weicom, score_weicom

    rows = _world(args.n, 64)
    cfg, model, embed_visual, embed_texts = _embedder(args.config, args.overrides)
    from rsir.data.transforms import prepare_image

    def image_batch(images, data_cfg):  # decode + normalise, as the embedding pass does
        return torch.stack([prepare_image(b, None, data_cfg, None) for b in images]).numpy()

    values = sorted({v for r in rows for v in dict(r["attributes"]).values()})

    def payload_from_embeddings():
        with torch.no_grad():
            batch = image_batch([r["image"] for r in rows], cfg.data)
            img = embed_visual(model, {"image": batch})
            txt = embed_texts(model, values)
        img = img / np.linalg.norm(img, axis=1, keepdims=True)
        txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
        return {"ids": [r["id"] for r in rows], "classes": [r["class_name"] for r in rows],
                "attributes": [dict(r["attributes"]) for r in rows],
                "image_sims": img @ img.T, "text_sims": dict(zip(values, txt @ img.T))}

    lams = np.linspace(0, 1, args.trials)
    t0 = time.perf_counter()
    for lam in lams[: max(2, args.trials // 5)]:
        score_weicom(prepare_weicom(payload_from_embeddings()), lam)
    reembed = max(2, args.trials // 5) / (time.perf_counter() - t0)
    cached_payload = prepare_weicom(payload_from_embeddings())  # once per campaign
    t0 = time.perf_counter()
    for lam in lams:
        score_weicom(cached_payload, lam)
    cached = args.trials / (time.perf_counter() - t0)
    print(f"{cfg.name}: {cfg.model.image_tower.options.get('model_name')} at {cfg.data.image_size} px; "
          f"n={args.n} images, {len(values)} query texts")
    print(f"re-embed per trial: {reembed:8.2f} trials/s")
    print(f"cached similarities: {cached:8.2f} trials/s")
    print(f"speed-up: {cached / reembed:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
