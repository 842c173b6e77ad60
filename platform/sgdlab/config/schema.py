"""Typed schema of one trial's resolved config, with the checks that make bad input fail before anything runs.

`validate(cfg)` takes the plain dict Hydra composed, checks every group against the dataclass of its option
(unknown keys, types, ranges, cross-field rules), resolves the learning-rate convention and returns the
normalized dict. Every problem raises `ConfigError` with one line naming the key and what is allowed.

Temperature convention (applied everywhere): T = lr / (B * width_scale), with width_scale the width of the
mean-field readout (model.width for the MLP, model.channels for the CNN, 1 for the perceptron). This is the
convention of Sclocchi, Geiger & Wyart's code: in the mean-field scaling the step that moves features at O(1)
speed grows with the width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


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
class Mnist1dParity(DataCommon):
    pass


@dataclass
class TeacherPerceptron(DataCommon):
    dim: int
    chi: float


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


@dataclass
class Fault:
    raise_at_step: Optional[int]
    kill_at_step: Optional[int]
    seeds: Optional[list[int]] = field(default=None)


@dataclass
class Exec:
    pack: Literal["auto", "on", "off"]
    pack_size: Union[int, Literal["auto"]]


OPTIONS: dict[str, dict[str, type]] = {
    "data": {
        "digits_parity": DigitsParity,
        "mnist1d_parity": Mnist1dParity,
        "teacher_perceptron": TeacherPerceptron,
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
}
TOP_LEVEL = {"seed"}

# Keys that do not change what a trial computes: excluded from trial identity, overridable on resubmit.
NON_IDENTITY_GROUPS = ("tracking", "cluster", "resources", "fault", "probe", "exec")
NON_IDENTITY_KEYS = (("train", "checkpoint_every"),)  # how often a trial saves itself, not what it computes


# ---------------------------------------------------------------- generic type checking


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}[tp]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return value converted to tp (int -> float is allowed, bool -> int is not) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, typing.get_args(tp)[0], key) for v in value]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def check_group(prefix: str, values: Any, schema: type) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: expected a config group, got {values!r}")
    hints = _type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; allowed: {', '.join(names)}")
    out = {}
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}"
        if f.name not in values:
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
                continue
            raise ConfigError(f"{key}: missing")
        out[f.name] = _coerce(values[f.name], hints[f.name], key)
    return out


def _positive(cfg: dict, key: str, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    group, name = key.split(".")
    value = cfg[group][name]
    if value is None and allow_none:
        return
    ok = value is not None and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


# ---------------------------------------------------------------- the whole trial


def width_scale(model: dict) -> int:
    """Width of the mean-field readout: the factor between T * B and lr."""
    return {"mlp": model.get("width"), "cnn": model.get("channels"),
            "vgg": (model.get("stages") or [1])[-1]}.get(model["name"], 1)


def validate(raw: dict) -> dict:
    """Check a composed trial config and resolve lr <-> temperature; return the normalized dict."""
    expected = set(OPTIONS) | set(SINGLE) | TOP_LEVEL
    unknown = sorted(set(raw) - expected)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed top-level keys: {', '.join(sorted(expected))}")
    cfg: dict[str, Any] = {}
    for group, options in OPTIONS.items():
        values = raw.get(group)
        name = values.get("name") if isinstance(values, dict) else None
        if name not in options:
            raise ConfigError(f"{group}.name: unknown option {name!r}; allowed: {', '.join(options)}")
        cfg[group] = check_group(group, values, options[name])
    for group, schema in SINGLE.items():
        cfg[group] = check_group(group, raw.get(group), schema)
    cfg["seed"] = _coerce(raw.get("seed"), int, "seed")

    data, model, optim, train = cfg["data"], cfg["model"], cfg["optim"], cfg["train"]
    for key in ("data.n_train", "data.batch_size", "model.alpha", "train.max_steps", "train.log_every",
                "train.divergence_loss", "tracking.heartbeat_s", "tracking.stale_after_s"):
        _positive(cfg, key)
    for key in ("data.n_test", "train.max_time_s", "train.checkpoint_every"):
        _positive(cfg, key, allow_none=True)
    _positive(cfg, "resources.cpus", allow_zero=True)
    _positive(cfg, "resources.gpu", allow_zero=True)
    if cfg["resources"]["max_retries"] < 0:
        raise ConfigError(f"resources.max_retries: must be >= 0, got {cfg['resources']['max_retries']}")
    workers = cfg["resources"]["workers_per_trial"]
    if workers < 1:
        raise ConfigError(f"resources.workers_per_trial: must be an integer >= 1, got {workers}")
    if data["batch_size"] % workers:
        raise ConfigError(f"resources.workers_per_trial: B = data.batch_size = {data['batch_size']} must be divisible "
                          f"by W = {workers} (each worker takes B / W points of every batch)")
    if data["batch_size"] > data["n_train"]:
        raise ConfigError(
            f"data.batch_size: B = {data['batch_size']} exceeds data.n_train = {data['n_train']} (need B <= P)")
    if data["name"] == "teacher_perceptron":
        _positive(cfg, "data.dim")
        if data["chi"] <= -1:
            raise ConfigError(f"data.chi: must be > -1 (density |x_1|^chi must be integrable), got {data['chi']}")
    for key in ("depth", "width", "channels", "convs_per_stage"):
        if key in model and model[key] < 1:
            raise ConfigError(f"model.{key}: must be >= 1, got {model[key]}")
    if "stages" in model and (not model["stages"] or min(model["stages"]) < 1):
        raise ConfigError(f"model.stages: must be a non-empty list of channel counts >= 1, got {model['stages']}")
    if cfg["loss"]["name"] == "hinge" and train["loss_threshold"] is not None and train["loss_threshold"] < 0:
        raise ConfigError(f"train.loss_threshold: must be >= 0, got {train['loss_threshold']}")
    probe = cfg["probe"]
    for key in ("chunk_size", "top_k", "n_batches", "slq_steps"):
        if probe[key] < 1:
            raise ConfigError(f"probe.{key}: must be >= 1, got {probe[key]}")
    for key in ("every", "n_examples"):
        if probe[key] is not None and probe[key] < 1:
            raise ConfigError(f"probe.{key}: must be >= 1 or null, got {probe[key]}")
    for key in ("trace_samples", "slq_starts"):
        if probe[key] < 0:
            raise ConfigError(f"probe.{key}: must be >= 0, got {probe[key]}")
    if not 0 < probe["tol"] < 1:
        raise ConfigError(f"probe.tol: must be in (0, 1), got {probe['tol']}")
    bad_b = [b for b in probe["batch_sizes"] if not 1 <= b <= data["n_train"]]
    if bad_b:
        raise ConfigError(f"probe.batch_sizes: each B must be in 1..data.n_train = {data['n_train']}, got {bad_b[0]}")
    if isinstance(cfg["exec"]["pack_size"], int) and cfg["exec"]["pack_size"] < 1:
        raise ConfigError(f"exec.pack_size: must be >= 1 or auto, got {cfg['exec']['pack_size']}")
    if optim["name"] == "adam":
        for key in ("beta1", "beta2"):
            if not 0 <= optim[key] < 1:
                raise ConfigError(f"optim.{key}: must be in [0, 1), got {optim[key]}")
        _positive(cfg, "optim.eps")

    lr, temperature = optim["lr"], optim["temperature"]
    scale = data["batch_size"] * width_scale(model)
    if (lr is None) == (temperature is None):
        raise ConfigError("optim.lr / optim.temperature: give exactly one of them "
                          f"(got lr={lr!r}, temperature={temperature!r})")
    if lr is None:
        _positive(cfg, "optim.temperature")
        optim["lr"] = temperature * scale
    else:
        _positive(cfg, "optim.lr")
        optim["temperature"] = lr / scale
    return cfg
