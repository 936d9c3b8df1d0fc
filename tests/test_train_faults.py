"""Ray Train fault tolerance and placement on tiny demo worlds.

1. Two workers on a 3-node local cluster land on different nodes; SIGKILL of rank 1
   mid-run: the group restarts from the last checkpoint and the run completes with every
   epoch in ``metrics.jsonl`` exactly once.
2. Fitting again into that run directory with one more epoch continues the epoch count
   instead of retraining the first epochs.

Both scenarios run one after the other in one subprocess, on one 3-node cluster
(``ray.cluster_utils.Cluster`` cannot share a process with the session's ``ray.init``); the
second continues the first's run (one fit fewer to start).

Each worker start is read from ``<run_dir>/workers/<rank>.jsonl`` (pid, node id, the epoch
it started from), which ``rsir.train.loop`` appends to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]

# one row per scene: the faults are about epochs and checkpoints, not captions
TINY = ["data.batch_size=16", "optim.schedule=constant", "train.keep_checkpoints=2", "data.captions=one_random"]


def _world(out: Path) -> Path:
    from rsir.data.demo_world import generate

    generate(out, n_scenes=128, n_pairs=0, seed=3, val_fraction=0.125, test_fraction=0.0)
    return out / "single"


def _cfg(world: Path, *overrides: str):
    from rsir.config import load_config

    return load_config(REPO / "configs" / "demo.yaml",
                       [f"data.shards={world}", *TINY, *overrides])


def _starts(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / "workers" / f"{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["epoch"] for x in path.read_text().splitlines() if x.strip()]


def _committed_epoch(run_dir: Path) -> int | None:
    """The epoch of the newest checkpoint Ray Train has registered (every rank reported
    it), from the controller's ``checkpoint_manager_snapshot.json``; None before the first.
    A checkpoint folder on disk is not enough: the controller may not have registered it."""
    path = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(path.read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if not latest else int(latest["metrics"]["epoch"])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _world(tmp_path_factory.mktemp("faults_world"))


# ---------------------------------------------------------------------------------------
# Each scenario runs in a subprocess on its own ``ray.cluster_utils.Cluster``.
#
# Why not the session's ``ray.init``: Ray Train V2's PlacementGroupCleaner (a detached actor
# per run) asks the state API whether the controller is alive, and a process with no
# RAY_ADDRESS resolves the state API through /tmp/ray/ray_current_cluster -- the Ray
# instance started *last on this host*. With other Ray instances on the machine (parallel
# test sessions) it asked another cluster, was told "no such actor", and removed the live
# run's placement group, killing a healthy worker group. Pinning RAY_ADDRESS in the job's
# runtime env makes every worker resolve its own cluster.
# ---------------------------------------------------------------------------------------


def _run_scenarios(world: Path, root: Path, timeout: int = 600) -> dict:
    """Both scenarios in a subprocess; returns ``{name: result}`` (run dirs ``root/<name>``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                             "RAY_API_SERVER_ADDRESS")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, str(world), str(root)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, (proc.stdout[-3000:], proc.stderr[-6000:])
    out = json.loads(line[-1][len("RESULT "):])
    print(f"fault scenarios: {time.perf_counter() - t0:.1f}s (incl. cluster start) {out}")
    return out


_CLUSTERS: list = []


def _cluster(n_nodes: int, cpus_per_node: int):
    """A local cluster of ``n_nodes`` and a driver connected to it (only it); returns the
    cluster and its nodes."""
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus_per_node, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=cpus_per_node) for _ in range(n_nodes - 1)]
    cluster.wait_for_nodes()
    _CLUSTERS.append(cluster)
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {
        "OMP_NUM_THREADS": "1", "RAY_ADDRESS": cluster.address}})
    return cluster, [cluster.head_node, *nodes]


KILL_EPOCHS = 4


def _scenario_kill(world: Path, run_dir: Path, nodes: list) -> dict:
    """Two workers on two nodes; SIGKILL rank 1 once Ray Train has registered epoch 1's
    checkpoint (``max_failures=1``).

    3 nodes of 1 CPU each; ``scaling.cpus_per_worker=1`` fits one training worker per node,
    so the two ranks must be on two different nodes, and the third node's CPU runs Ray
    Data. (rsir's ScalingConfig has no placement strategy: with Ray's default PACK, 0.5-CPU
    workers would share a node; with only 2 nodes x 1 CPU Ray Data gets no CPU.)"""
    import torch

    from rsir.train.trainer import fit

    cfg = _cfg(world, f"train.epochs={KILL_EPOCHS}", "train.max_failures=1",
               "scaling.num_workers=2", "scaling.cpus_per_worker=1")
    killed: dict = {}

    def kill_rank1_after_epoch1() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            starts = _starts(run_dir, 1)
            committed = _committed_epoch(run_dir)
            if starts and committed is not None and committed >= 1:
                killed.update(pid=starts[0]["pid"], done_epochs=_epochs(run_dir),
                              committed=committed)
                os.kill(starts[0]["pid"], signal.SIGKILL)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_rank1_after_epoch1, daemon=True)
    watcher.start()
    result = fit(cfg, run_dir)
    watcher.join(timeout=5)
    # The run directory as this fit left it: the resume scenario goes on writing to it.
    return {"killed": killed, "history": result.history,
            "model": {"path": str(result.checkpoint),
                      "epoch": torch.load(result.checkpoint, weights_only=True)["epoch"]},
            "nodes": [n.node_id for n in nodes], "epochs": _epochs(run_dir),
            "starts": {r: _starts(run_dir, r) for r in (0, 1)},
            "checkpoints": _checkpoint_mtimes(run_dir)}


def _checkpoint_mtimes(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(run_dir.glob("checkpoint_epoch_*"))}


def _scenario_resume(world: Path, run_dir: Path, nodes: list) -> dict:
    """fit the kill scenario's run again into its directory with one more epoch."""
    import torch

    from rsir.train.trainer import fit

    result = fit(_cfg(world, f"train.epochs={KILL_EPOCHS + 1}", "train.max_failures=0",
                      "scaling.num_workers=2", "scaling.cpus_per_worker=1"), run_dir)
    return {"history": result.history,
            "selected": {"path": str(result.checkpoint),
                         "epoch": torch.load(result.checkpoint, weights_only=True)["epoch"]},
            "starts": {r: _starts(run_dir, r) for r in (0, 1)},
            "checkpoints": _checkpoint_mtimes(run_dir)}


@pytest.fixture(scope="module")
def scenarios(world, tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("faults")
    return _run_scenarios(world, root), root


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------


def test_two_nodes_and_a_killed_worker_resumes_from_last_checkpoint(scenarios):
    results, root = scenarios
    out, run_dir = results["kill"], root / "kill"
    starts = {int(r): s for r, s in out["starts"].items()}
    # The group trained across two nodes of the cluster.
    node0, node1 = starts[0][0]["node_id"], starts[1][0]["node_id"]
    assert node0 != node1
    assert {node0, node1} <= set(out["nodes"])
    killed = out["killed"]
    assert killed, "the watcher never saw epoch 1's checkpoint"
    assert max(killed["done_epochs"]) < KILL_EPOCHS - 1, "the run ended before the kill"
    # Completed, each epoch once.
    assert [h["epoch"] for h in out["history"]] == list(range(KILL_EPOCHS))
    assert out["epochs"] == list(range(KILL_EPOCHS))
    assert out["model"] == {"path": str(run_dir / "last.pt"), "epoch": KILL_EPOCHS - 1}
    # Rank 1 started twice: fresh, then after the group restart, from a checkpoint.
    s1 = starts[1]
    assert len(s1) == 2 and s1[0]["start_epoch"] == 0 and s1[0]["pid"] == killed["pid"]
    assert s1[1]["pid"] != killed["pid"]
    # The restart resumes after the newest registered checkpoint: the one seen at the kill
    # or a later one (registered after the watcher looked), never past the last epoch run.
    resumed = s1[1]["start_epoch"]
    assert killed["committed"] + 1 <= resumed <= max(killed["done_epochs"]) + 1, (resumed, killed)
    assert [s["start_epoch"] for s in starts[0]] == [0, resumed]


def test_fit_again_continues_epoch_count(scenarios):
    results, root = scenarios
    kill, out, run_dir = results["kill"], results["resume"], root / "kill"
    assert [h["epoch"] for h in out["history"]] == list(range(KILL_EPOCHS + 1))
    # The first epochs were not trained again: the same records (loss, timings), every
    # worker's new start is at the new epoch, and the kept checkpoint was not rewritten.
    assert out["history"][:KILL_EPOCHS] == kill["history"]
    for rank in ("0", "1"):
        new = out["starts"][rank][len(kill["starts"][rank]):]
        assert [s["start_epoch"] for s in new] == [KILL_EPOCHS]
    before, after = kill["checkpoints"], out["checkpoints"]
    last_before = f"checkpoint_epoch_{KILL_EPOCHS - 1:04d}"
    # keep_checkpoints=2 keeps the 2 newest, to resume from.
    assert list(after) == [last_before, f"checkpoint_epoch_{KILL_EPOCHS:04d}"]
    assert after[last_before] == before[last_before]
    # the model the run hands on (train.select: last) is the new epoch's, rewritten by the resumed fit
    assert out["selected"] == {"path": str(run_dir / "last.pt"), "epoch": KILL_EPOCHS}


SCENARIOS = {"kill": _scenario_kill, "resume": _scenario_resume}

if __name__ == "__main__" and len(sys.argv) == 3:
    import ray

    try:
        # 3 nodes of 1 CPU: one training worker per node (cpus_per_worker=1), so the two
        # ranks are on two nodes, and the third node's CPU runs Ray Data.
        _, cluster_nodes = _cluster(3, 1)
        root = Path(sys.argv[2]).resolve()
        # Both scenarios write to one run directory, the second continuing the first.
        result = {name: run(Path(sys.argv[1]), root / "kill", cluster_nodes)
                  for name, run in SCENARIOS.items()}
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        ray.shutdown()
        for c in _CLUSTERS:
            c.shutdown()
