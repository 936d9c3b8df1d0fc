"""``TuneConfig``: a tuning campaign as a YAML file, and its search space in Tune's terms.

A campaign YAML names its ``kind`` (``weicom`` / ``rerank`` post-hoc on cached
similarities, or ``train``: one Ray Train run per trial), the ``space`` (parameter ->
distribution), ``metric`` / ``mode``, ``scheduler`` (``fifo`` or ``asha``), ``searcher``
(``grid``/``random`` = Tune's variant generator, or ``optuna`` = Optuna TPE),
``num_samples``, ``resources`` per trial and the post-hoc ``data`` source. Parameter
names of ``train`` and ``rerank`` campaigns are dotted recipe keys (``optim.lr``,
``eval.w_c1``...), so the best trial becomes a recipe by plain overrides.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from rsir.config import ConfigError


@dataclass(frozen=True)
class ParamSpec:
    """One dimension: ``grid``/``choice`` over ``values``, or a range ``low``..``high``."""

    type: Literal["grid", "choice", "uniform", "loguniform", "randint", "quniform"]
    values: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    q: float | None = None


@dataclass(frozen=True)
class SchedulerConfig:
    name: Literal["fifo", "asha"] = "fifo"
    time_attr: str = "training_iteration"
    max_t: int = 10
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class SearcherConfig:
    # grid/random: Tune's BasicVariantGenerator (grid axes expanded, ranges sampled);
    # optuna: Optuna's TPE sampler (grid axes become categorical choices).
    name: Literal["grid", "random", "optuna"] = "grid"
    seed: int = 0
    n_startup_trials: int = 5


@dataclass(frozen=True)
class PosthocDataConfig:
    """Where the cached similarities of a post-hoc campaign come from.

    ``synthetic``: a generated world: demo-world scene classes and attributes (``weicom``)
    or image/caption ids (``rerank``) with random embeddings whose structure makes the
    tuned parameters matter; ``npz``: arrays saved by an embedding pass (see
    ``rsir.tune.posthoc`` for the keys); ``checkpoint``: embed the recipe's validation
    split with a trained checkpoint (``rerank``).
    """

    source: Literal["synthetic", "npz", "checkpoint"] = "synthetic"
    path: str | None = None  # npz with the validation arrays, or the checkpoint
    test_path: str | None = None  # optional npz of the test split, scored for the best only
    n: int = 400
    seed: int = 0
    noise: float = 1.0


@dataclass(frozen=True)
class TuneConfig:
    name: str
    kind: Literal["weicom", "rerank", "train"]
    space: dict[str, ParamSpec]
    metric: str = "val_mAP"
    mode: Literal["max", "min"] = "max"
    num_samples: int = 1
    max_concurrent_trials: int = 0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 0.5})
    run_dir: str = "runs/tune"
    # Base recipe (train: what each trial trains; rerank/train: the best is written over it).
    recipe: str | None = None
    recipe_overrides: list[str] = field(default_factory=list)
    data: PosthocDataConfig = field(default_factory=PosthocDataConfig)
    # rerank: score "no rerank" on the validation split and keep it when it is better.
    baseline: bool = True
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])


def validate(cfg: TuneConfig, source: str = "tune") -> TuneConfig:
    if not cfg.space:
        raise ConfigError(f"{source}:space: at least one parameter is required")
    for name, p in cfg.space.items():
        where = f"{source}:space.{name}"
        if p.type in ("grid", "choice"):
            if not p.values:
                raise ConfigError(f"{where}.values: {p.type} needs a non-empty list")
        elif p.low is None or p.high is None or p.low > p.high:
            raise ConfigError(f"{where}: {p.type} needs low <= high")
        if p.type == "loguniform" and (p.low or 0) <= 0:
            raise ConfigError(f"{where}.low: loguniform needs low > 0")
    if cfg.kind == "train" and not cfg.recipe:
        raise ConfigError(f"{source}:recipe: a train campaign needs a base recipe")
    if cfg.num_samples < 1:
        raise ConfigError(f"{source}:num_samples: must be >= 1")
    return cfg


def tune_space(cfg: TuneConfig) -> dict[str, Any]:
    """Tune's ``param_space`` for the configured searcher."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, p in cfg.space.items():
        if p.type == "grid":
            out[name] = (tune.choice(list(p.values)) if cfg.searcher.name == "optuna"
                         else tune.grid_search(list(p.values)))
        elif p.type == "choice":
            out[name] = tune.choice(list(p.values))
        elif p.type == "uniform":
            out[name] = tune.uniform(p.low, p.high)
        elif p.type == "loguniform":
            out[name] = tune.loguniform(p.low, p.high)
        elif p.type == "randint":
            out[name] = tune.randint(int(p.low), int(p.high) + 1)  # high inclusive
        elif p.type == "quniform":
            out[name] = tune.quniform(p.low, p.high, p.q or 1.0)
    return out


def set_dotted(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of nested ``data`` with ``a.b`` keys of ``params`` set."""
    out = copy.deepcopy(data)
    for key, value in params.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"parameter {key!r}: {part} is not a section")
        node[parts[-1]] = value.item() if hasattr(value, "item") else value
    return out
