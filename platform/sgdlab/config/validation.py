"""Validation of one trial's whole config, so that bad input fails before anything runs.

`validate(cfg)` takes the plain dict Hydra composed, checks every group against the dataclass of its option
(schema, typecheck: unknown keys, types), then the ranges and cross-field rules, resolves the learning-rate
convention and returns the normalized dict. Every problem raises `ConfigError` with one line naming the key and
what is allowed.

Temperature convention (applied everywhere): T = lr / (B * width_scale), with width_scale the width of the
mean-field readout (model.width for the MLP, model.channels for the CNN, 1 for the perceptron). This is the
convention of Sclocchi, Geiger & Wyart's code: in the mean-field scaling the step that moves features at O(1)
speed grows with the width.
"""

from __future__ import annotations

import math
from typing import Any

from sgdlab.config.schema import APP_GROUP, OPTIONS, SINGLE, TOP_LEVEL, App, ConfigError
from sgdlab.config.typecheck import check_group, coerce


def _positive(cfg: dict, key: str, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    group, name = key.split(".")
    value = cfg[group][name]
    if value is None and allow_none:
        return
    ok = value is not None and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_report(report: dict) -> None:
    """The report group's ranges: at least one T_c threshold, each in (0, inf), and a test-error change > 0."""
    thresholds = report["tc_thresholds"]
    if not thresholds or not all(math.isfinite(c) and c > 0 for c in thresholds):
        raise ConfigError(f"report.tc_thresholds: must be a non-empty list of numbers > 0, got {thresholds!r}")
    if not (math.isfinite(report["tc_error_change"]) and report["tc_error_change"] > 0):
        raise ConfigError(f"report.tc_error_change: must be > 0, got {report['tc_error_change']!r}")


def app_settings(raw: dict) -> dict:
    """The `app` group of a composed config (sgdlab-run's sweep name and objective), checked."""
    return check_group(APP_GROUP, raw.get(APP_GROUP), App)


def width_scale(model: dict) -> int:
    """Width of the mean-field readout: the factor between T * B and lr."""
    return {"mlp": model.get("width"), "cnn": model.get("channels"),
            "vgg": (model.get("stages") or [1])[-1]}.get(model["name"], 1)


def validate(raw: dict) -> dict:
    """Check a composed trial config and resolve lr <-> temperature; return the normalized dict (without the
    Hydra app's settings: app_settings)."""
    expected = set(OPTIONS) | set(SINGLE) | TOP_LEVEL | {APP_GROUP}
    unknown = sorted(set(raw) - expected)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed top-level keys: {', '.join(sorted(expected))}")
    if APP_GROUP in raw:
        app_settings(raw)
    cfg: dict[str, Any] = {}
    for group, options in OPTIONS.items():
        values = raw.get(group)
        name = values.get("name") if isinstance(values, dict) else None
        if name not in options:
            raise ConfigError(f"{group}.name: unknown option {name!r}; allowed: {', '.join(options)}")
        cfg[group] = check_group(group, values, options[name])
    for group, schema in SINGLE.items():
        cfg[group] = check_group(group, raw.get(group), schema)
    cfg["seed"] = coerce(raw.get("seed"), int, "seed")
    if not -2**63 <= cfg["seed"] < 2**63:  # seeds are int64 tensors (training/sampler.py, counter_random.py)
        raise ConfigError(f"seed: must be in [-2**63, 2**63), got {cfg['seed']}")

    data, model, optim, train = cfg["data"], cfg["model"], cfg["optim"], cfg["train"]
    for key in ("data.n_train", "data.batch_size", "model.alpha", "train.max_steps", "train.log_every",
                "train.divergence_loss", "tracking.heartbeat_s", "tracking.stale_after_s", "tracking.timeout_s",
                "tracking.flush_s"):
        _positive(cfg, key)
    for key in ("data.n_test", "train.max_time_s", "train.min_t", "train.checkpoint_every"):
        _positive(cfg, key, allow_none=True)
    _positive(cfg, "train.compile_after", allow_zero=True, allow_none=True)
    _positive(cfg, "resources.cpus", allow_zero=True)
    _positive(cfg, "resources.max_in_flight", allow_none=True)  # null: twice the cluster's CPUs
    _positive(cfg, "resources.gpu", allow_zero=True)
    _positive(cfg, "cluster.num_cpus", allow_none=True)  # null: all of this machine's (0 would mean all too)
    if cfg["resources"]["max_retries"] < 0:
        raise ConfigError(f"resources.max_retries: must be >= 0, got {cfg['resources']['max_retries']}")
    workers = cfg["resources"]["workers_per_trial"]
    if workers < 1:
        raise ConfigError(f"resources.workers_per_trial: must be an integer >= 1, got {workers}")
    if data["batch_size"] % workers:
        raise ConfigError(f"resources.workers_per_trial: B = data.batch_size = {data['batch_size']} must be divisible "
                          f"by W = {workers} (each worker takes B / W points of every batch)")
    _fits_the_data_set(data)
    if data["batch_size"] > data["n_train"]:
        raise ConfigError(
            f"data.batch_size: B = {data['batch_size']} exceeds data.n_train = {data['n_train']} (need B <= P)")
    if data["name"] == "teacher_perceptron":
        _positive(cfg, "data.dim")
        if data["chi"] <= -1:
            raise ConfigError(f"data.chi: must be > -1 (density |x_1|^chi must be integrable), got {data['chi']}")
    if data["name"] == "sphere_field":
        if data["dim"] < 2:
            raise ConfigError(f"data.dim: must be >= 2 (points on the sphere S^(d-1) of R^d), got {data['dim']}")
        _positive(cfg, "data.power")
        if data["teacher_width"] < 1:
            raise ConfigError(f"data.teacher_width: must be >= 1, got {data['teacher_width']}")
    for key in ("depth", "width", "channels", "convs_per_stage"):
        if key in model and model[key] < 1:
            raise ConfigError(f"model.{key}: must be >= 1, got {model[key]}")
    if "stages" in model and (not model["stages"] or min(model["stages"]) < 1):
        raise ConfigError(f"model.stages: must be a non-empty list of channel counts >= 1, got {model['stages']}")
    if cfg["loss"]["name"] == "hinge" and data["name"] in MULTICLASS:
        raise ConfigError(f"loss: hinge is binary (one output, labels +-1); data={data['name']} has ten classes: "
                          "use loss=mse or loss=cross_entropy")
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
    if probe["noise"] and probe["trace_samples"] < 1:
        raise ConfigError("probe.noise: the curvature ratio tr(H) / lambda_max(H) needs probe.trace_samples >= 1, "
                          "got 0")
    if probe["noise"] and cfg["resources"]["workers_per_trial"] > 1:
        raise ConfigError("probe.noise: per-example gradients are taken on one worker; resources.workers_per_trial "
                          f"must be 1, got {cfg['resources']['workers_per_trial']}")
    if not 0 < probe["tol"] < 1:
        raise ConfigError(f"probe.tol: must be in (0, 1), got {probe['tol']}")
    bad_b = [b for b in probe["batch_sizes"] if not 1 <= b <= data["n_train"]]
    if bad_b:
        raise ConfigError(f"probe.batch_sizes: each B must be in 1..data.n_train = {data['n_train']}, got {bad_b[0]}")
    if isinstance(cfg["exec"]["pack_size"], int) and cfg["exec"]["pack_size"] < 1:
        raise ConfigError(f"exec.pack_size: must be >= 1 or auto, got {cfg['exec']['pack_size']}")
    check_report(cfg["report"])
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


# Examples in the data sets of fixed size (training/data.py draws P and the test set from these; a test checks
# that the numbers agree): digits is one pool split into train and test, MNIST and CIFAR-10 have a train pool
# and a test pool. mnist1d, the teacher perceptron and the sphere field generate any number of examples.
POOLS = {"digits_parity": (1797, None), "digits": (1797, None), "mnist_parity": (60000, 10000),
         "cifar10_animals": (50000, 10000)}
MULTICLASS = {"digits"}  # data sets of more than two classes: no hinge loss (one output, labels +-1)


def _fits_the_data_set(data: dict) -> None:
    """data.n_train (and data.n_test) no larger than the data set holds."""
    if data["name"] not in POOLS:
        return
    train_pool, test_pool = POOLS[data["name"]]
    if test_pool is None:  # one pool: P plus at least one test example
        if data["n_train"] + (data["n_test"] or 1) > train_pool:
            raise ConfigError(f"data.n_train: {data['name']} has {train_pool} examples; P = {data['n_train']} plus "
                              f"{'data.n_test = ' + str(data['n_test']) if data['n_test'] else 'a test set'} "
                              "does not fit")
        return
    if data["n_train"] > train_pool:
        raise ConfigError(f"data.n_train: {data['name']} has {train_pool} training examples, got P = {data['n_train']}")
    if data["n_test"] is not None and data["n_test"] > test_pool:
        raise ConfigError(f"data.n_test: {data['name']} has {test_pool} test examples, got {data['n_test']}")
