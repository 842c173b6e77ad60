"""Where the store is, and retries of transient SQLite locks (no mlflow import: `status` stays fast).

Default store: SQLite `mlflow.db` plus `mlartifacts/` in the working directory; MLFLOW_TRACKING_URI (or
tracking.uri) overrides it, for example with http://host:5000 for a shared server.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
# "disk I/O error": SQLite has answered it to reads and writes of a WAL store on this machine while several
# drivers and their workers shared it (cause not found); the same call succeeds again moments later.
TRANSIENT = ("database is locked", "database table is locked", "could not obtain lock", "disk i/o error")


def resolve_uri(configured: str | None = None) -> str:
    """An explicit tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute: workers
    share it). The command line's value wins over the environment, as in MLflow's own tools."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def retried(call: Callable[[], T], attempts: int = 12) -> T:
    """Run a store call, retrying a transient SQLite lock with jittered exponential backoff (~40 s in all)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # MlflowException, SQLAlchemy or sqlite3 OperationalError
            if attempt == attempts - 1 or not any(s in str(exc).lower() for s in TRANSIENT):
                raise
            time.sleep(min(8.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class StoreError(Exception):
    """The store cannot be used as it is; the message is one line that names it and says what to do."""


SQLITE_HEADER = b"SQLite format 3\x00"
DAMAGED = ("file is not a database", "database disk image is malformed", "malformed database schema")


def damaged_store(path: Path, why: str) -> StoreError:
    return StoreError(f"{path} is not a readable MLflow store ({why}); move it away (the next `sgdlab sweep` "
                      "creates a new one) or point MLFLOW_TRACKING_URI at the right store")


def check_sqlite_store(path: Path, settle_s: float = 2.0) -> None:
    """Raise StoreError when the file at `path` (if any) is not a whole SQLite database: another kind of file,
    or one shorter than its header says (truncated). An empty file is a store not yet created. A checkpoint of
    the write-ahead log writes the header page before the pages that extend the file, so a short file is read
    again for `settle_s`. One still short then, beside a write-ahead log, is truncated only if SQLite's own check
    says so: a live store's missing pages are in its log, and a loaded machine can hold a checkpoint for longer.
    Without a log no checkpoint is under way, and the file alone is the database."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            with open(path, "rb") as f:
                header = f.read(100)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return
        if not header:
            return
        if len(header) < 100 or header[:16] != SQLITE_HEADER:
            raise damaged_store(path, "not an SQLite database")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages, valid_for, changes = (int.from_bytes(header[a:a + 4], "big") for a in (28, 92, 24))
        if not (pages and valid_for == changes and size < page_size * pages):
            return
        if time.monotonic() > deadline:
            if path.with_name(f"{path.name}-wal").exists() and sqlite_says_whole(path):  # a checkpoint under way
                return
            raise damaged_store(path, f"truncated: {size} of {page_size * pages} bytes")
        time.sleep(0.05)


def sqlite_says_whole(path: Path) -> bool:
    """SQLite's verdict on the database at `path`, read with its write-ahead log: PRAGMA quick_check through a
    read-only connection answers 'ok'."""
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False


def is_damage(exc: BaseException) -> bool:
    """Whether a store error (sqlite3 or SQLAlchemy around it) says the database file is damaged."""
    return any(phrase in str(exc) for phrase in DAMAGED)


def check_store(uri: str, timeout_s: float) -> None:
    """Raise StoreError when the store at `uri` cannot be used: a SQLite file that is not a whole database, or
    a tracking server that does not answer within timeout_s (tracking.timeout_s)."""
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_store(path)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:  # it answered (with authentication required, for example)
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreError(f"tracking server {uri} did not answer within {timeout_s:g} s ({reason}); start it "
                         "(make mlflow-server) or point MLFLOW_TRACKING_URI at a running one") from None
