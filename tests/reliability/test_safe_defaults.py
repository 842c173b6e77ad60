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
