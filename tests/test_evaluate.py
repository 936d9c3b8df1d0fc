"""``rsir evaluate`` on a bitemporal world: Ray Data embedding agrees with in-process
embedding, and the report carries the change-query recall and the caption protocol."""

import json

import numpy as np
import pytest
import torch

from conftest import REPO
from rsir.config import load_config, to_dict
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


def test_evaluate_patterncom_without_checkpoint_or_captions(ray_session, tmp_path):
    """`rsir evaluate` of the RemoteCLIP recipe (tiny towers from a bare state dict) on a
    converted PatternNet archive: no checkpoint, no captions; the PATTERNCOM report."""
    import pyarrow.parquet as pq

    from rsir.data.converters import CONVERTERS, run_conversion
    from rsir.data.schema import attributes_dict
    from rsir.data.transforms import preprocess_batch
    from rsir.evaluate import _checkpoint, evaluate, headline
    from rsir.inference import load_trained
    from rsir.retrieval.archive import file_sha256, load_archive
    from rsir.retrieval.composed import patterncom_eval
    from rsir.retrieval.embed import embed_texts, embed_visual
    from test_converters import load_maker
    from test_weicom_recipes import save_bare_state_dict, tiny_remoteclip_recipe

    load_maker("patternnet").make(tmp_path / "src")
    run_conversion(CONVERTERS.build("patternnet", src=tmp_path / "src"), tmp_path / "shards")
    weights = tmp_path / "RemoteCLIP-rsir-tiny.pt"
    save_bare_state_dict(weights)
    cfg = tiny_remoteclip_recipe(weights, f"data.shards={tmp_path / 'shards'}")

    report = evaluate(cfg, _checkpoint(cfg, None), tmp_path / "report")

    assert set(report["skipped"]) >= {"recall", "per_language", "gallery_captions",
                                      "embedding_map_captions"}
    assert "recall" not in report and report["checkpoint"] is None
    assert report["pretrained"]["image_tower"] == {"pretrained": str(weights),
                                                   "sha256": file_sha256(weights)}
    manifest = load_archive(tmp_path / "report" / "archive" / "visual").manifest
    assert manifest["checkpoint"] is None and manifest["pretrained"] == report["pretrained"]
    comp = report["composed"]
    assert comp["lambda"] == 0.6 and comp["weicom"]["n_queries"] == {"color": 5, "density": 2, "shape": 2}
    assert set(comp["lambda_table"]) == {str(round(0.1 * i, 1)) for i in range(11)}
    assert set(comp["baselines"]) == {"text_only", "image_only", "average"}

    # The same numbers in process: the tiny towers, open_clip's transform, the authors' rule.
    rows = pq.read_table(tmp_path / "shards").to_pylist()
    rows.sort(key=lambda r: r["id"])
    _, model = load_trained(to_dict(cfg), None)
    batch = {k: [r[k] for r in rows] for k in ("id", "image", "bands")}
    batch["id"] = np.array(batch["id"], dtype=object)
    visual = embed_visual(model, preprocess_batch(batch, cfg.data, train=False, with_captions=False))
    attrs = [attributes_dict(r["attributes"]) for r in rows]
    values = sorted({v for a in attrs for v in a.values()})
    text_sims = dict(zip(values, embed_texts(model, values) @ visual.T))
    direct = patterncom_eval([r["id"] for r in rows], [r["class_name"] for r in rows], attrs,
                             visual @ visual.T, text_sims, "weicom", 0.6)
    assert comp["weicom"]["mAP"] == pytest.approx(direct["mAP"], abs=1e-4)
    assert comp["weicom"]["at_k_mean"] == pytest.approx(direct["at_k_mean"], abs=1e-4)
    assert headline(report) == f"WEICOM mAP {direct['mAP']:.2f} at λ = 0.6"

    md = (tmp_path / "report" / "report.md").read_text()
    assert "WEICOM at the recipe's λ = 0.6" in md and "P@5" in md and "## Skipped" in md
    assert "PATTERNCOM files (sha256)" in md
    assert report["conversion"]["options"]["patterncom_sha256"]["color.csv"] == file_sha256(
        tmp_path / "src/PatternCom/color.csv")
    assert "composed: image + text" in (tmp_path / "report" / "gallery.html").read_text()
