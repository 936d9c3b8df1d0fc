"""Shared test fixtures: paths, the real shared data, and one Ray instance per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real annotation files and images); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (a user's checkout has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting Ray costs ~10 s).

    A head node of our own, and its address pinned in every worker's environment: Ray
    Train's placement-group cleaner looks its controller up through ``RAY_ADDRESS`` (or
    else the newest Ray instance on the host, which may be another test's cluster).
    """
    import ray
    from ray.cluster_utils import Cluster

    from rsir.serve.config import ServeConfig
    from rsir.serve.fixture import local_serve_env

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    # Serve runs behind the front `rsir serve` starts by default (tests/test_serve.py).
    env = {"OMP_NUM_THREADS": "1", "RAY_ADDRESS": cluster.address,
           **local_serve_env(ServeConfig.proxy)}
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()
    cluster.shutdown()
