"""Ray tasks around the jobs, and `submit`, which turns a job into its tasks. Resources and retries come from each
trial's `resources` group.

Ray retries a task whose worker process died (max_retries = resources.max_retries); an exception inside a trial
is not retried: the job records it and returns a failed summary. A training task trains a pack (trials of one
shape, see packing.py; one trial is a pack of one) and returns one summary per member; its retry trains again
only the members that had not finished, each from its own last checkpoint. A multi-worker trial
(resources.workers_per_trial > 1) is a task that holds no resources and trains on a Ray Train worker group
(multiworker.py). An end probe is a second task that takes the training task's result as its argument, so Ray
starts it when training is done; it measures the checkpoint the training run saved (or, for a trial finished
earlier, the recorded run's checkpoint).

Each task tags its runs with the Ray node it runs on (`sgdlab.node`: host, IP and Ray node id), which tells
apart several Ray nodes on one host. A node whose route to the tracking server differs from the driver's (in
docker/compose.yaml the driver uses http://127.0.0.1:5000, the containers http://mlflow:5000) sets
SGDLAB_WORKER_TRACKING_URI, which its tasks use instead of the driver's URI.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, replace

import ray

from sgdlab.jobs.probe import run_probe
from sgdlab.jobs.summary import TrialSummary
from sgdlab.jobs.train import preload, run_train
from sgdlab.orchestration.multiworker import run_on_workers
from sgdlab.orchestration.plan import PackJob, TrialJob
from sgdlab.tracking import tags
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import end_running

WORKER_TRACKING_URI = "SGDLAB_WORKER_TRACKING_URI"


def node_label() -> str:
    """This worker's Ray node: 'host/ip/node_id'."""
    node_id = ray.get_runtime_context().get_node_id()
    return f"{socket.gethostname()}/{ray.util.get_node_ip_address()}/{node_id}"


def on_this_node(handle: SweepHandle) -> SweepHandle:
    """The handle as seen from this worker: its runs carry the node tag, and the node's own tracking URI."""
    uri = os.environ.get(WORKER_TRACKING_URI) or handle.uri
    return replace(handle, uri=uri, run_tags={**handle.run_tags, tags.NODE: node_label()})


@ray.remote
def train_task(configs: list[dict], handle: SweepHandle, trial_ids: list[str], attempts: list[int],
               names: list[str]) -> list[TrialSummary]:
    return run_train(configs, on_this_node(handle), trial_ids=trial_ids, attempts=attempts, run_names=names)


def _train_on_worker(config: dict, handle: SweepHandle, trial_id: str, attempt: int, name: str,
                     device: str = "cpu") -> list[dict]:
    """One rank of a multi-worker trial; rank 0 returns the summary (as a dict: it travels as torch.save bytes)."""
    summaries = run_train([config], on_this_node(handle), trial_ids=[trial_id], attempts=[attempt],
                          run_names=[name], device=device)
    return [asdict(s) for s in summaries]


@ray.remote(num_cpus=0)
def multiworker_train_task(config: dict, handle: SweepHandle, trial_id: str, attempt: int,
                           name: str) -> list[TrialSummary]:
    res = config["resources"]
    try:
        summaries = run_on_workers(_train_on_worker, config, handle, trial_id, attempt, name,
                                   workers=res["workers_per_trial"], cpus=res["cpus"], gpus=res["gpu"],
                                   max_failures=res["max_retries"], name=f"sgdlab-{trial_id}-{attempt}")
        if not summaries:
            raise RuntimeError("rank 0 returned no summary")
        return [TrialSummary(**s) for s in summaries]
    except Exception as exc:  # the worker group failed more often than resources.max_retries allows
        error = tags.one_line(exc)
        end_running(handle, trial_id, "FAILED", error)
        return [TrialSummary.failed(trial_id, error)]


@ray.remote
def probe_task(trained: list[TrialSummary], config: dict, handle: SweepHandle, attempt: int, name: str,
               member: int = 0) -> TrialSummary:
    """The end probe of a training task's member (its summary `trained[member]`), unless it failed or diverged."""
    summary = trained[member]
    if summary.status != "finished" or summary.outcome == "diverged":
        return summary
    probed = run_probe(config, on_this_node(handle), trial_id=summary.trial_id, train_run_id=summary.run_id,
                       attempt=attempt, run_name=name)
    return replace(summary, status=probed.status, error=probed.error, probe_run_id=probed.run_id,
                   failed_stage=probed.failed_stage)


@ray.remote(num_cpus=1)
def _import_job_modules() -> None:
    preload()


def warm_up() -> None:
    """Start one worker process per CPU of the cluster and import the job modules in it (torch, mlflow, the
    probes) while the driver is still preparing, so that the first trials do not pay for it; returns when every
    worker is ready."""
    ray.get([_import_job_modules.remote() for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1))))])


def _options(res: dict) -> dict:
    return dict(num_cpus=res["cpus"], num_gpus=res["gpu"], max_retries=res["max_retries"], retry_exceptions=False)


def submit(job: TrialJob | PackJob, handle: SweepHandle) -> list[tuple[ray.ObjectRef, list[TrialJob]]]:
    """Submit a job's tasks. Returns references, each with the trials whose summaries it resolves to (a list of
    summaries, or one summary for an end probe) once its tasks are done."""
    members = list(job.members) if isinstance(job, PackJob) else [job]
    first = members[0]
    res, options = first.config["resources"], _options(first.config["resources"])
    if not first.train:  # the end probe of a trial that finished before
        trained = [TrialSummary(first.trial_id, "finished", first.train_run_id)]
    elif res.get("workers_per_trial", 1) > 1:
        trained = multiworker_train_task.options(name=f"train {first.trial_id} x{res['workers_per_trial']}",
                                                 max_retries=res["max_retries"], retry_exceptions=False).remote(
            first.config, handle, first.trial_id, first.attempt, first.run_name)
    else:
        name = f"train {first.trial_id}" if len(members) == 1 else f"pack of {len(members)} ({first.trial_id}...)"
        trained = train_task.options(name=name, **options).remote(
            [m.config for m in members], handle, [m.trial_id for m in members], [m.attempt for m in members],
            [m.run_name for m in members])
    plain = [m for m in members if not m.probe]
    refs = [(trained, plain)] if plain else []
    for i, member in enumerate(members):
        if member.probe:
            refs.append((probe_task.options(name=f"probe {member.trial_id}", **options).remote(
                trained, member.config, handle, member.probe_attempt, member.run_name, member=i), [member]))
    return refs
