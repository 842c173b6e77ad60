"""Sweep files, expansion into trials, and trial identity."""

import subprocess
import sys

import pytest

from sgdlab.config.schema import ConfigError
from sgdlab.sweep import spec
from sgdlab.sweep.expand import expand
from sgdlab.sweep.identity import probe_id, trial_id

from conftest import run_sgdlab

TINY = """
description: tiny
overrides: [model.depth=1, model.width=8, data.n_train=64, optim.temperature=0.01]
axes:
  model.alpha: 1, 16
  seed: [0, 1, 2]
"""


def test_expansion_is_the_cartesian_product(sweeps_dir):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    trials = expand(spec.load("tiny").override_strings())
    assert len(trials) == 6
    assert [(t.swept["model.alpha"], t.swept["seed"]) for t in trials] == [
        ("1", "0"), ("1", "1"), ("1", "2"), ("16", "0"), ("16", "1"), ("16", "2")]
    assert len({t.trial_id for t in trials}) == 6
    assert all(t.config["model"]["width"] == 8 for t in trials)


def test_command_line_overrides_replace_or_add_axes(sweeps_dir):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    base = spec.load("tiny").override_strings()
    assert len(expand(base + ["seed=5"])) == 2  # a plain value replaces the seed axis
    assert len(expand(base + ["data.n_train=32,64"])) == 12  # a sweep value adds an axis
    assert len(expand(base + ["seed=range(4)"])) == 8


def test_glob_sweeps_the_options_of_a_config_group():
    """model=glob(...) is an axis of the model options it selects, as in Hydra's sweepers."""
    base = ["optim.temperature=0.01", "data.n_train=64", "data.batch_size=8"]
    trials = expand(base + ["model=glob([mlp,perceptron])"])
    assert [t.config["model"]["name"] for t in trials] == ["mlp", "perceptron"]
    assert [t.swept["model"] for t in trials] == ["mlp", "perceptron"]
    trials = expand(base + ["model=glob(*,exclude=[cnn,vgg])", "loss=glob(*,exclude=cross_entropy)"])
    assert sorted((t.config["model"]["name"], t.config["loss"]["name"]) for t in trials) == [
        ("mlp", "hinge"), ("mlp", "mse"), ("perceptron", "hinge"), ("perceptron", "mse")]


def test_identity_ignores_non_identity_groups_and_lr_spelling(sweeps_dir):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    base = spec.load("tiny").override_strings() + ["seed=0", "model.alpha=1"]
    (trial,) = expand(base)
    (same,) = expand(base + ["resources.cpus=2", "cluster.num_cpus=1", "tracking.stale_after_s=5",
                             "fault.raise_at_step=3"])
    lr = trial.config["optim"]["lr"]
    (spelled,) = expand([b for b in base if "temperature" not in b] + [f"optim.lr={lr}"])
    (other,) = expand(base + ["model.alpha=2"])
    assert trial.trial_id == same.trial_id == spelled.trial_id != other.trial_id


def test_trial_id_is_stable_across_processes():
    config = {"model": {"alpha": 0.5, "name": "mlp"}, "seed": 3, "optim": {"lr": 1e-3}, "tracking": {"uri": "x"}}
    code = f"from sgdlab.sweep.identity import trial_id; print(trial_id({config!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == trial_id(config) and len(other) == 12
    assert trial_id({**config, "tracking": {"uri": "y"}}) == trial_id(config)


def test_an_end_probe_s_id_counts_probe_noise_only_when_set(sweeps_dir):
    """Probes recorded before probe.noise existed keep their ids; a noise probe is another probe."""
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    (trial,) = expand(spec.load("tiny").override_strings() + ["seed=0", "model.alpha=1"])
    before = {**trial.config, "probe": {k: v for k, v in trial.config["probe"].items() if k != "noise"}}
    noisy = {**trial.config, "probe": {**trial.config["probe"], "noise": True}}
    assert trial.config["probe"]["noise"] is False
    assert probe_id(trial.config, trial.trial_id) == probe_id(before, trial.trial_id) != probe_id(noisy,
                                                                                                  trial.trial_id)


@pytest.mark.parametrize("name, message", [
    ("no_such_sweep", "unknown sweep 'no_such_sweep'"),
    ("../etc/passwd", "no paths"),
    ("a/b", "no paths"),
])
def test_bad_sweep_names(sweeps_dir, name, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        spec.load(name)


def test_empty_axis_and_unknown_sweep_key(sweeps_dir):
    (sweeps_dir / "empty.yaml").write_text("axes:\n  seed: []\n")
    with pytest.raises(ConfigError, match="axes.seed: empty axis"):
        spec.load("empty")
    (sweeps_dir / "typo.yaml").write_text("axis:\n  seed: [1]\n")
    with pytest.raises(ConfigError, match="unknown key 'axis'"):
        spec.load("typo")


def test_repository_sweeps_expand():
    for name in spec.available():
        trials = expand(spec.load(name).override_strings())
        assert trials, name
    assert len(expand(spec.load("smoke").override_strings())) == 8


def test_dry_run_prints_table_and_creates_nothing(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    out = run_sgdlab("sweep", "tiny", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for trial in expand(spec.load("tiny").override_strings()):
        assert trial.trial_id in out.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_scales_select_presets(sweeps_dir):
    (sweeps_dir / "scaled.yaml").write_text(TINY + "scales:\n  small: []\n  paper: [data.n_train=128, 'seed=range(5)']\n")
    sweep = spec.load("scaled")
    assert len(expand(sweep.override_strings())) == 6
    paper = expand(sweep.override_strings("paper"))
    assert len(paper) == 10 and {t.config["data"]["n_train"] for t in paper} == {128}
    with pytest.raises(ConfigError, match="scale=huge: unknown scale"):
        sweep.override_strings("huge")
    assert spec.split_scale(["seed=1", "scale=paper"]) == ("paper", ["seed=1"])


def test_run_names_tell_seed_from_data_seed_and_show_P():
    from sgdlab.tracking.tags import run_name

    assert run_name({"model.alpha": "1", "seed": "0"}, {"data.n_train": "64"}) == "alpha=1 seed=0 P=64"
    assert run_name({"data.n_train": "64", "seed": "0"}, {"data.n_train": "64"}) == "P=64 seed=0"  # once
    assert run_name({"seed": "0", "data.seed": "1"}) == "seed=0 data.seed=1"
    assert run_name({"data.seed": "1"}) == "data.seed=1"  # never mistaken for the trial's seed
    assert run_name({"model.width": "8", "probe.width": "2"}) == "model.width=8 probe.width=2"
    assert run_name({}) == "trial"
