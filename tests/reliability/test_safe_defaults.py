"""Safe defaults: servers on 127.0.0.1, Ray dashboard off, checkpoints without code, no shell."""

import io
import os
import pickle
import socket
import sys
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from sgdlab.training import checkpoint

from conftest import REPO, SGDLAB, free_port


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on a port, from /proc/net/tcp (nothing is sent)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(address)
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                                           raw if len(raw) == 16 else raw[::-1]))
    return found


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except OSError:
        return True


@pytest.mark.slow
def a_store(folder) -> str:
    """A store with one sweep in `folder` (`sgdlab ui` serves an existing store only); its experiment id."""
    from sgdlab.tracking.store import open_sweep

    return open_sweep(f"sqlite:///{folder / 'mlflow.db'}", "tiny").experiment_id


def test_ui_serves_the_store_on_loopback_only(tmp_path):
    """...and prints the URL of the newest sweep's runs in MLflow's training view (tests/cli/test_ui.py has the
    rest of `sgdlab ui`)."""
    experiment = a_store(tmp_path)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    server = subprocess.Popen([*SGDLAB, "ui", "--port", str(port)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert server.stderr.readline().rstrip().endswith(
            f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(1)
        assert body is not None, "the dashboard never answered on 127.0.0.1"
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.slow
def test_ray_dashboard_is_off_by_default():
    from sgdlab.orchestration.runtime import connect, shutdown

    connect({"address": None, "num_cpus": 1, "dashboard": False})
    try:
        assert refused("127.0.0.1", 8265)
    finally:
        shutdown()


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_without_running_code():
    data = checkpoint.to_bytes({"steps": 3}, {"seed": 0})
    assert checkpoint.from_bytes(data) == {"state": {"steps": 3}, "config": {"seed": 0}}
    evil = io.BytesIO()
    pickle.dump({"state": Boom()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.from_bytes(evil.getvalue())


def test_no_shell_anywhere_in_the_package():
    for path in (REPO / "platform" / "sgdlab").rglob("*.py"):
        text = path.read_text()
        for forbidden in ("shell=True", "os.system(", "os.popen(", "subprocess.getoutput"):
            assert forbidden not in text, f"{forbidden} in {path}"


RAY_AUTH_PROBE = """
import grpc
import ray
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from sgdlab.orchestration.runtime import connect, shutdown

connect({"address": None, "num_cpus": 1, "dashboard": False})
try:
    gcs = ray._private.worker.global_worker.node.gcs_address
    stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(gcs))
    try:
        stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=20)
        print("accepted")
    except grpc.RpcError as exc:
        print(exc.code().name)
    print(gcs.rsplit(":", 1)[1], flush=True)
    input()  # the test reads the GCS's listening address meanwhile
finally:
    shutdown()
"""


@pytest.mark.slow
def test_sgdlab_turns_on_ray_token_authentication_itself():
    """With RAY_AUTH_MODE unset (Ray's default could change), a local Ray started by sgdlab refuses a gRPC call
    that carries no token, and Ray has nothing to warn about."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    probe = subprocess.Popen([sys.executable, "-c", RAY_AUTH_PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    answer, port = probe.stdout.readline().strip(), probe.stdout.readline().strip()
    # README, Reliability: the GCS listens on every interface (Ray cannot bind it to loopback); the token guards it
    bound = listening_addresses(int(port)) if port else set()
    _, stderr = probe.communicate("\n", timeout=120)
    assert probe.returncode == 0, stderr
    assert answer == "UNAUTHENTICATED"
    assert bound and bound <= {"::", "0.0.0.0"}, bound
    assert "Token authentication is enabled" not in stderr


def test_mlflow_server_beyond_loopback_needs_authentication_or_an_explicit_flag(tmp_path):
    """Refused before PostgreSQL is touched: one line, exit 2."""
    for host in ("0.0.0.0", "192.0.2.10", "myhost"):
        out = subprocess.run([sys.executable, "-m", "sgdlab.tracking.server", "--host", host,
                              "--backend-store-uri", "postgresql://nobody@127.0.0.1:1/none"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            f"sgdlab: error: --host {host} would serve every record without authentication beyond this machine; "
            "use --auth basic (MLflow's basic-auth app) or, on a trusted private network, --insecure-no-auth"]
    from sgdlab.tracking.server import why_not_safe

    assert why_not_safe("127.0.0.1", "none", False) is None and why_not_safe("::1", "none", False) is None
    assert why_not_safe("0.0.0.0", "none", True) is None


@pytest.mark.slow
def test_ui_beyond_loopback_warns(tmp_path):
    a_store(tmp_path)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    ui = subprocess.Popen([*SGDLAB, "ui", "--host", "0.0.0.0", "--port", str(port)], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = ui.stderr.readline()
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)
    assert first.startswith("warning: --host 0.0.0.0 serves the dashboard, which has no authentication, to every")


@pytest.mark.slow
def test_ui_with_basic_auth_refuses_requests_without_a_password(tmp_path):
    """Without authentication any local user could delete a FINISHED run through the dashboard (and `status` then
    showed the trial pending). `sgdlab ui --auth basic` prints admin's generated password once; a request without
    it is refused (401) and the run stays FINISHED; with it the API answers; a later start keeps the users."""
    import base64
    import json
    import re

    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.writer import TrialRun

    run = TrialRun.start(open_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny"), "t0", {"seed": 0}, attempt=1,
                         run_name="t0")
    run.finish("converged")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}

    def start() -> subprocess.Popen:
        return subprocess.Popen([*SGDLAB, "ui", "--auth", "basic", "--port", str(port)], cwd=tmp_path, env=env,
                                text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def call(path: str, password: str | None = None, body: dict | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        if password:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code

    server = start()
    try:
        server.stderr.readline()  # the URL
        line = server.stderr.readline().strip()
        password = re.fullmatch(r"sign in as admin, password (\S+) \(printed this once; .*", line)[1]
        deadline = time.time() + 90
        while refused("127.0.0.1", port) and time.time() < deadline:
            time.sleep(1)
        time.sleep(2)  # the app's start-up after the port opens
        get_run = f"/api/2.0/mlflow/runs/get?run_id={run.run_id}"
        assert call("/api/2.0/mlflow/runs/delete", body={"run_id": run.run_id}) == 401
        assert call(get_run) == 401
        assert call(get_run, password) == 200
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    from mlflow.tracking import MlflowClient

    stored = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run.run_id)
    assert (stored.info.status, stored.info.lifecycle_stage) == ("FINISHED", "active")
    again = start()
    try:
        again.stderr.readline()
        assert again.stderr.readline().startswith(f"sign in as a user of {tmp_path / 'mlflow-auth.db'} (admin's "
                                                  "password was printed when that file was made")
    finally:
        os.killpg(again.pid, 15)
        again.wait(timeout=30)
