"""The training job: trial attempts of one shape (a pack; usually a pack of one), configs in, one summary per trial
out, every record through tracking/. It runs in one process, or on each of the W data-parallel workers of a
multi-worker trial (resources.workers_per_trial > 1, inside a torch.distributed process group): every rank trains,
rank 0 alone writes the records (the others write through NoRuns) and returns the summaries.

Each member has its own MLflow run with exactly the records of a trial trained alone (a multi-worker trial also
carries `sgdlab.workers`); a member is ended (metrics, `wall_time`, final checkpoint, status) as soon as it stops.
An exception inside a trial ends its run FAILED (one-line error, traceback artifact) and is returned as a failed
summary, so that the other trials go on: a member's own fault (fault injection) fails that member only; an
exception of the pack's computation fails every member still training. Divergence is a result: FINISHED with
outcome 'diverged'. Earlier attempts are taken over as jobs/takeover.py says (on rank 0, handed to every rank).

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

from sgdlab.jobs.summary import TrialSummary
from sgdlab.jobs.takeover import Takeover, take_over_all
from sgdlab.tracking import tags
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import NoRuns, PackRuns, RunSpec
from sgdlab.training import checkpoint
from sgdlab.training.distributed import Workers, world
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


def members_at_once(config: dict, n_members: int, device: str, workers: Workers) -> int:
    """How many members of a pack train together: all of them for a trial alone or on data-parallel workers,
    otherwise as many as the memory budget holds (the others train after them)."""
    if n_members <= 1 or workers.size > 1:
        return max(1, n_members)
    per_member = member_bytes(build_problem(config, device), config["data"]["batch_size"])
    return max(1, memory_budget(device) // per_member)


def preload() -> None:
    """Import what a pack's first step would import on its own: torch.func's transforms load torch._dynamo
    (about 2 s) the first time a process uses them."""
    import torch._dynamo  # noqa: F401


def run_train(configs: list[dict], handle: SweepHandle, *, trial_ids: list[str], attempts: list[int],
              run_names: list[str], device: str | None = None) -> list[TrialSummary]:
    """Train trials of one shape together; returns one summary per trial, in order (on data-parallel ranks other
    than 0: an empty list). `device`: where to train (default: device_for the trials' resources)."""
    torch.set_num_threads(max(1, int(configs[0]["resources"]["cpus"])))
    workers, device = world(), device or device_for(configs[0]["resources"])
    started = time.perf_counter()
    pack_id = uuid.uuid4().hex if len(configs) > 1 else None  # this attempt of the pack (tag sgdlab.pack)
    tracking = configs[0]["tracking"]
    took = workers.from_rank0(take_over_all(handle, trial_ids, attempts, tracking["stale_after_s"])
                              if workers.rank == 0 else None)
    # Finished before (this task's worker died after) or held by another driver's run: nothing to train.
    summaries: list[TrialSummary | None] = [t.finished or t.elsewhere for t in took]
    todo = [i for i, t in enumerate(took) if summaries[i] is None]
    records = PackRuns(handle, [RunSpec(trial_ids[i], configs[i], took[i].attempt, run_names[i], "train",
                                        _extra_tags(took[i], pack_id, workers)) for i in todo],
                       tracking["heartbeat_s"], tracking["stale_after_s"], tracking["flush_s"]) \
        if workers.rank == 0 else NoRuns()
    lost = workers.from_rank0(records.claim() if workers.rank == 0 else None)  # claims rule 2
    for slot, reason in lost.items():
        summaries[todo[slot]] = TrialSummary.elsewhere(trial_ids[todo[slot]], records.run_id(slot), reason)
    members = [_member(slot, i, configs[i], trial_ids[i], took[i], attempts[i], records, summaries, started,
                       device, workers) for slot, i in enumerate(todo) if slot not in lost]
    try:
        capacity = members_at_once(configs[0], len(members), device, workers)
        for first in range(0, len(members), capacity):
            train_pack(members[first:first + capacity], device, on_tick=records.tick, workers=workers)
        records.close()
    except Exception as exc:  # the pack's own computation failed: every member still training failed with it
        records.close()  # members that ended before keep their results
        for member in members:
            if summaries[member.index] is None:
                summaries[member.index] = TrialSummary.failed(member.trial_id, records.fail(member.slot, exc),
                                                              records.run_id(member.slot))
    return summaries if workers.rank == 0 else []


def _extra_tags(took: Takeover, pack_id: str | None, workers: Workers) -> dict[str, str]:
    extra = {tags.RESUMED_FROM: f"{took.resumed_from}@{took.snapshot['steps']}"} if took.snapshot else {}
    if pack_id:
        extra[tags.PACK] = pack_id
    if workers.size > 1:
        extra[tags.WORKERS] = str(workers.size)
    return extra


@dataclass
class _PackMember(Member):
    slot: int = 0  # in the pack's runs
    index: int = 0  # in the job's trials
    trial_id: str = ""


def _member(slot: int, index: int, config: dict, trial_id: str, took: Takeover, given_attempt: int,
            records: PackRuns | NoRuns, summaries: list, started: float, device: str,
            workers: Workers) -> _PackMember:
    """A pack member whose callbacks write its own MLflow run (through the pack's records) and, when it ends, its
    summary."""
    # A fault acts once: not again in the retry of a task it killed, nor in a rerun of a lost trial.
    on_step = fault_hook(config) if took.attempt == given_attempt else None
    run_id = records.run_id(slot)
    if took.history:
        records.log_points(slot, took.history)

    def on_log(step: int, metrics: dict) -> None:
        records.log_metrics(slot, step, metrics)

    def on_checkpoint(state: dict) -> None:
        records.checkpoint(slot, checkpoint.to_bytes(state, config), checkpoint.LAST)

    def on_end(result: Result) -> None:
        if result.error is not None:
            summaries[index] = TrialSummary.failed(trial_id, records.fail(slot, result.error), run_id)
            return
        on_log(result.steps, {"wall_time": time.perf_counter() - started, "blocked_steps": result.blocked_steps})
        records.log_bytes(slot, checkpoint.to_bytes({"params": result.params, "steps": result.steps}, config),
                          checkpoint.FINAL)

        def ended(status: str, reason: str) -> None:  # KILLED: another run holds the trial (claims rule 3)
            summaries[index] = (TrialSummary(trial_id, "finished", run_id, result.outcome, result.metrics)
                                if status == "FINISHED" else TrialSummary.elsewhere(trial_id, run_id, reason))

        records.finish(slot, result.outcome, ended)

    on_params, params_every = (lambda step, params: None), in_training_probe_every(config)
    if params_every:  # curvature along training (imported here: probes load only when asked for)
        from sgdlab.jobs.probe import distributed_operator, operator, trajectory_hook

        on_params = trajectory_hook(build_problem(config, device), config["probe"], on_log,
                                    make_operator=distributed_operator if workers.size > 1 else operator)
    return _PackMember(config, on_log=on_log, on_step=on_step, on_checkpoint=on_checkpoint, on_end=on_end,
                       on_params=on_params, params_every=params_every, resume=took.snapshot, slot=slot,
                       index=index, trial_id=trial_id)


def in_training_probe_every(config: dict) -> int | None:
    """How often the in-training probe runs: probe.every, or only at step 0 (probe.at_start alone: a period no
    run reaches, the same for every member of a pack), or never (None)."""
    pcfg = config["probe"]
    if pcfg["every"]:
        return pcfg["every"]
    return 2**62 if pcfg["at_start"] else None
