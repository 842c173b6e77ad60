"""Where the store is, and retries of transient SQLite locks (no mlflow import: `status` stays fast).

Default store: SQLite `mlflow.db` plus `mlartifacts/` in the working directory; MLFLOW_TRACKING_URI (or
tracking.uri) overrides it, for example with http://host:5000 for a shared server.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import stat
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
# "disk I/O error": SQLite has answered it to reads and writes of a WAL store on this machine while several
# drivers and their workers shared it (cause not found); the same call succeeds again moments later.
TRANSIENT = ("database is locked", "database table is locked", "could not obtain lock", "disk i/o error",
             "written while read")


def resolve_uri(configured: str | None = None) -> str:
    """An explicit tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute: workers
    share it). The command line's value wins over the environment, as in MLflow's own tools."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def retried(call: Callable[[], T], attempts: int = 12) -> T:
    """Run a store call, retrying a transient SQLite lock with jittered exponential backoff (~40 s in all). One
    still transient after the last attempt raises StoreError (one line: what SQLite kept answering, with its
    extended error name where sqlite3 gives it, e.g. SQLITE_IOERR_SHORT_READ)."""
    started = time.monotonic()
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # MlflowException, SQLAlchemy or sqlite3 OperationalError
            if not any(s in str(exc).lower() for s in TRANSIENT):
                raise
            if attempt == attempts - 1:
                cause = exc
                while getattr(cause, "sqlite_errorname", None) is None and cause.__cause__ is not None:
                    cause = cause.__cause__  # SQLAlchemy's wraps sqlite3's
                name = getattr(cause, "sqlite_errorname", None) or getattr(getattr(cause, "orig", None),
                                                                          "sqlite_errorname", "")
                raise StoreError(f"the store kept answering {str(exc).splitlines()[0][:120]!r}"
                                 f"{f' ({name})' if name else ''} through {attempts} tries over "
                                 f"{time.monotonic() - started:.0f} s") from exc
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
    """Raise StoreError when the file at `path` (if any) is not a whole SQLite database: not a regular file,
    another kind of file, or one shorter than its header says (truncated). An empty file is a store not yet
    created. A checkpoint of the write-ahead log writes the header page before the pages that extend the file, so
    a short file is read again for `settle_s`. One still short then, beside a write-ahead log, is truncated only if
    SQLite's own check says so: a live store's missing pages are in its log, and a loaded machine can hold a
    checkpoint for longer. Without a log no checkpoint is under way, and the file alone is the database."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise damaged_store(path, "a directory" if path.is_dir() else "not a regular file")
            with open(path, "rb") as f:
                header = f.read(100)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return
        except OSError as exc:
            raise damaged_store(path, exc.strerror or type(exc).__name__) from None
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


def idle_state(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a store that no connection is writing: no write-ahead log (which SQLite keeps
    while any connection has a WAL store open) and no rollback journal beside it. None for a store in use."""
    if any(path.with_name(f"{path.name}-{side}").exists() for side in ("wal", "journal")):
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the SQLite store at `path` that creates no file beside it. An idle store
    (idle_state) is opened immutable, without the -shm and -wal files a read-only connection would leave; if a
    writer overlapped the read (the store is no longer idle as it was), it raises a transient error for `retried`
    to read again. A store in use is read through its write-ahead log; one in a folder this process cannot write
    (a read-only mount, another user's) is opened immutable too. SQLite's word that the file is damaged raises
    StoreError (one line)."""
    before = idle_state(path)
    immutable = before is not None or not os.access(path.parent, os.W_OK)
    overlapped = sqlite3.OperationalError(f"{path} was written while read")
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro{'&immutable=1' if immutable else ''}", uri=True, timeout=30)
        try:
            yield db
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if before is not None and idle_state(path) != before:
            raise overlapped from exc
        if is_damage(exc):
            raise damaged_store(path, str(exc)) from None
        raise
    if before is not None and idle_state(path) != before:
        raise overlapped


def check_sqlite_integrity(path: Path) -> None:
    """Raise StoreError when SQLite's PRAGMA quick_check finds the idle store at `path` damaged (a page of
    random bytes, say, that the header check cannot see). A store in use by another driver is not checked: a
    check would hold back its checkpoints, and its own reads meet any damage as SQLite errors that name the file.
    About 0.2 s per 100 MB."""
    if idle_state(path) is None:
        return
    try:
        with reading(path) as db:
            verdict = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.OperationalError as exc:
        if "written while read" in str(exc):  # a writer started: the store is in use now
            return
        raise
    if verdict != ["ok"]:
        found = "; ".join(line for text in verdict for line in text.splitlines() if not line.startswith("***"))
        raise damaged_store(path, f"SQLite's quick_check: {found[:160]}")


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


# MLflow's stores that sgdlab records into: SQLite, a tracking server, or a database MLflow reaches with SQLAlchemy.
# (MLflow's file store, a folder of YAML files, is in maintenance mode and not supported.)
STORE_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+", "mysql://", "mysql+")


def check_uri(uri: str) -> None:
    """Raise StoreError for a tracking URI of no store sgdlab records into (STORE_SCHEMES)."""
    if not uri.startswith(STORE_SCHEMES):
        raise StoreError(f"tracking URI {uri!r}: not a store sgdlab records into; use sqlite:////ABSOLUTE/PATH/"
                         "mlflow.db, http(s)://HOST:PORT (an MLflow server) or postgresql://USER@HOST/DATABASE")


def check_database(uri: str, timeout_s: float) -> None:
    """Raise StoreError unless the database at `uri` (postgresql://..., MLflow's tables through SQLAlchemy) takes a
    connection within timeout_s: MLflow itself retries a failed one for about 100 s before its traceback."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    url = make_url(uri)
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(1, math.ceil(timeout_s))})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # the driver's OperationalError, wrapped by SQLAlchemy
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        raise StoreError(f"database {url.render_as_string(hide_password=True)} cannot be used ({reason}); create "
                         "it, start its server, or point MLFLOW_TRACKING_URI at the right store") from None
    finally:
        engine.dispose()


def check_store(uri: str, timeout_s: float) -> None:
    """Raise StoreError when the store at `uri` cannot be used: a URI of no store sgdlab records into, a SQLite
    file that is not a whole database or that SQLite's quick check calls damaged (once per command, before it
    reads or writes), or a tracking server or database that does not answer within timeout_s (tracking.timeout_s)."""
    check_uri(uri)
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_store(path)
        check_sqlite_integrity(path)
        return
    if not uri.startswith(("http://", "https://")):
        check_database(uri, timeout_s)
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:  # it answered (with authentication required, for example)
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreError(f"tracking server {uri} did not answer within {timeout_s:g} s ({reason}); start it "
                         "(make mlflow-server) or point MLFLOW_TRACKING_URI at a running one") from None
