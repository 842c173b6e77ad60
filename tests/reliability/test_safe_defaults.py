"""Safe defaults: servers on 127.0.0.1, Ray dashboard off, checkpoints without code, no shell."""

import io
import os
import pickle
import socket
import subprocess
import time
import urllib.request

import pytest

from sgdlab.training import checkpoint

from conftest import REPO, SGDLAB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def other_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (a server bound to 127.0.0.1 must not answer there)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except socket.gaierror:
        return []
    return sorted({i[4][0] for i in infos if not i[4][0].startswith("127.")})


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except OSError:
        return True


@pytest.mark.slow
def test_ui_serves_the_store_on_loopback_only(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    server = subprocess.Popen([*SGDLAB, "ui", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(1)
        assert body is not None, "the dashboard never answered on 127.0.0.1"
        for address in other_addresses():
            assert refused(address, port), f"dashboard reachable on {address}"
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
