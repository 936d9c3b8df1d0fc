"""Typed recipes: YAML in, frozen dataclasses out, every error naming the key and the file.

A recipe is one YAML file in ``configs/``. ``load_config(path, overrides)`` reads it,
applies ``a.b=value`` overrides, and converts it into :class:`RecipeConfig`. Unknown keys,
wrong types and missing required values raise :class:`ConfigError` naming ``file:key``.
Sections a job does not use may be left out; each has defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A recipe is invalid; the message names the file and the dotted key."""


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TowerConfig:
    """One encoder tower: a registered tower ``name`` and the keyword arguments of its class."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """A retrieval model: a registered architecture plus its parts, each chosen by name."""

    name: str = "dual_encoder"
    image_tower: TowerConfig = field(
        default_factory=lambda: TowerConfig("open_clip", {"model_name": "rsir-tiny"})
    )
    text_tower: TowerConfig = field(
        default_factory=lambda: TowerConfig("open_clip", {"model_name": "rsir-tiny"})
    )
    # How the two dates of a pair become one vector (``gff_sub``, ``gff_concat``, ``tff``...).
    fusion: str = "gff_sub"
    fusion_options: dict[str, Any] = field(default_factory=dict)
    head: str = "ffn"
    head_options: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 128
    checkpoint: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    name: str = "infonce"
    # Image->text and text->image weights (λ1, λ2 of the multilanguage paper).
    lambda_i2t: float = 0.5
    lambda_t2i: float = 0.5
    temperature: float = 0.07
    learnable_temperature: bool = True
    global_batch: bool = False
    margin: float = 0.2
    hardest_negative: bool = False


@dataclass(frozen=True)
class DataConfig:
    """Where shards live and how rows become batches."""

    shards: str = "out/demo/shards"
    # ``single`` (image + caption) or ``pair`` (two dates + change caption).
    task: Literal["single", "pair"] = "single"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    image_size: int = 64
    # How an image becomes image_size x image_size: ``bilinear`` (stretched, antialiased)
    # or ``bicubic_center_crop`` (open_clip's evaluation transform: the shorter side to
    # image_size, bicubic, then the centre crop), the one pretrained open_clip towers expect
    # (with their own mean/std, checked against this section at model load).
    resize: Literal["bilinear", "bicubic_center_crop"] = "bilinear"
    bands: list[str] = field(default_factory=lambda: ["R", "G", "B"])
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    # ``archive``: ``mean``/``std`` are the archive's own statistics of ``bands`` over its
    # training split (``<shards>/_meta/band_stats.json``, written by the converter), set
    # when the recipe is loaded (:func:`load_config`).
    normalization: Literal["recipe", "archive"] = "recipe"
    # The caption languages the recipe reads: every job refuses an archive that lacks one,
    # and the evaluation reports exactly these (``[]``: no captions, e.g. WEICOM on PatternNet).
    languages: list[str] = field(default_factory=lambda: ["en"])
    # Training caption language: one of ``languages``, or ``random`` to draw one of them per
    # sample per epoch.
    language: str = "en"
    # Training rows per image (or pair): ``all``, one per caption, as the time-series paper
    # pairs "each caption with its image pair separately" (an epoch is one pass over the
    # captions); under ``language: random`` one per caption index, the language drawn per
    # sample (the i-th caption of every language is one sentence and its translations).
    # ``one_random``: one row per image, a random caption of it each epoch.
    captions: Literal["all", "one_random"] = "all"
    augment: bool = True
    random_crop_scale: float = 0.9
    # Random rotation by a uniform angle in [0, random_rotation] degrees, counter-clockwise,
    # corners filled black, before the crop (GaLR's code: RandomRotation((0, 90))); 0 = off.
    random_rotation: float = 0.0
    hflip: bool = True
    vflip: bool = True
    color_jitter: float = 0.0
    # LEVIR-CC rule of the time-series paper: fraction of no-change pairs kept in training.
    no_change_keep_fraction: float = 1.0
    batch_size: int = 64
    prefetch_batches: int = 2


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    # ``constant``, ``step`` (milestones × gamma), ``cosine`` (with warm-up).
    schedule: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[int] = field(default_factory=list)
    step_every: int = 0
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip_norm: float | None = None
    grad_accum_steps: int = 1


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # On a joined cluster (it may autoscale), how long a job waits for the resources it asks
    # for before it gives up; a local instance that cannot fit the request refuses at once.
    resource_timeout_s: float = 600.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    seed: int = 0
    # ``bf16`` autocast applies only on CUDA; CPU runs stay in fp32.
    precision: Literal["fp32", "bf16"] = "fp32"
    max_failures: int = 2
    keep_checkpoints: int = 2
    run_dir: str = "runs"
    torch_threads: int = 1
    # Weights to start from (an rsir checkpoint or a state dict): the tensors whose names
    # and shapes match are loaded, e.g. a single-image run's towers for a pair run.
    init_from: str | None = None
    # The checkpoint a run hands on (``TrainResult.checkpoint``: evaluation, the demo):
    # ``last`` (``last.pt``, written after every epoch; the papers evaluate the last epoch's
    # model) or ``best_val`` (``best.pt``, the epoch of the highest validation mR; refused
    # when the validation split is part of what the recipe evaluates on).
    select: Literal["last", "best_val"] = "last"


@dataclass(frozen=True)
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 256
    rerank: bool = False
    rerank_k: int = 25
    w_c1: float = 0.5
    w_c2: float = 1.25
    # MR's order of tied reverse ranks (and tied similarities): `numpy` as the GaLR authors'
    # code (numpy's default argsort, their numbers), `stable` by index (rsir.retrieval.rerank).
    rerank_ties: Literal["numpy", "stable"] = "numpy"
    # Pairs: the time-series paper's caption-metric protocol (BLEU, METEOR, ROUGE-L of the
    # retrieved captions, on val+test merged). Tens of thousands of METEOR scores.
    caption_protocol: bool = True
    # Its metrics: `coco` (pycocoevalcap: PTB tokens, METEOR 1.5 jar, ROUGE-L β = 1.2, the
    # papers' numbers; needs Java, else `nltk` with a warning) or `nltk` (NLTK BLEU/METEOR,
    # rouge-score ROUGE-L). The report names the one that ran.
    caption_metrics: Literal["coco", "nltk"] = "coco"
    # WEICOM's λ (text weight) of this recipe: the report's headline and serving's default
    # for a composed query without "lambda" (the paper: 0.3 with CLIP, 0.6 with RemoteCLIP).
    weicom_lambda: float = 0.5
    # Single images of the demo world: text -> image precision@10 of the class and of the
    # colour for every (scene class, object colour) its vocabulary describes (the report's
    # query check; rows need class_name and the color attribute).
    query_check: bool = False


@dataclass(frozen=True)
class DemoConfig:
    """The generated world the demo trains and evaluates on."""

    n_scenes: int = 3000
    n_pairs: int = 3000
    seed: int = 0
    image_size: int = 64
    val_fraction: float = 0.1
    test_fraction: float = 0.25
    # `rsir train` generates the world into the parent of `data.shards` when it is missing.
    generate_if_missing: bool = False
    # `rsir demo` trains and evaluates one run per task: its name -> `a.b=value` overrides
    # of this recipe (`data.task` picks the single-date or the bitemporal shards).
    tasks: dict[str, list[str]] = field(default_factory=lambda: {
        "single": ["data.task=single"], "pair": ["data.task=pair"]})
    # After the tasks, with the `pair` task's model and archive: a filtered search and a
    # monitor for this described change (scoped to the region's west half, calibrated to
    # the archive's top `watch_top`), then `watch_new_pairs` new pair tiles land and the
    # alerts are checked against the world's ground truth (`watch_truth`: change attributes).
    watch_query: str = "several buildings were built"
    watch_truth: dict[str, str] = field(default_factory=lambda: {"change": "added", "category": "building"})
    watch_top: int = 20
    watch_new_pairs: int = 300


@dataclass(frozen=True)
class IndexConfig:
    """The ANN index beside an exact archive (rsir.retrieval.index): ``rsir index`` builds
    it, ``rsir serve`` searches with it (``kind: exact``: neither; the endpoint scans)."""

    kind: Literal["auto", "exact"] = "auto"
    # The index's budget ("4GB", "512MiB"): Flat, IVF-Flat or IVF-PQ, whichever fits.
    max_memory: str = "4GB"
    # A fixed FAISS key (Flat, IVF<n>,Flat, [OPQ<m>,]IVF<n>,PQ<m>) instead of the budget's.
    key: str | None = None
    # Pieces of a full build, each filled by one Ray Data task (the shards of the search).
    pieces: int = 4
    flat_rows: int = 100_000
    nlist: int = 0  # 0: autofaiss's rule for the row count
    opq: bool = False
    # PQ: re-score refine x k candidates exactly from the raw vectors (memory-mapped).
    refine: int = 4
    target_recall: float = 0.95
    eval_queries: int = 200
    nprobe: int = 0  # serving: 0 = the nprobe the build tuned for target_recall


@dataclass(frozen=True)
class RecipeConfig:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    index: IndexConfig = field(default_factory=IndexConfig)


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key (valid keys of {cls.__name__}: "
            f"{', '.join(sorted(fields))})".replace(":.", ":")
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}".replace(":.", ":")
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing required value")
    return cls(**kwargs)


def from_dict(cls: type, data: Any, source: str = "<dict>") -> Any:
    """Build dataclass ``cls`` from plain data, validating every key against its type hint."""
    return _from_dict(cls, data, f"{source}:")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config, ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict copy."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = _parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


BAND_STATS = "_meta/band_stats.json"


def archive_normalization(data: DataConfig, where: str) -> DataConfig:
    """``data`` with ``mean``/``std`` of its bands from ``<shards>/_meta/band_stats.json``."""
    path = Path(data.shards) / BAND_STATS
    if not path.is_file():
        raise ConfigError(
            f"{where}data.normalization: 'archive' needs {path}; the converter writes it "
            f"(`rsir convert dubai-ccd --src DATASET --out {data.shards}`)")
    stats = json.loads(path.read_text(encoding="utf-8"))
    if stats["split"] != data.train_split:
        raise ConfigError(f"{where}data.normalization: {path} has the statistics of split "
                          f"{stats['split']!r}, the recipe trains on {data.train_split!r}")
    missing = [b for b in data.bands if b not in stats["bands"]]
    if missing:
        raise ConfigError(f"{where}data.bands: {missing} not in {path} (bands {stats['bands']})")
    index = [stats["bands"].index(b) for b in data.bands]
    return dataclasses.replace(data, mean=[stats["mean"][i] for i in index],
                               std=[stats["std"][i] for i in index])


def evaluated_splits(cfg: RecipeConfig) -> list[str]:
    """The splits ``rsir evaluate`` scores: the test split, and for pairs under the caption
    protocol the validation split too (the time-series paper merges val + test)."""
    if cfg.data.task == "pair" and cfg.eval.caption_protocol:
        return [cfg.data.test_split, cfg.data.val_split]
    return [cfg.data.test_split]


def check_selection(cfg: RecipeConfig, where: str) -> None:
    """Refuse ``train.select: best_val`` where it cannot be honest: without a validation
    split, or when the validation split is also scored by the evaluation (choosing the
    epoch on it would choose on the test pool)."""
    if cfg.train.select != "best_val":
        return
    if not cfg.data.val_split:
        raise ConfigError(f"{where}train.select: 'best_val' needs a validation split "
                          f"(data.val_split is empty); use 'last'")
    if cfg.data.val_split in evaluated_splits(cfg):
        why = ("it is the test split" if cfg.data.val_split == cfg.data.test_split else
               "the pairs' caption protocol (eval.caption_protocol) evaluates on val + test")
        raise ConfigError(
            f"{where}train.select: 'best_val' would pick the epoch on data.val_split "
            f"{cfg.data.val_split!r}, which the evaluation scores ({why}); use 'last'")


def load_config(
    path: str | Path, overrides: typing.Iterable[str] = (), cls: type = RecipeConfig
) -> Any:
    """Load a recipe YAML (plus overrides) into ``cls``; errors name ``file:key``.

    A recipe with ``data.normalization: archive`` gets its archive's band statistics here,
    so every job (and the resolved ``config.yaml`` beside a run) sees the numbers; its
    ``train.select`` is checked against its evaluation (:func:`check_selection`).
    """
    data = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(cls, data, str(path))
    if isinstance(cfg, RecipeConfig):
        check_selection(cfg, f"{path}:")
        if cfg.data.normalization == "archive":
            cfg = dataclasses.replace(cfg, data=archive_normalization(cfg.data, f"{path}:"))
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config beside a checkpoint or report."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
