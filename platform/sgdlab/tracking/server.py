"""A shared MLflow tracking server backed by PostgreSQL, for sweeps that run on several machines.

`python -m sgdlab.tracking.server` (what `make mlflow-server` runs) creates the PostgreSQL database if it is
missing, then replaces itself with `mlflow server --backend-store-uri postgresql://... --artifacts-destination
...`, bound to 127.0.0.1 unless --host says otherwise. Clients then use MLFLOW_TRACKING_URI=http://host:port;
artifacts (configs, checkpoints, tracebacks) are uploaded through the server, so workers need no shared disk.

Defaults come from the environment: SGDLAB_PG_URI (postgresql+psycopg://postgres@127.0.0.1:5432/sgdlab),
SGDLAB_ARTIFACTS (./mlartifacts/server), SGDLAB_MLFLOW_HOST (127.0.0.1), SGDLAB_MLFLOW_PORT (5000).

An MLflow server has no authentication of its own: anyone who reaches it can read and change every record. On
an address other than loopback it therefore starts only with MLflow's basic-auth app (--auth basic; users in
./mlflow-auth.db, admin's generated password printed at the first start: tracking/dashboard_auth.py) or when
--insecure-no-auth says that the network is trusted (a private container network, as in docker/compose.yaml).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PG_URI = "postgresql+psycopg://postgres@127.0.0.1:5432/sgdlab"


def database_name(pg_uri: str) -> str:
    name = urlsplit(pg_uri).path.lstrip("/")
    if not name or "/" in name:
        raise ValueError(f"{pg_uri!r}: expected postgresql://user@host:port/DATABASE")
    return name


def redacted(pg_uri: str) -> str:
    """The URI without its password, for messages."""
    parts = urlsplit(pg_uri)
    if parts.password is None:
        return pg_uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _maintenance_uri(pg_uri: str) -> str:
    """The same server and user, database `postgres` (where CREATE/DROP DATABASE are issued)."""
    parts = urlsplit(pg_uri)
    return urlunsplit((parts.scheme.split("+")[0], parts.netloc, "/postgres", parts.query, ""))


def _admin(pg_uri: str, statement: str, name: str) -> bool:
    """Run CREATE/DROP DATABASE (autocommit); False if the database already was in that state."""
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(_maintenance_uri(pg_uri), autocommit=True, connect_timeout=10) as conn:
        try:
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))
        except (errors.DuplicateDatabase, errors.InvalidCatalogName):
            return False
    return True


def ensure_database(pg_uri: str) -> bool:
    """Create the database of a postgresql:// URI if it does not exist; True if it was created."""
    return _admin(pg_uri, "CREATE DATABASE {}", database_name(pg_uri))


def drop_database(pg_uri: str) -> bool:
    """Drop the database of a postgresql:// URI (closing its connections); True if it existed."""
    return _admin(pg_uri, "DROP DATABASE IF EXISTS {} WITH (FORCE)", database_name(pg_uri))


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps a server on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def why_not_safe(host: str, auth: str, insecure: bool) -> str | None:
    """Why the server must not start on `host` with this authentication (None when it may)."""
    if auth == "basic" and importlib.util.find_spec("flask_wtf") is None:
        return "--auth basic needs MLflow's auth extra: pip install 'mlflow[auth]'"
    if is_loopback(host) or auth == "basic" or insecure:
        return None
    return (f"--host {host} would serve every record without authentication beyond this machine; use --auth basic "
            "(MLflow's basic-auth app) or, on a trusted private network, --insecure-no-auth")


def server_command(pg_uri: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 2,
                   allowed_hosts: str | None = None, auth: str = "none") -> list[str]:
    """The `mlflow server` command line (run with this interpreter, so the venv's mlflow and psycopg)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg_uri,
           "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    if auth == "basic":
        cmd += ["--app-name", "basic-auth"]
    return cmd


def wait_ready(url: str, timeout: float = 90.0, alive=lambda: True) -> None:
    """Poll GET {url}/health until the server answers 200; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"MLflow server for {url} exited before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"MLflow server at {url} not ready after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m sgdlab.tracking.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-store-uri", default=env.get("SGDLAB_PG_URI", DEFAULT_PG_URI))
    parser.add_argument("--artifacts-destination",
                        default=env.get("SGDLAB_ARTIFACTS", str(Path.cwd() / "mlartifacts" / "server")))
    parser.add_argument("--host", default=env.get("SGDLAB_MLFLOW_HOST", "127.0.0.1"),
                        help="interface to bind (127.0.0.1: this machine only; 0.0.0.0 for cluster workers)")
    parser.add_argument("--port", type=int, default=int(env.get("SGDLAB_MLFLOW_PORT", "5000")))
    parser.add_argument("--workers", type=int, default=int(env.get("SGDLAB_MLFLOW_WORKERS", "2")))
    parser.add_argument("--allowed-hosts", default=env.get("SGDLAB_MLFLOW_ALLOWED_HOSTS"),
                        help="Host headers accepted (mlflow's default: localhost and private addresses)")
    parser.add_argument("--auth", choices=("none", "basic"), default=env.get("SGDLAB_MLFLOW_AUTH", "none"),
                        help="basic: MLflow's basic-auth app (users and passwords; needs mlflow[auth])")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="allow a non-loopback --host without authentication (a trusted private network)")
    args = parser.parse_args(argv)
    unsafe = why_not_safe(args.host, args.auth, args.insecure_no_auth)
    if unsafe:
        print(f"sgdlab: error: {unsafe}", file=sys.stderr)
        raise SystemExit(2)
    if not args.backend_store_uri.startswith("postgresql"):
        parser.error(f"--backend-store-uri must be postgresql://...; got {args.backend_store_uri!r}")
    try:
        created = ensure_database(args.backend_store_uri)
    except Exception as exc:  # psycopg.OperationalError: server down, bad credentials
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sgdlab: error: cannot reach PostgreSQL at {redacted(args.backend_store_uri)}: {first}", file=sys.stderr)
        raise SystemExit(2)
    artifacts = args.artifacts_destination
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        artifacts = str(Path(artifacts).resolve())
    cmd = server_command(args.backend_store_uri, artifacts, args.host, args.port, args.workers, args.allowed_hosts,
                         args.auth)
    if args.auth == "basic":
        from sgdlab.tracking.dashboard_auth import basic_auth

        env, line = basic_auth(Path.cwd())
        os.environ.update(env)
        print(line, file=sys.stderr, flush=True)
    print(f"{'created' if created else 'using'} database {database_name(args.backend_store_uri)}; MLflow server on "
          f"http://{args.host}:{args.port} (artifacts in {artifacts}).\n"
          f"Point sgdlab at it with: export MLFLOW_TRACKING_URI=http://{args.host}:{args.port}", file=sys.stderr,
          flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
