"""Typed schema of one trial's resolved config: one dataclass per option of each config group.

`OPTIONS` maps a group with options (data, model, optim, loss) to {option name: dataclass}, `SINGLE` a group
with one shape (train, resources, ...) to its dataclass; a dataclass field is a key of the group, its annotation
the type it must have and its default, if any, the value of a key left out (typecheck.check_group).
`NON_IDENTITY_GROUPS` and `NON_IDENTITY_KEYS` name what does not change what a trial computes. A config that
cannot run raises `ConfigError`, one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the key."""


# ---------------------------------------------------------------- groups, one dataclass per option


@dataclass
class DataCommon:
    name: str
    n_train: int
    n_test: Optional[int]
    batch_size: int
    seed: int


@dataclass
class DigitsParity(DataCommon):
    pass


@dataclass
class Digits(DataCommon):
    pass


@dataclass
class Mnist1dParity(DataCommon):
    pass


@dataclass
class TeacherPerceptron(DataCommon):
    dim: int
    chi: float


@dataclass
class SphereField(DataCommon):
    dim: int
    power: float
    teacher_width: int


@dataclass
class MnistParity(DataCommon):
    root: str


@dataclass
class Cifar10Animals(DataCommon):
    root: str


@dataclass
class Mlp:
    name: str
    depth: int
    width: int
    activation: Literal["relu", "tanh", "gelu", "softplus"]
    alpha: float
    center: bool


@dataclass
class Perceptron:
    name: str
    alpha: float
    center: bool


@dataclass
class Cnn:
    name: str
    depth: int
    channels: int
    activation: Literal["relu", "tanh", "gelu", "softplus"]
    alpha: float
    center: bool


@dataclass
class Vgg:
    name: str
    stages: list[int]
    convs_per_stage: int
    activation: Literal["relu", "tanh", "gelu", "softplus"]
    alpha: float
    center: bool


@dataclass
class Sgd:
    name: str
    lr: Optional[float]
    temperature: Optional[float]


@dataclass
class Adam:
    name: str
    lr: Optional[float]
    temperature: Optional[float]
    beta1: float
    beta2: float
    eps: float


@dataclass
class Loss:
    name: str


@dataclass
class Train:
    max_steps: int
    stop_when_fitted: bool
    loss_threshold: Optional[float]
    max_time_s: Optional[float]
    divergence_loss: float
    log_every: int
    dtype: Literal["float32", "float64"]
    checkpoint_every: Optional[int] = None
    compile_after: Optional[int] = None
    min_t: Optional[float] = None


@dataclass
class Resources:
    cpus: float
    gpu: float
    max_retries: int
    max_in_flight: Optional[int]
    workers_per_trial: int = 1  # > 1: one trial on that many data-parallel Ray Train workers (B % W == 0)


@dataclass
class Cluster:
    address: Optional[str]
    num_cpus: Optional[int]
    dashboard: bool = False


@dataclass
class Tracking:
    uri: Optional[str]
    heartbeat_s: float
    stale_after_s: float
    timeout_s: float = 10.0
    flush_s: float = 15.0


@dataclass
class Probe:
    at_end: bool
    every: Optional[int]
    matrix: Literal["full", "ggn"]
    n_examples: Optional[int]
    chunk_size: int
    top_k: int
    tol: float
    trace_samples: int
    trace_every: bool
    slq_starts: int
    slq_steps: int
    batch_sizes: list[int]
    n_batches: int
    per_layer: bool
    dtype: Literal["float32", "float64"]
    seed: int
    at_start: bool = False
    noise: bool = False


@dataclass
class Fault:
    raise_at_step: Optional[int]
    kill_at_step: Optional[int]
    seeds: Optional[list[int]] = field(default=None)


@dataclass
class Exec:
    pack: Literal["auto", "on", "off"]
    pack_size: Union[int, Literal["auto"]]


@dataclass
class Report:
    auto: bool = True
    tc_thresholds: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    tc_error_change: float = 0.1


@dataclass
class App:
    """Settings of sgdlab-run (the Hydra app), not of a trial: validate() checks them and leaves them out."""
    sweep: str
    objective: str


OPTIONS: dict[str, dict[str, type]] = {
    "data": {
        "digits_parity": DigitsParity,
        "digits": Digits,
        "mnist1d_parity": Mnist1dParity,
        "teacher_perceptron": TeacherPerceptron,
        "sphere_field": SphereField,
        "mnist_parity": MnistParity,
        "cifar10_animals": Cifar10Animals,
    },
    "model": {"mlp": Mlp, "perceptron": Perceptron, "cnn": Cnn, "vgg": Vgg},
    "optim": {"sgd": Sgd, "adam": Adam},
    "loss": {"hinge": Loss, "cross_entropy": Loss, "mse": Loss},
}
SINGLE: dict[str, type] = {
    "train": Train,
    "resources": Resources,
    "cluster": Cluster,
    "tracking": Tracking,
    "fault": Fault,
    "probe": Probe,
    "exec": Exec,
    "report": Report,
}
TOP_LEVEL = {"seed"}
MAX_TRIALS = 100_000  # the default of --max-trials: a larger grid is refused before it is expanded
MAX_NESTING = 20  # levels of brackets in an override, of YAML in a sweep file (deeper input exhausts parsers)
APP_GROUP = "app"  # App: composed with every trial, kept out of its config

# Keys that do not change what a trial computes: excluded from trial identity, overridable on resubmit.
NON_IDENTITY_GROUPS = ("tracking", "cluster", "resources", "fault", "probe", "exec", "report")
# How often a trial saves itself and whether its step is compiled: not what it computes (compiled numbers agree up
# to the order of floating-point operations).
NON_IDENTITY_KEYS = (("train", "checkpoint_every"), ("train", "compile_after"))
# Keys added after numerics version 3 whose null default computes what configs without them computed: left out of
# trial identity while null, so that the trial ids of earlier records stay the same.
IDENTITY_WHEN_SET = (("train", "min_t"),)
