"""The demo's find-then-monitor step along its path: a pair model's archive, a filtered
search, a calibrated monitor, new pair tiles embedded with Ray Data and scored on Ray,
alerts checked against brute force and the world's ground truth, the map written."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import REPO
from rsir.config import load_config, to_dict
from rsir.data.demo_world import ensure_world, pair_row
from rsir.demo import format_watch, task_config, watch
from rsir.inference import embed_split, load_trained, publish_split
from rsir.models import create_model
from rsir.retrieval.archive import load_archive
from rsir.retrieval.embed import embed_texts
from rsir.retrieval.filters import boxes_intersect


def test_watch_finds_then_alerts_on_new_pairs_in_scope(ray_session, tmp_path) -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "demo.n_scenes=8", "demo.n_pairs=240", "demo.watch_new_pairs=40", "demo.watch_top=5"])
    # 240 pairs: 4 rows of 60 tiles, the test split the last; the 40 new tiles are the next
    # row's west part, under the monitor's scope (the west half, reaching south)
    ensure_world(cfg, tmp_path / "shards")
    pair_cfg = task_config(cfg, "pair", tmp_path / "shards", tmp_path / "runs")
    torch.manual_seed(0)
    ckpt = tmp_path / "runs" / "pair" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": create_model(pair_cfg.model, pair_cfg.loss).state_dict(),
                "config": to_dict(pair_cfg)}, ckpt)  # untrained: the path, not the accuracy
    publish_split(embed_split(pair_cfg, str(ckpt), "test"), pair_cfg, str(ckpt),
                  tmp_path / "reports" / "pair" / "archive")
    before = load_archive(tmp_path / "reports" / "pair" / "archive" / "visual")

    w = watch(cfg, tmp_path)

    assert w["new_pairs"] == 40 and w["filtered_search"] and w["filtered_search_in_scope"]
    after = load_archive(tmp_path / "reports" / "pair" / "archive" / "visual")
    assert len(after) == len(before) + 40 and w["version"] == after.version
    # the alerts are exactly the new rows in scope that reach the threshold
    _, model = load_trained(to_dict(pair_cfg), str(ckpt))
    q = embed_texts(model, [cfg.demo.watch_query])[0]
    new = range(len(before), len(after))
    expected = {after.ids[i] for i in new
                if after.vectors[i] @ q >= w["threshold"] - 1e-6
                and boxes_intersect(np.array(after.metadata["bbox"][i]), np.array(w["scope_bbox"]))}
    alerts = json.loads((tmp_path / "watch" / "watch.json").read_text())
    assert alerts["alerts"] == len(expected)
    truth = {r["id"]: dict(r["attributes"]).get("change") == "added"
             and dict(r["attributes"]).get("category") == "building"
             for r in (pair_row(i, 0, "test", 64) for i in range(240, 280))}
    assert w["alerts_showing_the_change"] == sum(truth[i] for i in expected)
    assert (tmp_path / "watch" / "map.png").stat().st_size > 10_000
    assert "precision" in format_watch(w)
