"""Tuning campaigns (issue 7): post-hoc WEICOM / MR on cached similarities, a small
ASHA training campaign, and resuming an interrupted campaign with ``Tuner.restore``.

The post-hoc data is a generated world (``rsir.tune.posthoc.synthetic_*``): demo-world
scene classes and attributes (``sample_scene``) with random embeddings in which an image
is class + attribute-value vectors + noise and a query text is its value vector + noise,
so image-only and text-only rankings both fail and λ has an interior optimum.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import yaml

from rsir.config import RecipeConfig, load_config
from rsir.retrieval.composed import lambda_sweep
from rsir.tune import posthoc
from rsir.tune.campaign import build_payload, load_tune_config, resume_campaign, run_campaign
from rsir.tune.space import set_dotted

pytestmark = pytest.mark.ray


def test_set_dotted_and_config():
    assert set_dotted({"a": {"b": 1}}, {"a.b": 2, "a.c": np.float64(3.0)}) == {"a": {"b": 2, "c": 3.0}}
    for name in ("weicom", "rerank", "train"):
        cfg = load_tune_config(f"configs/tune_{name}.yaml")
        assert cfg.kind == name and cfg.space


def test_weicom_lambda_campaign_matches_grid(ray_session, tmp_path):
    cfg = load_tune_config("configs/tune_weicom.yaml", ["num_samples=10", "data.n=300",
                                                        "searcher.n_startup_trials=4"])
    payload = build_payload(cfg, "val")
    grid = np.round(np.linspace(0, 1, 21), 3)
    table = lambda_sweep(payload["ids"], payload["classes"], payload["attributes"],
                         payload["image_sims"], payload["text_sims"], lams=grid)
    grid_best = max(v["avg"] for v in table.values())
    assert grid_best > max(table[0.0]["avg"], table[1.0]["avg"]) + 5  # λ matters
    t0 = time.perf_counter()
    summary = run_campaign(cfg, tmp_path)
    print(f"weicom campaign: {summary['n_trials']} trials in {time.perf_counter() - t0:.1f}s")
    assert summary["n_trials"] == 10 and summary["n_errors"] == 0
    # The campaign's λ, rescored directly on validation, is within 1% of the grid optimum.
    direct = posthoc.score_weicom(posthoc.prepare_weicom(payload), summary["best_params"]["lam"])["val_mAP"]
    assert direct == pytest.approx(summary["best_value"], abs=1e-9)
    assert direct >= 0.99 * grid_best
    run_dir = tmp_path / cfg.name
    for f in ("trials.csv", "trials.json", "best_params.yaml", "metric_vs_params.png", "summary.json"):
        assert (run_dir / f).is_file(), f
    assert len(json.loads((run_dir / "trials.json").read_text())) == 10
    assert "lam" in yaml.safe_load((run_dir / "best_params.yaml").read_text())


def test_rerank_campaign_never_worse_than_no_rerank(ray_session, tmp_path):
    cfg = load_tune_config("configs/tune_rerank.yaml", ["num_samples=6", "data.n=200"])
    summary = run_campaign(cfg, tmp_path)
    payload = build_payload(cfg, "val")
    base = posthoc.score_rerank(payload, {"eval.rerank": False})["val_mR"]
    assert summary["baseline"] == pytest.approx(base)
    assert summary["best_value"] >= base
    chosen = posthoc.score_rerank(payload, summary["best_params"])["val_mR"]
    assert chosen == pytest.approx(summary["best_value"]) and chosen >= base
    # The best is a ready-to-use recipe.
    recipe = load_config(tmp_path / cfg.name / "best_recipe.yaml", cls=RecipeConfig)
    assert recipe.eval.rerank == summary["best_params"]["eval.rerank"]
    # A campaign that can only make things worse keeps "no rerank".
    bad = load_tune_config("configs/tune_rerank.yaml", [
        "name=bad", "num_samples=2", "data.n=200", "searcher.name=random",
        "space={eval.rerank_k: {type: grid, values: [1]}, eval.w_c1: {type: grid, values: [0.0]}}"])
    s2 = run_campaign(bad, tmp_path)
    assert s2["best_params"] == {"eval.rerank": False} and s2["best_value"] == pytest.approx(base)


class _InterruptAfter:
    """Interrupt the campaign (SIGINT, as Ctrl-C or a killed job) after n trial results."""

    def __init__(self, n: int):
        self.n, self.seen, self.sent = n, set(), False

    def __call__(self, trial_id, result):
        self.seen.add(trial_id)
        if len(self.seen) >= self.n and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return False

    def stop_all(self):
        return False


def test_interrupted_campaign_resumes(ray_session, tmp_path):
    from ray.tune.stopper import Stopper

    class Stop(_InterruptAfter, Stopper):
        pass

    cfg = load_tune_config("configs/tune_weicom.yaml", [
        "name=resume", "searcher.name=grid", "num_samples=1", "data.n=200",
        "space={lam: {type: grid, values: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}}",
        "max_concurrent_trials=1"])
    first = run_campaign(cfg, tmp_path, stop=Stop(2))
    finished = [r for r in json.loads((tmp_path / "resume" / "trials.json").read_text())
                if r["iterations"]]
    assert len(finished) < 6
    summary = resume_campaign(tmp_path / "resume")
    rows = json.loads((tmp_path / "resume" / "trials.json").read_text())
    assert summary["n_trials"] == 6 and summary["n_errors"] == 0
    assert sorted(r["lam"] for r in rows) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(r["iterations"] == 1 for r in rows), rows
    assert first["n_trials"] <= 6


@pytest.mark.slow
def test_train_campaign_asha(ray_session, tmp_path):
    # Two concurrent trials hold 2 x (0.01 + 0.25) CPU, leaving a whole CPU for the Ray
    # Data read tasks; at 0.5 CPU per worker the reads could never be scheduled. One
    # caption a scene per epoch (data.captions=one_random): ASHA needs epochs, not rows.
    from rsir.data.demo_world import generate

    generate(tmp_path / "world", 200, 0, seed=0)
    cfg = load_tune_config("configs/tune_train.yaml", [
        f"recipe_overrides=[data.shards={tmp_path / 'world' / 'single'}, scaling.num_workers=1,"
        " scaling.cpus_per_worker=0.25, train.epochs=3, data.batch_size=32,"
        " model.embed_dim=32, optim.warmup_epochs=0, data.captions=one_random]",
        # Six trials: with four, a fresh-clone run saw ASHA keep every trial (each later
        # trial can land above the median of those before it at every rung).
        "num_samples=6", "scheduler.max_t=3", "scheduler.grace_period=1",
        "searcher.name=random", "max_concurrent_trials=2"])
    t0 = time.perf_counter()
    summary = run_campaign(cfg, tmp_path / "runs")
    print(f"train campaign: {summary['n_trials']} trials in {time.perf_counter() - t0:.1f}s")
    rows = json.loads((tmp_path / "runs" / cfg.name / "trials.json").read_text())
    assert summary["n_trials"] == 6 and summary["n_errors"] == 0
    assert min(r["iterations"] for r in rows) < 3  # ASHA stopped at least one trial early
    assert max(r["iterations"] for r in rows) == 3
    recipe = load_config(tmp_path / "runs" / cfg.name / "best_recipe.yaml", cls=RecipeConfig)
    assert recipe.optim.lr == pytest.approx(summary["best_params"]["optim.lr"])
