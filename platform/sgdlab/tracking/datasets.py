"""A trial's data set as an MLflow dataset input, which fills the UI's Dataset column and its dataset filter.

The data set is what the `data` group draws, without the batch size (how it is sampled, not what it is): its name
is the option (`digits_parity`, ...) and its digest the first 8 hex digits of SHA-256 over the canonical JSON of
that part of the config, so that two trials share a dataset record exactly when they train on the same points.
The record's source is that config (source type `code`: the points are generated or loaded by sgdlab's code), its
profile the numbers of training and test points asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

SOURCE_TYPE = "code"
CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag that says what a run used the data set for
CONTEXT = "train"


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    digest: str
    source: str  # JSON: the data config without the batch size
    profile: str  # JSON: {"n_train": P, "n_test": ...}


def dataset_record(config: dict) -> DatasetRecord:
    """The dataset input of a trial config (module docstring)."""
    data = {k: v for k, v in config["data"].items() if k != "batch_size"}
    source = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return DatasetRecord(name=str(data["name"]), digest=hashlib.sha256(source.encode()).hexdigest()[:8],
                         source=source, profile=json.dumps({"n_train": data.get("n_train"),
                                                            "n_test": data.get("n_test")}))
