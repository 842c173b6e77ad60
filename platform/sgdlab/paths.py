"""Where sgdlab finds its configs and sweeps.

The repository root holds `conf/` (Hydra config groups: one trial) and `sweeps/` (sets of trials).
`SGDLAB_CONF_DIR` and `SGDLAB_SWEEPS_DIR` override either, for tests and for users who keep their own.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    return Path(os.environ.get("SGDLAB_CONF_DIR", REPO_ROOT / "conf")).resolve()


def sweeps_dir() -> Path:
    return Path(os.environ.get("SGDLAB_SWEEPS_DIR", REPO_ROOT / "sweeps")).resolve()
