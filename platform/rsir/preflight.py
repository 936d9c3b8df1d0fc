"""Preflight: refuse a job that cannot run, before it builds a model or starts a worker.

Every job (``train``, ``tune``, ``index``, ``evaluate``, ``detect``, ``translate``, ``serve``)
calls :func:`preflight` first. It prints what the job would read (the archive measured
against the recipe's :class:`~rsir.data.contract.InputContract`), what it needs (weights
files, resources) and every problem, each naming what is missing and how to fix it.

Resources: the job's request (Ray Train workers, embedding actors, Serve replicas) is
packed onto the cluster's nodes. On an instance this process started itself there is no
autoscaler, so a request that does not fit stops the job at once. On a joined cluster (it
may autoscale) the job warns and waits up to ``scaling.resource_timeout_s``, then stops.
``rsir check`` runs the same checks against this machine (or ``--address``) and starts
nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsir.config import RecipeConfig
from rsir.data.contract import InputContract, archive_problems, inspect_archive

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json", ".txt", ".npz")


class PreflightError(SystemExit):
    """The job cannot run; the message lists every problem and its fix (exit status 1)."""


@dataclass(frozen=True)
class ResourceRequest:
    """``count`` bundles of ``bundle`` (``{"CPU": 4, "GPU": 1}``), each on one node."""

    what: str
    count: int
    bundle: dict[str, float]
    fixes: dict[str, str]  # by shortfall ("GPU", "CPU", "count"): the override that fixes it

    def describe(self) -> str:
        return f"{self.count} × {self.what} {{{_fmt(self.bundle)}}}"


@dataclass
class Check:
    """What a job would read and need, and what stands in its way."""

    recipe: str
    job: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    requests: list[ResourceRequest] = field(default_factory=list)

    def report(self) -> str:
        head = f"preflight of {self.job} {self.recipe}:"
        body = [*self.lines, *(f"PROBLEM: {p}" for p in self.problems)]
        verdict = (f"{len(self.problems)} problem(s): the job cannot run" if self.problems
                   else "no problem found")
        return "\n".join([head, *(f"  {line}" for line in body), f"  {verdict}"])


def _fmt(bundle: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:g}" for k, v in bundle.items() if v)


def job_splits(cfg: RecipeConfig, job: str, split: str | None = None) -> list[str] | None:
    """The splits ``job`` reads from ``cfg.data.shards`` (None: all of them)."""
    d = cfg.data
    if job == "train" or job == "tune":
        return [d.train_split] + ([d.val_split] if d.val_split else [])
    if job == "index":
        return [split or d.test_split]
    if job == "evaluate":
        protocol = d.task == "pair" and cfg.eval.caption_protocol
        return [d.test_split] + ([d.val_split] if protocol and d.val_split != d.test_split else [])
    return None


def weight_files(cfg: RecipeConfig, checkpoint: str | None = None) -> list[tuple[str, str, bool | None]]:
    """``(key, value, found)`` of every weights or vocabulary file the recipe's model loads;
    ``found`` is None for an open_clip tag such as ``openai`` (not a file: open_clip downloads
    it when the model is built, which a cluster can and an offline machine cannot)."""
    m = cfg.model
    named = [("checkpoint", checkpoint or m.checkpoint), ("train.init_from", cfg.train.init_from)]
    for tower in ("image_tower", "text_tower"):
        opts = getattr(m, tower).options
        named += [(f"model.{tower}.options.{k}", opts.get(k)) for k in ("pretrained", "weights")]
    named += [(f"model.options.{k}", m.options.get(k)) for k in ("vocab", "backbone_weights")]
    out = []
    for key, value in named:
        if not isinstance(value, str) or not value:
            continue
        is_file = os.sep in value or value.endswith(WEIGHT_SUFFIXES)
        out.append((key, value, Path(value).is_file() if is_file else None))
    return out


def resource_requests(cfg: RecipeConfig, job: str) -> list[ResourceRequest]:
    """What ``job`` asks the cluster for, with the override that shrinks it."""
    s = cfg.scaling
    gpu = (s.gpus_per_worker or 1.0) if s.use_gpu else 0.0
    fixes = {"GPU": "scaling.use_gpu=false scaling.gpus_per_worker=0",
             "CPU": "scaling.cpus_per_worker=C (C within a node's CPUs)",
             "count": "scaling.num_workers=N (N × scaling.cpus_per_worker within the cluster's CPUs)"}
    if job in ("train", "tune"):
        return [ResourceRequest("Ray Train worker", s.num_workers,
                                {"CPU": s.cpus_per_worker, "GPU": gpu}, fixes)]
    # Ray Data actors of index / evaluate / detect / translate: at least one must start.
    bundle = {"GPU": 1.0} if s.use_gpu else {"CPU": 0.5}
    return [ResourceRequest("batch-inference actor", 1, bundle, fixes)]


def pack(requests: Sequence[ResourceRequest], nodes: Sequence[dict[str, float]]) -> str | None:
    """Place every bundle on a node (scarcest resources first, each on the node it fills best);
    None when all fit, else what is short and the override that fixes it."""
    free = [dict(n) for n in nodes]
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    bundles = sorted(((req, i) for req in requests for i in range(req.count)),
                     key=lambda b: (-b[0].bundle.get("GPU", 0.0), -b[0].bundle.get("CPU", 0.0)))
    placed = {id(req): 0 for req in requests}
    for req, _ in bundles:
        need = {k: v for k, v in req.bundle.items() if v}
        fits = [n for n in free if all(n.get(k, 0.0) >= v for k, v in need.items())]
        if not fits:
            short = [k for k, v in need.items() if not any(n.get(k, 0.0) >= v for n in nodes)]
            why = (f"no node has {', '.join(f'{k} {need[k]:g}' for k in short)}" if short
                   else f"only {placed[id(req)]} of the {req.count} fit beside the rest")
            fix = "; ".join(req.fixes[k] for k in (short or ["count"]) if k in req.fixes)
            return (f"the job asks for {req.describe()}; the cluster has {{{_fmt(total) or 'nothing'}}} "
                    f"on {len(nodes)} node(s): {why}; fix: {fix}")
        home = min(fits, key=lambda n: sum(n.get(k, 0.0) - v for k, v in need.items()))
        for k, v in need.items():
            home[k] -= v
        placed[id(req)] += 1
    return None


def local_nodes() -> list[dict[str, float]]:
    """What a Ray instance started on this machine would have."""
    import torch

    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of the alive nodes of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_recipe(
    cfg: RecipeConfig, job: str, *, checkpoint: str | None = None, split: str | None = None,
    shards: str | None = None, require_checkpoint: bool = False, read_shards: bool = True,
) -> Check:
    """Everything but resources: the archive (``shards``, default ``data.shards``) against the
    contract, and the weights files. ``read_shards=False``: a job that reads no shards
    (serving reads published embedding archives)."""
    from rsir.models import input_contract

    check = Check(cfg.name, job)
    try:
        contract = input_contract(cfg)
    except (KeyError, ValueError) as err:
        check.problems.append(str(err).strip("'\""))
        return check
    check.lines.append(f"model {cfg.model.name}: {contract.describe()}")
    if read_shards:
        _archive(check, contract, shards or cfg.data.shards, job_splits(cfg, job, split))
    for key, value, found in weight_files(cfg, checkpoint):
        state = {True: "found", False: "NOT FOUND", None: "a tag: downloaded when the model is "
                 "built (offline, give a local file)"}[found]
        check.lines.append(f"weights {key} = {value}: {state}")
        if found is False:
            check.problems.append(f"recipe {cfg.name}: {key} = {value}: no such file")
    if require_checkpoint and not (checkpoint or cfg.model.checkpoint):
        check.problems.append(f"recipe {cfg.name}: {job} needs trained weights: --checkpoint FILE")
    check.requests = resource_requests(cfg, job)
    return check


def _archive(check: Check, contract: InputContract, shards: str, splits: list[str] | None) -> None:
    try:
        summary = inspect_archive(shards)
    except FileNotFoundError as err:
        check.problems.append(f"recipe {contract.recipe}: {err} (data.shards)")
        return
    check.lines += summary.lines()
    check.problems += archive_problems(contract, summary, splits or [])


def add_resources(check: Check, nodes: Sequence[dict[str, float]]) -> str | None:
    """List the request beside the nodes' resources; returns the shortfall, if any."""
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    for req in check.requests:
        check.lines.append(f"needs {req.describe()}")
    check.lines.append(f"cluster: {len(nodes)} node(s), {{{_fmt(total)}}}")
    return pack(check.requests, nodes)


def start_job(check: Check, address: str | None, timeout_s: float,
              env_vars: dict[str, str] | None = None) -> bool:
    """The start of every job: stop at once on the check's problems (before Ray starts), then
    connect to Ray (``rsir.cluster.init_ray``) and check the resources. Returns whether this
    process started a local instance."""
    from rsir.cluster import init_ray

    if check.problems:
        _stop(check)
    local = init_ray(address, env_vars=env_vars)
    preflight(check, local=local, timeout_s=timeout_s)
    return local


def preflight(check: Check, *, local: bool, timeout_s: float, poll_s: float = 5.0) -> Check:
    """Print the check's report; stop the job (:class:`PreflightError`) on any problem.

    Call it after ``init_ray``: ``local`` is whether this process started the instance (no
    autoscaler: a shortfall never resolves). On a joined cluster a shortfall is waited for,
    up to ``timeout_s``.
    """
    short = add_resources(check, cluster_nodes())
    if short and not local:
        log.warning("%s; waiting up to %.0f s for the cluster to grow (scaling.resource_timeout_s)",
                    short, timeout_s)
        deadline = time.monotonic() + timeout_s
        while short and time.monotonic() < deadline:
            time.sleep(poll_s)
            short = pack(check.requests, cluster_nodes())
        if short:
            short += f" (waited {timeout_s:.0f} s)"
    if short:
        check.problems.append(f"recipe {check.recipe}: {short}")
    if check.problems:
        _stop(check)
    print(check.report(), flush=True)
    return check


def _stop(check: Check) -> None:
    """Print the report and stop the job with every problem in the message."""
    print(check.report(), flush=True)
    raise PreflightError(f"{check.job} {check.recipe} stopped before starting: "
                         + "; ".join(check.problems))
