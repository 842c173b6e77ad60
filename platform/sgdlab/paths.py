"""Where sgdlab finds its configs and sweeps.

`conf/` (Hydra config groups: one trial) and `sweeps/` (sets of trials) live at the repository root and are
package data of the installed package: `sgdlab/conf` and `sgdlab/sweeps` are links to them in a checkout and
copies of them in a wheel. `SGDLAB_CONF_DIR` and `SGDLAB_SWEEPS_DIR` (or `sgdlab --sweeps-dir`) replace either,
for tests and for users who keep their own.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]  # a checkout's root (an installed wheel has none: see tracking/store.py)
CONF_DIR = "SGDLAB_CONF_DIR"
SWEEPS_DIR = "SGDLAB_SWEEPS_DIR"


def conf_dir() -> Path:
    return Path(os.environ.get(CONF_DIR, PACKAGE_DIR / "conf")).resolve()


def sweeps_dir() -> Path:
    return Path(os.environ.get(SWEEPS_DIR, PACKAGE_DIR / "sweeps")).resolve()
