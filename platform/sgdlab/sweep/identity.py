"""Trial identity: a stable hash of what a trial computes.

trial_id = first 12 hex digits of SHA-256 over the canonical JSON (sorted keys, Python float repr) of the
resolved config without the non-identity groups and keys (config.schema: NON_IDENTITY_GROUPS,
NON_IDENTITY_KEYS) and without the keys of IDENTITY_WHEN_SET that are null. The same config gives the same id in
any process on any machine; running on another cluster or with other resources does not.
"""

from __future__ import annotations

import hashlib
import json

from sgdlab.config.schema import IDENTITY_WHEN_SET, NON_IDENTITY_GROUPS, NON_IDENTITY_KEYS


def identity_config(config: dict) -> dict:
    out = {k: v for k, v in config.items() if k not in NON_IDENTITY_GROUPS}
    dropped = [*NON_IDENTITY_KEYS, *((g, k) for g, k in IDENTITY_WHEN_SET if out.get(g, {}).get(k) is None)]
    for group, key in dropped:
        if key in out.get(group, {}):
            out[group] = {k: v for k, v in out[group].items() if k != key}
    return out


def trial_id(config: dict) -> str:
    canonical = json.dumps(identity_config(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


PROBE_MEASURE_KEYS = ("matrix", "n_examples", "top_k", "tol", "trace_samples", "slq_starts", "slq_steps",
                      "batch_sizes", "n_batches", "per_layer", "dtype", "seed")


def probe_id(config: dict, trial: str) -> str:
    """Identity of an end probe: its trial and what it measures (not when or on which resources). probe.noise
    counts only when set, so that the ids of probes recorded before it existed stay."""
    measured = {k: config["probe"][k] for k in PROBE_MEASURE_KEYS}
    if config["probe"].get("noise"):
        measured["noise"] = True
    canonical = json.dumps({"trial": trial, "probe": measured}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
