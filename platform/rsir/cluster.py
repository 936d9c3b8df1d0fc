"""Connecting to Ray (glue): the one place the CLI and jobs call ``ray.init``."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, env_vars: dict[str, str] | None = None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``, as in a submitted job), else start Ray
    locally; True when this call started a local instance (it ends with this process).

    Only a local start sets the runtime environment (one torch thread per worker, plus
    ``env_vars``): a submitted job or a joined cluster already runs in the environment it
    was given (the k8s manifests set the serving variables on the cluster's containers).
    """
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return False
    # address="local": a new instance even when `ray start` runs one on this host (that
    # one is joined with --address), so the instance is this process's own.
    ray.init(address="local", runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", **(env_vars or {})}})
    return True
