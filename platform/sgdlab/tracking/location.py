"""Where the store is, and retries of transient SQLite locks (no mlflow import: `status` stays fast).

Default store: SQLite `mlflow.db` plus `mlartifacts/` in the working directory; MLFLOW_TRACKING_URI (or
tracking.uri) overrides it, for example with http://host:5000 for a shared server.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
TRANSIENT = ("database is locked", "database table is locked", "could not obtain lock")


def resolve_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else tracking.uri, else sqlite:///<cwd>/mlflow.db (absolute: workers share it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
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
