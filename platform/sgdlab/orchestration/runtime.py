"""Connecting to Ray: a local head on this machine (dashboard and usage stats off) or a running cluster.

cluster.address null starts a local Ray with cluster.num_cpus CPUs (all by default) on a free port (this
machine's 6379 belongs to Redis); "auto" or "ray://host:10001" joins an existing cluster.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402


def connect(cluster: dict) -> dict[str, float]:
    """Initialize Ray once in this process; returns the cluster's total resources."""
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                      configure_logging=True)
        if cluster["address"]:
            ray.init(address=cluster["address"], **kwargs)
        else:
            ray.init(num_cpus=cluster["num_cpus"] or os.cpu_count(), **kwargs)
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
