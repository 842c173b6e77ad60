"""Ray tasks around the jobs. Resources and retries come from each trial's `resources` group.

Ray retries a task whose worker process died (max_retries = resources.max_retries); an exception inside a
trial is not retried: the job records it and returns a failed summary. A pack (trials of one shape, see
packing.py) is one task that returns one summary per member; its retry trains again only the members that had
not finished, each from its own last checkpoint. An end probe is a second task that
takes the training task's result as its argument, so Ray starts it when training is done; it measures the
checkpoint the training run saved (or, for a trial finished earlier, the recorded run's checkpoint).
Each task tags its run with the Ray node it runs on (`sgdlab.node`: host, IP and Ray node id), which tells
apart several Ray nodes on one host. A node whose route to the tracking server differs from the driver's (in
docker/compose.yaml the driver uses http://127.0.0.1:5000, the containers http://mlflow:5000) sets
SGDLAB_WORKER_TRACKING_URI, which its tasks use instead of the driver's URI.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace

import ray

from sgdlab.jobs.probe import run_probe
from sgdlab.jobs.train import run_pack, run_train
from sgdlab.tracking import tags
from sgdlab.tracking.store import SweepHandle


@dataclass(frozen=True)
class TrialJob:
    """One trial attempt to run (train, then the end probe if `probe`), or only the end probe of a trial
    that finished before (train=False, train_run_id set)."""

    trial_id: str
    config: dict
    attempt: int
    run_name: str
    train: bool = True
    probe: bool = False
    train_run_id: str | None = None
    probe_attempt: int = 1


@dataclass(frozen=True)
class PackJob:
    """Trials of one shape trained together in one task (each member a TrialJob with train=True)."""

    members: tuple[TrialJob, ...]


def node_label() -> str:
    """This worker's Ray node: 'host/ip/node_id'."""
    node_id = ray.get_runtime_context().get_node_id()
    return f"{socket.gethostname()}/{ray.util.get_node_ip_address()}/{node_id}"


WORKER_TRACKING_URI = "SGDLAB_WORKER_TRACKING_URI"


def on_this_node(handle: SweepHandle) -> SweepHandle:
    """The handle as seen from this worker: its runs carry the node tag, and the node's own tracking URI."""
    uri = os.environ.get(WORKER_TRACKING_URI) or handle.uri
    return replace(handle, uri=uri, run_tags={**handle.run_tags, tags.NODE: node_label()})


@ray.remote
def _train_task(config: dict, handle: SweepHandle, trial_id: str, attempt: int, name: str) -> dict:
    return run_train(config, on_this_node(handle), trial_id=trial_id, attempt=attempt, run_name=name)


@ray.remote
def _pack_task(configs: list[dict], handle: SweepHandle, trial_ids: list[str], attempts: list[int],
               names: list[str]) -> list[dict]:
    return run_pack(configs, on_this_node(handle), trial_ids=trial_ids, attempts=attempts, run_names=names)


@ray.remote
def _probe_task(trained: dict | list[dict], config: dict, handle: SweepHandle, attempt: int, name: str,
                member: int | None = None) -> dict:
    trained = trained if member is None else trained[member]
    if trained["status"] != "finished" or trained.get("outcome") == "diverged":
        return {**trained, "probe": "skipped"}
    probed = run_probe(config, on_this_node(handle), trial_id=trained["trial_id"], train_run_id=trained["run_id"],
                       attempt=attempt, run_name=name)
    return {**trained, "status": probed["status"], "error": probed.get("error", ""), "probe": probed["run_id"],
            "failed_stage": "probe" if probed["status"] == "failed" else None}


def submit(job: TrialJob | PackJob, handle: SweepHandle) -> list[tuple[ray.ObjectRef, list[TrialJob]]]:
    """Submit a job's task(s). Returns references with the trials whose summaries each resolves to (a summary,
    or a pack's list of summaries) when all of their tasks are done."""
    if isinstance(job, PackJob):
        return _submit_pack(job, handle)
    res = job.config["resources"]
    if res.get("workers_per_trial", 1) > 1:  # one trial on several Ray Train workers (imported only then)
        from sgdlab.orchestration.multiworker import submit as submit_multiworker
        return [(submit_multiworker(job, handle), [job])]
    options = _options(res)
    if job.train:
        result = _train_task.options(name=f"train {job.trial_id}", **options).remote(
            job.config, handle, job.trial_id, job.attempt, job.run_name)
    else:
        result = {"trial_id": job.trial_id, "status": "finished", "run_id": job.train_run_id}
    if job.probe:
        result = _probe_task.options(name=f"probe {job.trial_id}", **options).remote(
            result, job.config, handle, job.probe_attempt, job.run_name)
    return [(result, [job])]


def _options(res: dict) -> dict:
    return dict(num_cpus=res["cpus"], num_gpus=res["gpu"], max_retries=res["max_retries"], retry_exceptions=False)


def _submit_pack(pack: PackJob, handle: SweepHandle) -> list[tuple[ray.ObjectRef, list[TrialJob]]]:
    members = list(pack.members)
    options = _options(members[0].config["resources"])
    trained = _pack_task.options(name=f"pack of {len(members)} ({members[0].trial_id}...)", **options).remote(
        [m.config for m in members], handle, [m.trial_id for m in members], [m.attempt for m in members],
        [m.run_name for m in members])
    plain = [m for m in members if not m.probe]
    refs = [(trained, plain)] if plain else []
    for i, member in enumerate(members):
        if member.probe:
            refs.append((_probe_task.options(name=f"probe {member.trial_id}", **options).remote(
                trained, member.config, handle, member.probe_attempt, member.run_name, member=i), [member]))
    return refs
