"""``rsir evaluate`` on a bitemporal world: Ray Data embedding agrees with in-process
embedding, and the report carries the change-query recall and the caption protocol."""

import json

import pytest
import torch

from conftest import REPO
from rsir.config import load_config
from rsir.data.demo_world import generate
from rsir.data.schema import read_table
from rsir.metrics.captions import resolve_backend
from rsir.models import create_model
from rsir.retrieval.embed import evaluate_rows

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_evaluate_pairs_report(ray_session, tmp_path):
    from rsir.evaluate import evaluate

    generate(tmp_path / "world", n_scenes=0, n_pairs=40, seed=3, val_fraction=0.3, test_fraction=0.5)
    shards = tmp_path / "world" / "pairs"
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.shards={shards}", "data.task=pair",
                                                    "eval.caption_protocol=true"])
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.loss).eval()  # untrained: the numbers only need to agree
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")

    report = evaluate(cfg, str(tmp_path / "model.pt"), tmp_path / "report")

    test_rows = read_table(shards, split="test").to_pydict()
    direct = evaluate_rows(model, test_rows, cfg.data, language="en", ks=cfg.eval.ks)
    plain = report["recall"]["plain"]
    for d in ("i2t", "t2i"):
        assert [plain[d][k] for k in cfg.eval.ks] == pytest.approx([direct[d][k] for k in cfg.eval.ks],
                                                                   abs=1e-6)
    n_val, n_test = len(read_table(shards, split="val")), len(test_rows["id"])
    assert report["caption_protocol_pairs"] == n_val + n_test  # val+test merged
    # the recipe's default metrics (coco), or the nltk fallback where Java is missing
    assert report["captions"]["backend"] == resolve_backend(cfg.eval.caption_metrics)
    assert set(report["captions"]["scores"]) == {"full", "change", "no_change"}
    for dirs in report["captions"]["scores"].values():
        assert all(0.0 <= v <= 1.0 for m in dirs.values() for v in m.values())
    change = report["recall_change_queries"]
    assert 0.0 <= change["mR"] <= 100.0 and set(change) == {"i2t", "t2i", "mR"}
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["recall"]["plain"]["mR"] == pytest.approx(plain["mR"])
    assert "change queries only" in (tmp_path / "report" / "report.md").read_text()
    assert "text → visual" in (tmp_path / "report" / "gallery.html").read_text()
