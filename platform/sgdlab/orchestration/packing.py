"""Packing: trials that share a shape train together in one Ray task (training/loop.py vmaps over them).

A trial's shape is its config minus what a pack member may have of its own: seed, model.alpha, optim.lr and
optim.temperature, train.max_steps, and the fault group. Trials with equal shapes share the data, architecture,
batch size, optimizer type, loss, dtype and resources, and form a group.

exec.pack: off, one trial per task; on, every group is packed; auto, groups of at least AUTO_MIN trials are.
Never packed: end probes of trials finished earlier, trials measured along training (probe.every: trajectory
probes are not vmapped, so such trials run one per task whatever exec.pack says), multi-worker trials.
exec.pack_size: an int, or auto: the group split evenly over the cluster's task slots, at most AUTO_MAX.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from sgdlab.orchestration.plan import PackJob, TrialJob

AUTO_MIN = 16
AUTO_MAX = 4096
PER_MEMBER = (("seed",), ("model", "alpha"), ("optim", "lr"), ("optim", "temperature"), ("train", "max_steps"),
              ("train", "min_t"), ("fault",))
DEFAULT_EXEC = {"pack": "auto", "pack_size": "auto"}  # configs recorded before the exec group existed


def shape_key(config: dict) -> str:
    """The config without its per-member keys, as a canonical string."""
    shape = json.loads(json.dumps(config))
    for path in PER_MEMBER:
        node = shape
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return json.dumps(shape, sort_keys=True)


def packable(job: TrialJob) -> bool:
    config = job.config
    return (job.train and (config.get("exec") or DEFAULT_EXEC)["pack"] != "off" and not config["probe"]["every"]
            and config["resources"].get("workers_per_trial", 1) == 1)


def task_slots(cluster: dict[str, float], res: dict) -> int:
    """How many tasks of these resources the cluster runs at once (its GPUs or CPUs over one task's share)."""
    slots = cluster.get("GPU", 0) / res["gpu"] if res["gpu"] else cluster.get("CPU", 1) / max(res["cpus"], 1e-9)
    return max(1, int(slots))


def pack_jobs(jobs: list[TrialJob], slots: int) -> list[TrialJob | PackJob]:
    """Group packable jobs by shape and cut each group into packs; a pack of one stays a TrialJob.
    `slots`: how many tasks of these jobs' resources the cluster runs at once."""
    groups: dict[str, list[TrialJob]] = defaultdict(list)
    out: list[TrialJob | PackJob] = []
    for job in jobs:
        if packable(job):
            groups[shape_key(job.config)].append(job)
        else:
            out.append(job)
    for group in groups.values():
        settings = group[0].config.get("exec") or DEFAULT_EXEC
        if settings["pack"] == "auto" and len(group) < AUTO_MIN:
            out.extend(group)
            continue
        size = settings["pack_size"]
        if size == "auto":
            size = min(AUTO_MAX, math.ceil(len(group) / max(1, slots)))
        for first in range(0, len(group), size):
            members = group[first:first + size]
            out.append(PackJob(tuple(members)) if len(members) > 1 else members[0])
    return out
