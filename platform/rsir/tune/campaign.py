"""Tuning campaigns with Ray Tune: ``build_tuner``, ``run_campaign``, ``resume_campaign``.

Post-hoc kinds (``weicom``, ``rerank``) compute the validation similarities once, put
them in the object store (``ray.put``) and hand the reference to every trial through
``tune.with_parameters``; a trial only rescores (milliseconds). The ``train`` kind runs
one Ray Train run per trial: the Tune trial *function* builds and fits the recipe's
``TorchTrainer`` (Train V2) with ``TuneReportCallback``, which forwards each epoch's
``ray.train.report`` (``val_mR``, ``loss``...) to Tune, so ASHA can stop a trial early.

A campaign directory ``RUN_DIR = <run_dir>/<name>`` holds Tune's experiment state,
``tune.yaml`` (the resolved campaign), ``trials.csv`` / ``trials.json`` (every trial:
params, metric, time), ``best_params.yaml``, ``best_recipe.yaml`` (when the parameters
are recipe keys) and ``metric_vs_params.png``. ``resume_campaign(RUN_DIR)`` continues an
interrupted campaign with ``Tuner.restore``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from rsir.config import RecipeConfig, from_dict, load_config, load_yaml, save_config, to_dict
from rsir.preflight import Check, ResourceRequest, check_recipe, start_job
from rsir.tune import posthoc
from rsir.tune.space import TuneConfig, set_dotted, tune_space, validate

log = logging.getLogger(__name__)

CONFIG_FILE = "tune.yaml"


def load_tune_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TuneConfig:
    return validate(load_config(path, overrides, cls=TuneConfig), str(path))


# ---------------------------------------------------------------------------------------
# Trial functions
# ---------------------------------------------------------------------------------------


def weicom_trial(config: dict[str, Any], data: list[Any]) -> None:
    """One λ: WEICOM mAP on the cached validation similarities."""
    prepared = ray.get(data[0])  # zero-copy numpy views out of the object store
    tune.report(posthoc.score_weicom(prepared, config["lam"]))


def rerank_trial(config: dict[str, Any], data: list[Any], ks: tuple[int, ...] = (1, 5, 10)) -> None:
    """One (k, w_c1, w_c2): MR mR on the cached validation similarities."""
    payload = ray.get(data[0])
    tune.report(posthoc.score_rerank(payload, config, ks))


def train_trial(config: dict[str, Any], recipe: dict[str, Any]) -> None:
    """One Ray Train run of ``recipe`` with this trial's parameters (dotted recipe keys)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from rsir.train.trainer import build_trainer

    cfg = from_dict(RecipeConfig, set_dotted(recipe, config), "trial")
    run_dir = Path(tune.get_context().get_trial_dir()) / "train"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    trainer = build_trainer(cfg, run_dir)
    callbacks = list(trainer.run_config.callbacks or [])
    trainer.run_config.callbacks = [*callbacks, TuneReportCallback()]
    trainer.fit()


# ---------------------------------------------------------------------------------------
# Building the tuner
# ---------------------------------------------------------------------------------------


def _base_recipe(cfg: TuneConfig) -> dict[str, Any] | None:
    if not cfg.recipe:
        return None
    return to_dict(load_config(cfg.recipe, cfg.recipe_overrides, cls=RecipeConfig))


def build_payload(cfg: TuneConfig, split: str = "val") -> dict[str, Any]:
    """The cached similarities of a post-hoc campaign (computed once)."""
    d = cfg.data
    path = d.path if split == "val" else d.test_path
    if d.source == "synthetic":
        seed = d.seed if split == "val" else d.seed + 1
        make = posthoc.synthetic_weicom if cfg.kind == "weicom" else posthoc.synthetic_rerank
        return make(n=d.n, seed=seed, noise=d.noise)
    if path is None:
        raise ValueError(f"data.{'path' if split == 'val' else 'test_path'} is required")
    if d.source == "npz":
        return posthoc.load_npz(cfg.kind, path)
    recipe = from_dict(RecipeConfig, _base_recipe(cfg), "recipe")
    return posthoc.from_checkpoint(recipe, path, recipe.data.val_split if split == "val"
                                   else recipe.data.test_split)


def _trainable(cfg: TuneConfig) -> Any:
    if cfg.kind == "train":
        fn = tune.with_parameters(train_trial, recipe=_base_recipe(cfg))
    else:
        # ray.put once; the list keeps the ref a ref (with_parameters would resolve it).
        payload = build_payload(cfg, "val")
        ref = ray.put(posthoc.prepare_weicom(payload) if cfg.kind == "weicom" else payload)
        fn = (tune.with_parameters(weicom_trial, data=[ref]) if cfg.kind == "weicom"
              else tune.with_parameters(rerank_trial, data=[ref], ks=tuple(cfg.ks)))
    return tune.with_resources(fn, dict(cfg.resources))


def _scheduler(cfg: TuneConfig) -> Any:
    s = cfg.scheduler
    if s.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    return None


def _searcher(cfg: TuneConfig) -> Any:
    if cfg.searcher.name == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(
            seed=cfg.searcher.seed, n_startup_trials=cfg.searcher.n_startup_trials))
    return None  # BasicVariantGenerator: grid axes expanded, ranges sampled


def build_tuner(cfg: TuneConfig, run_root: str | Path | None = None,
                stop: Any = None) -> tune.Tuner:
    """The ``Tuner`` of a campaign; its experiment lives in ``run_root/cfg.name``."""
    run_root = Path(run_root or cfg.run_dir).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    return tune.Tuner(
        _trainable(cfg),
        param_space=tune_space(cfg),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples,
            scheduler=_scheduler(cfg), search_alg=_searcher(cfg),
            max_concurrent_trials=cfg.max_concurrent_trials or None,
            reuse_actors=cfg.kind != "train",  # post-hoc trials are ms: skip actor start-up
        ),
        run_config=tune.RunConfig(name=cfg.name, storage_path=str(run_root), stop=stop,
                                  verbose=0),
    )


# ---------------------------------------------------------------------------------------
# Running, resuming, reporting
# ---------------------------------------------------------------------------------------


def run_campaign(cfg: TuneConfig, run_root: str | Path | None = None, stop: Any = None
                 ) -> dict[str, Any]:
    """Run a campaign to the end; returns the summary (also written to RUN_DIR)."""
    run_root = Path(run_root or cfg.run_dir).resolve()
    run_dir = run_root / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_FILE)
    t0 = time.perf_counter()
    results = build_tuner(cfg, run_root, stop=stop).fit()
    return write_report(cfg, results, run_dir, time.perf_counter() - t0)


def resume_campaign(run_dir: str | Path) -> dict[str, Any]:
    """Continue an interrupted campaign in ``run_dir`` (``Tuner.restore``)."""
    run_dir = Path(run_dir).resolve()
    cfg = validate(from_dict(TuneConfig, load_yaml(run_dir / CONFIG_FILE), str(run_dir)))
    t0 = time.perf_counter()
    tuner = tune.Tuner.restore(str(run_dir), trainable=_trainable(cfg),
                               resume_unfinished=True, resume_errored=True)
    results = tuner.fit()
    return write_report(cfg, results, run_dir, time.perf_counter() - t0)


def _trial_value(result: Any, metric: str, mode: str, last: bool = False) -> float:
    """A trial's score: its best reported value, or with ``last`` its final one (a train
    trial under ``train.select: last``, whose model is the last epoch's)."""
    df = result.metrics_dataframe
    if df is not None and metric in df:
        vals = df[metric].dropna()
        if len(vals):
            return float(vals.iloc[-1] if last else vals.max() if mode == "max" else vals.min())
    return float(result.metrics.get(metric, math.nan)) if result.metrics else math.nan


def trial_table(cfg: TuneConfig, results: Any) -> list[dict[str, Any]]:
    """One row per trial: its parameters and score (a train trial is scored on the model
    its recipe's ``train.select`` hands on: the last epoch's, or the best on validation)."""
    select = (_base_recipe(cfg) or {}).get("train", {}).get("select") if cfg.kind == "train" else None
    rows = []
    for r in results:
        m = r.metrics or {}
        last = select is not None and (r.config or {}).get("train.select", select) == "last"
        rows.append({
            "trial_id": m.get("trial_id", Path(r.path).name if r.path else ""),
            **{k: (r.config or {}).get(k) for k in cfg.space},
            cfg.metric: _trial_value(r, cfg.metric, cfg.mode, last),
            "iterations": m.get("training_iteration"),
            "time_s": m.get("time_total_s"),
            "error": repr(r.error) if r.error else "",
        })
    return rows


def write_report(cfg: TuneConfig, results: Any, run_dir: Path, wall_s: float) -> dict[str, Any]:
    rows = trial_table(cfg, results)
    sign = 1.0 if cfg.mode == "max" else -1.0
    scored = [r for r in rows if not math.isnan(r[cfg.metric])]
    best = max(scored, key=lambda r: sign * r[cfg.metric]) if scored else None
    best_params = {k: best[k] for k in cfg.space} if best else {}
    best_value = best[cfg.metric] if best else math.nan
    baseline = None
    if cfg.kind == "rerank" and cfg.baseline:
        payload = build_payload(cfg, "val")
        baseline = posthoc.score_rerank(payload, {"eval.rerank": False}, tuple(cfg.ks))[cfg.metric]
        rows.append({"trial_id": "baseline_no_rerank", **{k: None for k in cfg.space},
                     cfg.metric: baseline, "iterations": 0, "time_s": 0.0, "error": ""})
        if best is None or sign * baseline >= sign * best_value:
            best_params, best_value = {"eval.rerank": False}, baseline
        else:
            best_params = {"eval.rerank": True, **best_params}
    summary: dict[str, Any] = {
        "name": cfg.name, "kind": cfg.kind, "metric": cfg.metric, "mode": cfg.mode,
        "n_trials": len(results), "n_errors": sum(1 for r in results if r.error),
        "best_params": best_params, "best_value": best_value, "baseline": baseline,
        "wall_s": wall_s, "run_dir": str(run_dir),
    }
    if cfg.kind != "train" and best_params and (cfg.data.test_path or cfg.data.source == "synthetic"):
        test = build_payload(cfg, "test")
        score = (posthoc.score_weicom(posthoc.prepare_weicom(test), best_params["lam"])
                 if cfg.kind == "weicom"
                 else posthoc.score_rerank(test, best_params, tuple(cfg.ks)))
        summary["test_" + cfg.metric.removeprefix("val_")] = score[cfg.metric]
    _write_rows(rows, run_dir)
    (run_dir / "best_params.yaml").write_text(yaml.safe_dump(_plain(best_params), sort_keys=False))
    recipe = _base_recipe(cfg)
    if recipe is not None and cfg.kind in ("train", "rerank") and best_params:
        from rsir.config import RecipeConfig

        tuned = set_dotted(recipe, best_params)
        tuned["name"] = f"{recipe['name']}_{cfg.name}"
        save_config(from_dict(RecipeConfig, tuned, "best"), run_dir / "best_recipe.yaml")
        summary["best_recipe"] = str(run_dir / "best_recipe.yaml")
    plot_metric_vs_params(cfg, [r for r in rows if r["trial_id"] != "baseline_no_rerank"],
                          run_dir / "metric_vs_params.png", baseline)
    (run_dir / "summary.json").write_text(json.dumps(_plain(summary), indent=2))
    log.info("campaign %s: %d trials, best %s = %.4f with %s", cfg.name, len(results),
             cfg.metric, best_value, best_params)
    return summary


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _write_rows(rows: list[dict[str, Any]], run_dir: Path) -> None:
    rows = _plain(rows)
    (run_dir / "trials.json").write_text(json.dumps(rows, indent=1))
    with open(run_dir / "trials.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        w.writeheader()
        w.writerows(rows)


def plot_metric_vs_params(cfg: TuneConfig, rows: list[dict[str, Any]], path: Path,
                          baseline: float | None = None) -> None:
    """One panel per parameter: the metric of every trial against that parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cfg.space)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = [(r[name], r[cfg.metric]) for r in rows if r[name] is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
        if numeric:
            pts.sort(key=lambda p: p[0])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1)
            if cfg.space[name].type == "loguniform":
                ax.set_xscale("log")
        else:
            ax.scatter([str(p[0]) for p in pts], [p[1] for p in pts])
        if baseline is not None:
            ax.axhline(baseline, color="gray", ls="--", label="no rerank")
            ax.legend()
        ax.set(xlabel=name, ylabel=cfg.metric)
    fig.suptitle(f"{cfg.name}: {cfg.metric} per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def check_campaign(cfg: TuneConfig) -> Check:
    """The preflight of a campaign: its base recipe's archive and weights (``train``: the
    training splits; ``rerank`` from a checkpoint: the split it embeds), one trial's resources
    and, for ``train``, the Ray Train workers each trial starts."""
    recipe = _base_recipe(cfg)
    if recipe is None:
        check = Check(cfg.name, "tune")
    else:
        rcfg = from_dict(RecipeConfig, recipe, cfg.recipe or "recipe")
        if cfg.kind == "train":
            check = check_recipe(rcfg, "tune")
        elif cfg.data.source == "checkpoint":
            check = check_recipe(rcfg, "index", checkpoint=cfg.data.path, split=rcfg.data.val_split)
        else:
            check = Check(rcfg.name, "tune")
    check.job = f"tune ({cfg.kind})"
    check.requests.insert(0, ResourceRequest("Tune trial", 1, dict(cfg.resources),
                                             {k: f"resources.{k}=... (campaign YAML)"
                                              for k in ("CPU", "GPU")}))
    return check


def cli_main(args: argparse.Namespace) -> int:
    """``rsir tune --config X [overrides]`` or ``rsir tune --resume RUN_DIR``."""
    if getattr(args, "resume", None):
        cfg = load_tune_config(Path(args.resume) / CONFIG_FILE)
    elif args.config:
        cfg = load_tune_config(args.config, list(args.overrides or []))
    else:
        raise SystemExit("rsir tune: --config or --resume is required")
    start_job(check_campaign(cfg), getattr(args, "address", None), 600.0)
    summary = resume_campaign(args.resume) if args.resume else run_campaign(cfg)
    print(json.dumps(_plain(summary), indent=2))
    return 1 if summary["n_errors"] and summary["n_errors"] == summary["n_trials"] else 0


__all__ = ["build_tuner", "run_campaign", "resume_campaign", "load_tune_config",
           "build_payload"]
