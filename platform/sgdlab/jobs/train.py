"""The training job: trial attempts of one shape (a pack; usually a pack of one), configs in, one summary per
trial out, every record through tracking/. Each member has its own MLflow run with exactly the records of a
trial trained alone; a member is ended (metrics, final checkpoint, status) as soon as it stops.

An exception inside a trial ends its run FAILED (one-line error, traceback artifact) and is returned as a
failed summary, so that the other trials go on: a member's own fault (fault injection) fails that member only;
an exception of the pack's computation fails every member still training. Divergence is a result: FINISHED
with outcome 'diverged'.

Resuming: a trial's RUNNING runs at the start of this job belong to workers that died (Ray retries a task only
after its worker is lost, and the planner never starts a trial that runs elsewhere). They are ended FAILED
('worker lost'), this run becomes the next attempt, and training continues from the newest of their
`checkpoint/last.pt` snapshots: the numbers equal those of an uninterrupted run on CPU. A member that finished
before its pack's worker died is not trained again.

Device: CUDA when resources.gpu > 0 and a GPU is visible; the task then caps its GPU memory to its share
(resources.gpu of the device). A pack larger than its memory allows trains in parts, one after the other.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass

import torch

from sgdlab.tracking import tags
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.query import trials_with_runs
from sgdlab.tracking.writer import PackRuns, RunSpec, end_runs, trial_runs
from sgdlab.training import checkpoint
from sgdlab.training.loop import Member, Result, train_pack
from sgdlab.training.problem import Problem, build_problem


class InjectedFault(RuntimeError):
    """Raised by fault.raise_at_step."""


def fault_hook(config: dict):
    """on_step callback for the `fault` group: raise or SIGKILL this process at a step, for chosen seeds only;
    None when the config injects no fault into this trial."""
    fault = config["fault"]
    if fault["seeds"] is not None and config["seed"] not in fault["seeds"]:
        return None
    if fault["kill_at_step"] is None and fault["raise_at_step"] is None:
        return None

    def hook(step: int) -> None:
        if step == fault["kill_at_step"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == fault["raise_at_step"]:
            raise InjectedFault(f"fault.raise_at_step={step} (injected)")

    return hook


@dataclass
class Takeover:
    attempt: int  # the attempt number this run gets
    snapshot: dict | None  # newest snapshot of an orphaned run, to resume from
    resumed_from: str | None  # that run's id
    earlier_runs: int  # runs of the trial before this one
    finished: object | None  # a FINISHED run of the trial, if one exists (then there is nothing to do)


def take_over(handle: SweepHandle, trial_id: str, attempt: int) -> Takeover:
    """End the trial's orphaned RUNNING runs and find what to continue from."""
    runs = trial_runs(handle, trial_id)
    attempt = max([attempt] + [int(r.data.tags.get(tags.ATTEMPT, "1")) + 1 for r in runs])
    finished = next((r for r in runs if r.info.status == "FINISHED"), None)
    orphans = [r for r in runs if r.info.status == "RUNNING"]
    if orphans:
        end_runs(handle, [r.info.run_id for r in orphans], "FAILED",
                 f"worker lost (process died or heartbeat stopped); continued by attempt {attempt}")
    for run in reversed(orphans if finished is None else []):
        data = download_bytes(handle.uri, run.info.run_id, checkpoint.LAST)
        if data is not None:
            return Takeover(attempt, checkpoint.from_bytes(data)["state"], run.info.run_id, len(runs), None)
    return Takeover(attempt, None, None, len(runs), finished)


def device_for(resources: dict) -> str:
    """'cuda' (memory capped to this task's share of the GPU) when the trial asks for a GPU and one is visible."""
    if resources["gpu"] > 0 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(resources["gpu"])))
        return "cuda"
    return "cpu"


def member_bytes(problem: Problem, batch_size: int) -> int:
    """Memory of one pack member: parameters, gradient, two optimizer moments and a spare copy (6x), f(w0, x)
    on both sets, and the activations a batch saves for backward."""
    n_params = sum(p.numel() for p in problem.params0.values())
    f0 = problem.f0_train.numel() + problem.f0_test.numel()
    return problem.f0_train.element_size() * (6 * n_params + f0 + batch_size * problem.saved_per_example())


def memory_budget(device: str) -> int:
    """Bytes a pack may use: 80% of the free GPU memory of this task's share, or a quarter of the free RAM."""
    if device == "cuda":
        return int(0.8 * torch.cuda.mem_get_info()[0])
    return int(0.25 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def preload() -> None:
    """Import what a pack's first step would import on its own: torch.func's transforms load torch._dynamo
    (about 2 s) the first time a process uses them."""
    import torch._dynamo  # noqa: F401


def run_train(config: dict, handle: SweepHandle, *, trial_id: str, attempt: int, run_name: str) -> dict:
    """One trial attempt (a pack of one)."""
    return run_pack([config], handle, trial_ids=[trial_id], attempts=[attempt], run_names=[run_name])[0]


def run_pack(configs: list[dict], handle: SweepHandle, *, trial_ids: list[str], attempts: list[int],
             run_names: list[str]) -> list[dict]:
    """Train trials of one shape together; returns one summary per trial, in order."""
    torch.set_num_threads(max(1, int(configs[0]["resources"]["cpus"])))
    device = device_for(configs[0]["resources"])
    summaries: list[dict | None] = [None] * len(configs)
    started = time.perf_counter()
    pack_id = uuid.uuid4().hex if len(configs) > 1 else None  # this attempt of the pack (tag sgdlab.pack)
    with_runs = trials_with_runs(handle.uri, handle.experiment_id, trial_ids)  # None: ask each trial
    took = [take_over(handle, trial_id, attempt) if with_runs is None or trial_id in with_runs
            else Takeover(attempt, None, None, 0, None) for trial_id, attempt in zip(trial_ids, attempts)]
    for i, finished in enumerate(t.finished for t in took):
        if finished is not None:  # finished before this task's worker died
            summaries[i] = {"trial_id": trial_ids[i], "run_id": finished.info.run_id, "status": "finished",
                            "outcome": finished.data.tags.get(tags.OUTCOME), "metrics": dict(finished.data.metrics),
                            "error": ""}
    todo = [i for i, t in enumerate(took) if t.finished is None]
    records = PackRuns(handle, [RunSpec(trial_ids[i], configs[i], took[i].attempt, run_names[i], "train",
                                        _extra_tags(took[i], pack_id)) for i in todo],
                       configs[0]["tracking"]["heartbeat_s"])
    members = [_member(slot, i, configs[i], trial_ids[i], took[i], attempts[i], records, summaries, started)
               for slot, i in enumerate(todo)]
    try:
        capacity = 1 if len(members) <= 1 else max(1, memory_budget(device) // member_bytes(  # a trial alone: any size
            build_problem(configs[0], device), configs[0]["data"]["batch_size"]))
        for first in range(0, len(members), capacity):
            train_pack(members[first:first + capacity], device, on_tick=records.tick)
        records.close()
    except Exception as exc:  # the pack's own computation failed: every member still training failed with it
        records.close()  # members that ended before keep their results
        for member in members:
            if summaries[member.index] is None:
                summaries[member.index] = {"trial_id": member.trial_id, "run_id": records.runs[member.slot].run_id,
                                           "status": "failed", "error": records.fail(member.slot, exc)}
    return summaries


def _extra_tags(took: Takeover, pack_id: str | None) -> dict[str, str]:
    extra = {tags.RESUMED_FROM: f"{took.resumed_from}@{took.snapshot['steps']}"} if took.snapshot else {}
    return {**extra, **({tags.PACK: pack_id} if pack_id else {})}


@dataclass
class _PackMember(Member):
    slot: int = 0  # in the pack's runs
    index: int = 0  # in the job's trials
    trial_id: str = ""


def _member(slot: int, index: int, config: dict, trial_id: str, took: Takeover, given_attempt: int,
            records: PackRuns, summaries: list, started: float) -> _PackMember:
    """A pack member whose callbacks write its own MLflow run (through the pack's records) and, when it ends, its
    summary."""
    run = records.runs[slot]
    # A fault acts once: not again in the retry of a task it killed, nor in a rerun of a lost trial.
    on_step = fault_hook(config) if took.attempt == given_attempt else None

    def on_log(step: int, metrics: dict) -> None:
        records.log_metrics(slot, step, metrics)

    def on_checkpoint(state: dict) -> None:
        run.log_bytes(checkpoint.to_bytes(state, config), checkpoint.LAST)

    def on_end(result: Result) -> None:
        if result.error is not None:
            summaries[index] = {"trial_id": trial_id, "run_id": run.run_id, "status": "failed",
                                "error": records.fail(slot, result.error)}
            return
        on_log(result.steps, {"wall_time": time.perf_counter() - started})
        run.log_bytes(checkpoint.to_bytes({"params": result.params, "steps": result.steps}, config),
                      checkpoint.FINAL)

        def ended(status: str) -> None:
            summaries[index] = {"trial_id": trial_id, "run_id": run.run_id, "outcome": result.outcome,
                                "status": "finished" if status == "FINISHED" else "failed", "metrics": result.metrics,
                                "error": "" if status == "FINISHED" else "duplicate of a finished run"}

        records.finish(slot, result.outcome, ended, check_duplicates=took.earlier_runs > 0)

    on_params, params_every = (lambda step, params: None), config["probe"]["every"]
    if params_every:  # sharpness along training (imported here: probes load only when asked for)
        from sgdlab.jobs.probe import trajectory_hook

        on_params = trajectory_hook(build_problem(config), config["probe"], on_log)
    return _PackMember(config, on_log=on_log, on_step=on_step, on_checkpoint=on_checkpoint, on_end=on_end,
                       on_params=on_params, params_every=params_every, resume=took.snapshot, slot=slot,
                       index=index, trial_id=trial_id)
