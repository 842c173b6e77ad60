"""What a record store writes (tracking/record_store.py): new runs, updates of runs, and the store's interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sgdlab.tracking.datasets import DatasetRecord


@dataclass
class NewRun:
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    dataset: DatasetRecord | None = None  # logged as the run's dataset input, with the context `context`
    context: str = ""


@dataclass
class RunUpdate:
    run_id: str
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, timestamp (ms), step
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None  # FINISHED, FAILED or KILLED ends the run (end_time: now)


class RecordStore(Protocol):
    """Where run records are written. Tags replace earlier values of the same keys; metrics add to a run's
    history and its latest values (newest by step, timestamp, value), as MlflowClient does."""

    def create_runs(self, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
        """Create RUNNING runs in the experiment, each with its dataset input; returns (run_id, artifact_uri) for
        each, in order."""

    def batches(self, updates: list[RunUpdate]) -> list[list[RunUpdate]]:
        """The updates, in order, grouped into the batches this store writes one at a time."""

    def write_batch(self, batch: list[RunUpdate]) -> None:
        """Write one batch of `batches`; when this returns, the batch is stored."""
