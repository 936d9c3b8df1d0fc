"""Connecting to Ray (glue): the one place the CLI and jobs call ``ray.init``."""

from __future__ import annotations

import os


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``, as in a submitted job), else start Ray locally.

    Only a local start sets the runtime environment (one torch thread per worker): a
    submitted job already runs in the environment it was submitted with.
    """
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
