"""Connecting to Ray: a local head on this machine (dashboard and usage stats off) or a running cluster.

cluster.address null joins the cluster named by RAY_ADDRESS if that is set (as ray.init does; `ray job submit`
sets it), else starts a local Ray with cluster.num_cpus CPUs (all by default) on a free port (this machine's
6379 belongs to Redis); "auto", "host:port" (a head's GCS) or "ray://host:10001" (Ray Client) joins an
existing cluster. The Ray dashboard stays off unless cluster.dashboard=true (it then binds to 127.0.0.1).

sgdlab turns on Ray's token authentication itself (RAY_AUTH_MODE=token; a local Ray keeps its token in
~/.ray/auth_token) unless RAY_AUTH_MODE is set: every gRPC call to the Ray it starts or joins must carry the token.
The GCS, raylet and worker gRPC servers of a local Ray listen on all interfaces, and its runtime-env agent on
the node address (Ray has no setting that binds them to loopback): the token is what guards them.

Joining a cluster, the driver ships this checkout's `sgdlab` package to the workers with the job's runtime
environment (py_modules), so that they run the same code as the driver even where the image holds an older
sgdlab; the workers' image must hold the dependencies (torch, mlflow, ...). SGDLAB_SHIP_PACKAGE=0 turns the
shipping off, for clusters whose image already has the right sgdlab installed.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402


SHIP_PACKAGE = "SGDLAB_SHIP_PACKAGE"
AUTH_MODE = "RAY_AUTH_MODE"


def address(cluster: dict) -> str | None:
    """The cluster to join: cluster.address, else RAY_ADDRESS; None starts a local Ray."""
    return cluster["address"] or os.environ.get("RAY_ADDRESS") or None


def runtime_env(cluster: dict) -> dict | None:
    """The job's runtime environment: when joining a cluster, this sgdlab package as a py_module."""
    if not address(cluster) or os.environ.get(SHIP_PACKAGE, "1") == "0":
        return None
    import sgdlab

    return {"py_modules": [str(Path(sgdlab.__file__).resolve().parent)], "excludes": ["__pycache__", "*.pyc"]}


def token_authentication() -> None:
    """RAY_AUTH_MODE=token for this process and the Ray processes it starts, unless the user set RAY_AUTH_MODE;
    Ray's cached configuration is refreshed as Ray's own enabling path does (Ray reads the mode at import)."""
    if os.environ.get(AUTH_MODE) is None:
        os.environ[AUTH_MODE] = "token"
        from ray._raylet import Config

        Config.initialize("")


def connect(cluster: dict) -> dict[str, float]:
    """Initialize Ray once in this process; returns the cluster's total resources."""
    if not ray.is_initialized():
        token_authentication()
        kwargs = dict(include_dashboard=cluster["dashboard"], logging_level="WARNING", log_to_driver=False)
        if cluster["dashboard"]:
            kwargs["dashboard_host"] = "127.0.0.1"
        if address(cluster):
            ray.init(address=address(cluster), runtime_env=runtime_env(cluster), **kwargs)
        else:
            ray.init(num_cpus=cluster["num_cpus"] or os.cpu_count(), **kwargs)
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
