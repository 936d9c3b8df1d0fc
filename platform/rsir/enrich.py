"""Enrichment jobs with Ray Data (glue): ``rsir detect`` and ``rsir translate``.

Both read the shards of the input archive that still need doing (:mod:`rsir.data.enrichment`
plans them, resumably), stream them through an actor pool (``map_batches``: one model
load per actor, a GPU each when asked for and present) that returns one small result
row per input row, and hand the results to the driver's
:class:`~rsir.data.enrichment.ChunkCollector`, which writes each chunk of the new archive
as soon as all its rows are back. Only the columns the actors need are read; the images
never reach the driver.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rsir.config import load_config
from rsir.data.detection import DetectOptions, Detector, ObjectDetector, YoloLoader, import_ultralytics
from rsir.data.enrichment import ChunkCollector, EnrichmentJob, finish_enrichment, plan_enrichment
from rsir.data.translation import (
    CaptionTranslator,
    Target,
    TranslateOptions,
    parse_languages,
    parse_models,
    resolve_targets,
)
from rsir.retrieval.archive import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorResources:
    """What each actor of a job's pool asks Ray for."""

    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus else "cpu"


def actor_resources(use_gpu: bool, concurrency: int = 1, cpus_per_actor: float = 1.0) -> ActorResources:
    """A GPU per actor when asked for (the preflight refuses a cluster without one), else CPUs."""
    return ActorResources(concurrency, 0.0 if use_gpu else cpus_per_actor, 1.0 if use_gpu else 0.0)


def _start(job: str, name: str, shards: str | Path, resources: ActorResources,
           address: str | None) -> None:
    """The preflight of an enrichment job: its input archive, and one actor's resources."""
    from rsir.data.contract import inspect_archive
    from rsir.preflight import Check, ResourceRequest, start_job

    check = Check(name, job)
    try:
        check.lines += inspect_archive(shards).lines()
    except FileNotFoundError as err:
        check.problems.append(f"{job}: {err} (--shards)")
    bundle = {"CPU": resources.num_cpus, "GPU": resources.num_gpus}
    check.requests = [ResourceRequest(f"{job} actor", 1, bundle,
                                      {"GPU": "scaling.use_gpu=false (detect) or no --use-gpu (translate)",
                                       "CPU": "--cpus-per-actor C"})]
    start_job(check, address, 600.0)


def run_enrichment(
    job: EnrichmentJob, source: str | Path, out: str | Path, *, actor: type,
    actor_kwargs: Mapping[str, Any], columns: Sequence[str], resources: ActorResources,
    batch_size: int, record: Mapping[str, Any],
) -> dict[str, Any]:
    """Plan, run the pending chunks through ``actor``'s pool, finish; returns the summary."""
    import ray
    import ray.data

    plan = plan_enrichment(job, source, out)
    log.info("%s: %d of %d shards to do (%d done before) -> %s", job.name, len(plan.pending),
             len(plan.chunks), len(plan.skipped), plan.out)
    collector = ChunkCollector(plan, on_chunk=lambda c: log.info("%s: wrote %s (%d rows)",
                                                                 job.name, c.output, c.rows))
    if any(c.rows for c in plan.pending):
        ctx = ray.data.DataContext.get_current()
        # Parquet reader V1, as rsir.data.pipeline.read_split: V2 starts 32 footer actors.
        v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
        try:
            ds = ray.data.read_parquet([str(c.source) for c in plan.pending], columns=list(columns),
                                       include_paths=True, override_num_blocks=len(plan.pending))
        finally:
            ctx.use_datasource_v2 = v2
        ds = ds.map_batches(
            actor, batch_format="pyarrow", batch_size=batch_size, fn_constructor_kwargs=dict(actor_kwargs),
            compute=ray.data.ActorPoolStrategy(size=resources.concurrency),
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            collector.add(batch)
    collector.check_complete()
    return finish_enrichment(plan, record, collector.written)


def _torch_threads(resources: ActorResources) -> int:
    return max(1, int(resources.num_cpus))


# ---------------------------------------------------------------------------------------
# rsir detect
# ---------------------------------------------------------------------------------------


def detect(
    source: str | Path, out: str | Path, *, weights: str | Path, categories: Sequence[str],
    options: DetectOptions = DetectOptions(), resources: ActorResources = ActorResources(),
    batch_size: int = 16, load_model: Callable[[str], Detector] | None = None,
) -> dict[str, Any]:
    """Fill ``objects`` of every row of ``source`` with the detector's boxes into ``out``.

    ``load_model(device)`` builds the detector in each actor (default: the ultralytics
    weights file ``weights``); ``weights`` is recorded by name and sha256 either way.
    """
    weights = Path(weights)
    sha = file_sha256(weights)
    record = {"detector": "ultralytics YOLO OBB" if load_model is None else repr(load_model),
              "weights": weights.name, "weights_path": str(weights), "weights_sha256": sha,
              **asdict(options), "categories": list(categories),
              "image": "image (the first date of a bitemporal pair)"}
    if load_model is None:
        record["ultralytics"] = import_ultralytics().__version__
        load_model = YoloLoader(str(weights))
    job = EnrichmentJob("detect", "objects", "replace",
                        {"job": "detect", "weights_sha256": sha, **asdict(options),
                         "categories": list(categories)})
    return run_enrichment(
        job, source, out, actor=ObjectDetector,
        actor_kwargs={"load_model": load_model, "categories": list(categories), "options": options,
                      "device": resources.device, "torch_threads": _torch_threads(resources)},
        columns=["id", "image", "bands"], resources=resources, batch_size=batch_size, record=record)


def detect_main(args: argparse.Namespace) -> int:
    from rsir.models.galr import DOTA_CATEGORIES

    cfg = load_config(args.config, args.overrides)
    weights = Path(args.weights)
    if not weights.is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file (a local ultralytics OBB "
                                "weights file, e.g. yolo11n-obb.pt; nothing is downloaded)")
    import_ultralytics()  # a missing extra fails here, before Ray starts
    options = DetectOptions(
        score_threshold=args.score_threshold,
        max_objects=args.max_objects or int(cfg.model.options.get("max_objects", DetectOptions.max_objects)),
        image_size=args.image_size)
    categories = list(cfg.model.options.get("categories") or DOTA_CATEGORIES)
    resources = actor_resources(cfg.scaling.use_gpu, args.concurrency, args.cpus_per_actor)
    _start("detect", cfg.name, args.shards or cfg.data.shards, resources, args.address)
    summary = detect(args.shards or cfg.data.shards, args.out, weights=weights, categories=categories,
                     options=options, resources=resources, batch_size=args.batch_size)
    print(f"detect: {summary['rows']} rows, {summary['quarantined']} quarantined, chunks written "
          f"{summary['chunks_written']}, skipped {summary['chunks_skipped']} -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------
# rsir translate
# ---------------------------------------------------------------------------------------


def folder_sha256(path: str | Path) -> str:
    """One digest of every file under a model folder (relative names and contents)."""
    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(root).as_posix()}\0{file_sha256(file)}\0".encode())
    return h.hexdigest()


def translate(
    source: str | Path, out: str | Path, *, targets: Sequence[Target],
    options: TranslateOptions = TranslateOptions(), resources: ActorResources = ActorResources(),
    batch_size: int = 32,
) -> dict[str, Any]:
    """Add every ``options.source`` caption's translations into ``targets``' languages."""
    import transformers

    shas = {path: folder_sha256(path) for path in {t.model for t in targets}}
    described = [{**t.describe(), "name": Path(t.model).name, "sha256": shas[t.model]} for t in targets]
    record = {"translator": "transformers", "transformers": transformers.__version__,
              "targets": described, **asdict(options)}
    job = EnrichmentJob("translate", "captions", "append",
                        {"job": "translate", "targets": [{k: v for k, v in d.items() if k != "model"}
                                                         for d in described],
                         "source": options.source, "max_new_tokens": options.max_new_tokens,
                         "num_beams": options.num_beams})
    return run_enrichment(
        job, source, out, actor=CaptionTranslator,
        actor_kwargs={"targets": list(targets), "options": options, "device": resources.device,
                      "torch_threads": _torch_threads(resources)},
        columns=["id", "captions"], resources=resources, batch_size=batch_size, record=record)


def translate_main(args: argparse.Namespace) -> int:
    langs = parse_languages(args.to)
    if args.source in langs:
        raise ValueError(f"--to {args.to} includes the source language {args.source}")
    targets = resolve_targets(parse_models(args.model, langs), args.source)  # before Ray starts
    options = TranslateOptions(source=args.source, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    resources = actor_resources(args.use_gpu, args.concurrency, args.cpus_per_actor)
    _start("translate", "translate", args.shards, resources, args.address)
    summary = translate(args.shards, args.out, targets=targets, options=options, resources=resources,
                        batch_size=args.batch_size)
    print(f"translate: {summary['rows']} rows, {summary['quarantined']} quarantined, chunks written "
          f"{summary['chunks_written']}, skipped {summary['chunks_skipped']} -> {args.out}")
    return 0
