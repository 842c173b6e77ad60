"""A PostgreSQL-backed MLflow server and Ray nodes started by a test on this machine, and stopped by it.

Every process is started by the test in its own session, with its own ports and temp dirs, and stopped by
process id: the whole process tree of what the test started (never `ray stop`, which would stop every Ray
on the machine). Ray processes also carry a token unique to the test in their environment (RAY_AUTH_TOKEN),
which finds any worker that a dying raylet left behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """pid and all of its descendants (collected before anything is killed: orphans get reparented)."""
    tree, todo, found = _children(), [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo += tree.get(p, [])
    return found


def with_env_value(value: str) -> list[int]:
    """Processes whose environment holds this exact string (a token unique to the test)."""
    needle, found = value.encode(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def listening_addresses(port: int) -> set[str]:
    """Addresses of the TCP sockets listening on a port, read from /proc/net/tcp{,6} (nothing is sent)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)  # little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, words))
    return found


def kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM a process we started and its descendants, SIGKILL what is left after grace_s.

    Nothing is sent once the process has been reaped: its pid may belong to someone else by then."""
    if proc.poll() is not None:
        return
    pids = process_tree(proc.pid)
    kill(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    alive = pids + (process_tree(proc.pid) if proc.poll() is None else [])
    kill([pid for pid in alive if Path(f"/proc/{pid}").exists()], signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ------------------------------------------------------------------ MLflow on PostgreSQL

PG_ADMIN = os.environ.get("SGDLAB_TEST_PG_URI", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers at SGDLAB_TEST_PG_URI, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5):
            return None
    except Exception as exc:  # ImportError, OperationalError
        return f"PostgreSQL not reachable at {PG_ADMIN}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"


@contextmanager
def mlflow_server(folder: Path, timeout: float = 120.0):
    """An `mlflow server` on a fresh PostgreSQL database and a free 127.0.0.1 port; yields its URL.

    The database is dropped and the server's process tree stopped afterwards."""
    from sgdlab.tracking.server import drop_database, ensure_database, wait_ready

    server = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    pg_uri = f"{server}/sgdlab_test_{uuid.uuid4().hex[:12]}"
    (port,) = free_ports(1)
    ensure_database(pg_uri)
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "sgdlab.tracking.server", "--backend-store-uri", pg_uri,
                             "--artifacts-destination", str(folder / "artifacts"), "--port", str(port),
                             "--workers", "1"],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout, alive=lambda: proc.poll() is None)
        yield url, pg_uri, proc
    finally:
        stop_tree(proc)
        log.close()
        drop_database(pg_uri)


# ------------------------------------------------------------------ Ray nodes


class RayNode:
    """One `ray start --block` process (a head, or a node joining one), in its own session and temp dir."""

    def __init__(self, name: str, env: dict[str, str], args: list[str], temp_dir: Path, log_dir: Path):
        self.name, self.temp_dir = name, temp_dir
        self.log_path = log_dir / f"ray-{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                      f"--temp-dir={temp_dir}", "--object-store-memory=100000000", *args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_started(self, timeout: float = 90.0) -> None:
        """Until `ray start` reports the node up (registered with the head's GCS)."""
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray node {self.name} exited ({self.proc.returncode}): see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray node {self.name} not started after {timeout:.0f} s: see {self.log_path}")
            time.sleep(0.5)

    def node_id(self, timeout: float = 60.0) -> str:
        """The Ray node id, read from this node's raylet log once it has started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for log in self.temp_dir.glob("session_*/logs/raylet.out"):
                found = re.search(r"node_id=([0-9a-f]{56})", log.read_text(errors="replace"))
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray node {self.name} exited: {self.proc.returncode}")
            time.sleep(0.5)
        raise TimeoutError(f"ray node {self.name}: no node id after {timeout:.0f} s")

    def crash(self) -> list[int]:
        """SIGKILL the node's whole process tree at once (raylet, agents, workers): a lost machine."""
        pids = process_tree(self.proc.pid)
        kill(pids)
        self.proc.wait(timeout=10)
        return pids

    def stop(self) -> None:
        stop_tree(self.proc)
        self.log.close()


@contextmanager
def ray_cluster(folder: Path, head_cpus: int = 1, node_cpus: int = 1):
    """A Ray head and a second Ray node on this machine, each with its own CPU count, ports and temp dir.

    Yields (env for drivers, GCS address, Ray Client address, head, second node). Token authentication is on,
    with a token of this cluster's own, passed through the environment."""
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, client, head_agent, node_agent = free_ports(4)
    tmp = Path(tempfile.mkdtemp(prefix="sgray", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    head = node = None
    try:
        head = RayNode("head", env, ["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                                     f"--dashboard-agent-listen-port={head_agent}", f"--num-cpus={head_cpus}",
                                     "--include-dashboard=false"], tmp / "head", folder)
        node = RayNode("second", env, [f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={node_agent}",
                                       f"--num-cpus={node_cpus}"], tmp / "second", folder)
        yield env, f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}", head, node
    finally:
        for n in (node, head):
            if n is not None:
                n.stop()
        kill(with_env_value(token))  # workers a dead raylet left behind
        shutil.rmtree(tmp, ignore_errors=True)
