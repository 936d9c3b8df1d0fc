"""Preflight: a job that cannot run stops before it starts workers, saying what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from rsir.config import load_config
from rsir.data.demo_world import generate
from rsir.data.schema import SHARD_SCHEMA
from rsir.preflight import PreflightError, ResourceRequest, check_recipe, pack, preflight

FIXES = {"GPU": "use_gpu=false", "CPU": "cpus=C", "count": "workers=N"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preflight_world")
    generate(out, n_scenes=40, n_pairs=0, seed=2, val_fraction=0.2, test_fraction=0.2, size=32)
    return out / "single"


@pytest.fixture(scope="module")
def english_only(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("english_only")
    for p in world.glob("*.parquet"):
        t = pq.read_table(p, schema=SHARD_SCHEMA)
        caps = [[c for c in row if c["lang"] == "en"] for row in t.column("captions").to_pylist()]
        i = t.schema.get_field_index("captions")
        pq.write_table(t.set_column(i, "captions", pa.array(caps, SHARD_SCHEMA.field("captions").type)),
                       out / p.name)
    return out


def _rsir(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    return subprocess.run([sys.executable, "-m", "rsir.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_pack_places_bundles_node_by_node():
    two_nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 2.0}]
    fits = ResourceRequest("worker", 2, {"CPU": 2.0}, FIXES)
    gpu = ResourceRequest("worker", 1, {"CPU": 1.0, "GPU": 1.0}, FIXES)
    # the GPU worker first (node 1: 3 CPUs left), then a 2-CPU worker on each node
    assert pack([fits, gpu], two_nodes) is None
    # a third 2-CPU worker finds 1 CPU left on node 1 and none on node 2
    short = pack([ResourceRequest("worker", 3, {"CPU": 2.0}, FIXES), gpu], two_nodes)
    assert "only 2 of the 3 fit" in short and "workers=N" in short
    # a bundle larger than any node never fits, whatever the total
    big = pack([ResourceRequest("worker", 1, {"CPU": 5.0}, FIXES)], two_nodes)
    assert "no node has CPU 5" in big and "cpus=C" in big and "{CPU: 6, GPU: 1}" in big
    no_gpu = pack([gpu], [{"CPU": 2.0}])
    assert "no node has GPU 1" in no_gpu and "use_gpu=false" in no_gpu


def test_check_lists_coverage_weights_and_missing_languages(english_only):
    cfg = load_config(REPO / "configs" / "rsicd_multilingual.yaml", [f"data.shards={english_only}"])
    check = check_recipe(cfg, "train")
    text = check.report()
    assert "captions: en" in text and "splits: test 8 rows, train 25 rows, val 7 rows" in text
    assert "pretrained = openai: a tag" in text
    (problem,) = check.problems
    assert "no captions in ar, fr, it" in problem and "rsir translate" in problem


@pytest.mark.ray
def test_a_joined_cluster_waits_for_the_time_limit_then_refuses(ray_session, world):
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.shards={world}", "scaling.use_gpu=true"])
    check = check_recipe(cfg, "train")
    assert not check.problems
    t0 = time.monotonic()
    with pytest.raises(PreflightError, match=r"GPU 1.*waited 1 s"):
        preflight(check, local=False, timeout_s=1.0, poll_s=0.2)
    assert 1.0 <= time.monotonic() - t0 < 10


@pytest.mark.ray
@pytest.mark.slow
def test_train_refuses_a_gpu_recipe_without_a_gpu_within_seconds(world):
    """The paper recipe asks for a GPU worker; a local instance without one refuses at once
    (before the fix, Ray Train retried its worker group every minute, for ever)."""
    t0 = time.monotonic()
    out = _rsir("train", "--config", "configs/rsicd_multilingual.yaml", f"data.shards={world}",
                f"train.run_dir={world.parent / 'runs'}")
    elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stderr[-2000:]
    assert "GPU 1" in out.stderr and "scaling.use_gpu=false" in out.stderr
    assert "preflight of train rsicd_multilingual" in out.stdout
    assert elapsed < 90, elapsed  # Ray's start is most of it
    assert not (world.parent / "runs").exists()  # no run was started


def test_rsir_check_exits_non_zero_on_an_english_only_archive(english_only):
    out = _rsir("check", "--config", "configs/rsicd_multilingual.yaml", f"data.shards={english_only}")
    assert out.returncode == 1
    assert "PROBLEM: recipe rsicd_multilingual" in out.stdout and "no captions in ar, fr, it" in out.stdout
    assert "needs 1 × Ray Train worker {CPU: 8, GPU: 1}" in out.stdout
    ok = _rsir("check", "--config", "configs/demo.yaml", f"data.shards={english_only}",
               "data.languages=[en]")
    assert ok.returncode == 0, ok.stdout
    assert "no problem found" in ok.stdout
