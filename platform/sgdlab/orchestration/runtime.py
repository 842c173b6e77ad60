"""Connecting to Ray: a local head on this machine (dashboard and usage stats off) or a running cluster.

cluster.address null starts a local Ray with cluster.num_cpus CPUs (all by default) on a free port (this
machine's 6379 belongs to Redis); "auto" or "ray://host:10001" joins an existing cluster. The Ray dashboard
stays off unless cluster.dashboard=true (it then binds to 127.0.0.1).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402


def connect(cluster: dict) -> dict[str, float]:
    """Initialize Ray once in this process; returns the cluster's total resources."""
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=cluster["dashboard"], logging_level="WARNING", log_to_driver=False)
        if cluster["dashboard"]:
            kwargs["dashboard_host"] = "127.0.0.1"
        if cluster["address"]:
            ray.init(address=cluster["address"], **kwargs)
        else:
            ray.init(num_cpus=cluster["num_cpus"] or os.cpu_count(), **kwargs)
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
