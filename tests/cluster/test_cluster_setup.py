"""The pieces of a cluster setup that need no cluster: the MLflow server command, the PostgreSQL database it
creates, the runtime environment that ships sgdlab to Ray workers, the node's own tracking URI, docker/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid

import pytest
import yaml

from conftest import REPO

from cluster_helpers import PG_ADMIN, postgres_reachable

COMPOSE = REPO / "docker" / "compose.yaml"
GPU = REPO / "docker" / "compose.gpu.yaml"


def test_server_command_binds_loopback_and_uses_postgres(tmp_path):
    from sgdlab.tracking.server import DEFAULT_PG_URI, database_name, redacted, server_command

    cmd = server_command(DEFAULT_PG_URI, str(tmp_path))
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql")
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path)
    assert database_name("postgresql+psycopg://u:secret@db:5432/runs") == "runs"
    assert redacted("postgresql://u:secret@db:5432/runs") == "postgresql://u:***@db:5432/runs"
    with pytest.raises(ValueError):
        database_name("postgresql://db:5432/")


def test_server_refuses_a_non_postgres_store_and_an_unreachable_one(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "sgdlab.tracking.server", *args], cwd=tmp_path,
                                       capture_output=True, text=True, timeout=60)
    out = run("--backend-store-uri", "sqlite:///x.db")
    assert out.returncode == 2 and "must be postgresql" in out.stderr
    out = run("--backend-store-uri", "postgresql+psycopg://nobody:pw@127.0.0.1:1/sgdlab")
    assert out.returncode == 2 and "cannot reach PostgreSQL at postgresql+psycopg://nobody:***@127.0.0.1:1" in out.stderr
    assert "pw" not in out.stderr.replace("psycopg", "")


def test_server_creates_its_database_once_and_drops_it():
    reason = postgres_reachable()
    if reason:
        pytest.fail(f"{reason} (.ci/run starts it)")
    import psycopg

    from sgdlab.tracking.server import drop_database, ensure_database

    name = f"sgdlab_test_{uuid.uuid4().hex[:12]}"
    uri = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/" + name

    def exists() -> bool:
        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    try:
        assert ensure_database(uri) is True and exists()
        assert ensure_database(uri) is False and exists()
    finally:
        drop_database(uri)
    assert not exists()


def test_joining_a_cluster_ships_the_package_to_the_workers(monkeypatch):
    import sgdlab
    from sgdlab.orchestration.runtime import SHIP_PACKAGE, runtime_env

    assert runtime_env({"address": None}) is None  # a local Ray uses the installed package
    env = runtime_env({"address": "ray://head:10001"})
    assert env["py_modules"] == [os.path.dirname(os.path.realpath(sgdlab.__file__))]
    assert "__pycache__" in env["excludes"]
    monkeypatch.setenv(SHIP_PACKAGE, "0")
    assert runtime_env({"address": "auto"}) is None


def test_worker_uses_its_nodes_tracking_uri_and_records_its_node(monkeypatch):
    from sgdlab.orchestration import tasks
    from sgdlab.tracking.store import SweepHandle

    handle = SweepHandle("http://127.0.0.1:5000", "1", "run", "s", run_tags={"sgdlab.git_sha": "abc"})
    monkeypatch.setattr(tasks, "node_label", lambda: "host/10.0.0.2/ab12")
    monkeypatch.delenv(tasks.WORKER_TRACKING_URI, raising=False)
    seen = tasks.on_this_node(handle)
    assert seen.uri == handle.uri
    assert seen.run_tags == {"sgdlab.git_sha": "abc", "sgdlab.node": "host/10.0.0.2/ab12"}
    monkeypatch.setenv(tasks.WORKER_TRACKING_URI, "http://mlflow:5000")
    assert tasks.on_this_node(handle).uri == "http://mlflow:5000"


def test_makefile_starts_the_server_on_postgres_bound_to_loopback():
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "mlflow-server"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "SGDLAB_PG_URI": ""})
    assert out.returncode == 0, out.stderr
    assert "-m sgdlab.tracking.server" in out.stdout
    assert "--backend-store-uri 'postgresql+psycopg://postgres@127.0.0.1:5432/sgdlab'" in out.stdout
    assert "--host 127.0.0.1" in out.stdout


def test_dockerfile_is_cpu_by_default_with_a_cuda_base_by_build_argument():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.1[12]", text, re.M)
    assert "--index-url \"${TORCH_INDEX_URL}\"" in text and "whl/cpu" in text
    pinned = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
              if d.startswith("torch==")]
    assert f"pip install {pinned[0]}" in text  # the image's torch is the project's
    gpu = yaml.safe_load(GPU.read_text())["services"]["ray-worker"]
    assert gpu["build"]["args"]["BASE_IMAGE"].startswith("${SGDLAB_CUDA_BASE_IMAGE:-nvidia/cuda:")
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def compose_config(*files, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["docker-compose"] + [a for f in files for a in ("-f", str(f))] + ["config"]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (Debian package docker-compose; .ci/run installs it)")
def test_compose_file_is_valid_and_wires_postgres_mlflow_and_ray():
    out = compose_config(COMPOSE, env={"RAY_AUTH_TOKEN": "t0ken"})
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    mlflow = services["mlflow"]
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg://mlflow:") and a.endswith("@postgres:5432/mlflow")
               for a in mlflow["command"])
    assert "--artifacts-destination=/mlartifacts" in mlflow["command"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--head" in head["command"] and "--ray-client-server-port=10001" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    assert "container_name" not in worker and "ports" not in worker  # scalable: --scale ray-worker=N
    for service in (head, worker):
        assert service["environment"]["SGDLAB_WORKER_TRACKING_URI"] == "http://mlflow:5000"
        assert service["environment"]["RAY_AUTH_TOKEN"] == "t0ken"
    published = [str(p.get("host_ip", "")) if isinstance(p, dict) else str(p)
                 for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1") for p in published), published  # this machine only
    assert compose_config(COMPOSE, GPU, env={"RAY_AUTH_TOKEN": "t0ken"}).returncode == 0

    unset = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    missing = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], cwd=REPO, capture_output=True,
                             text=True, timeout=120, env=unset)
    assert missing.returncode != 0 and "export RAY_AUTH_TOKEN" in missing.stderr
