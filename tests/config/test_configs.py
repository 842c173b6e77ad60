"""Every option of every config group, and every sweep file, composes into valid trial configs.

In the spirit of lightning-hydra-template's tests/test_configs.py: the options are discovered by listing
conf/<group>/*.yaml and the sweeps by listing sweeps/*.yaml, so a new file is covered without editing this test.
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sgdlab import paths
from sgdlab.config.compose import Composer
from sgdlab.config.schema import ConfigError
from sgdlab.config.validation import validate
from sgdlab.sweep import spec
from sgdlab.sweep.expand import expand, parse_axes

# What every trial needs on top of the defaults: exactly one of optim.lr and optim.temperature.
BASE_OVERRIDES = ["optim.temperature=0.01"]

# "group=option" -> the fewest extra overrides that make that option valid next to the defaults (e.g. a data set
# whose data.root must be given, or whose n_train is below the default batch size). An option that neither
# composes alone nor has an entry here fails test_option_composes_and_validates.
EXTRA_OVERRIDES: dict[str, list[str]] = {"data=digits": ["loss=mse"]}  # ten classes: the hinge loss is binary

# Experiment configs (`sgdlab-run -m +experiment=NAME`) are not options of a trial's group: they set keys of many
# groups and a Hydra sweeper's grid (test_experiment_configs_expand_their_sweeper_grid).
EXPERIMENTS = sorted((paths.conf_dir() / "experiment").glob("*.yaml"))
OPTION_FILES = sorted(set(paths.conf_dir().glob("*/*.yaml")) - set(EXPERIMENTS))


def option_id(path: Path) -> str:
    return f"{path.parent.name}={path.stem}"


def overridden_keys(group: str, overrides: list[str]) -> set[str]:
    """Keys of `group` that value overrides (`group.key=value`) set, so the option's own value is replaced."""
    keys = (line.split("=", 1)[0].lstrip("+") for line in overrides)
    return {key.split(".", 1)[1] for key in keys if key.startswith(f"{group}.")}


def scale_ids(name: str) -> list[str]:
    """"sweep/scale" for every scale of a sweep (a sweep without scales has only the default one)."""
    return [f"{name}/{scale}" for scale in spec.load(name).scales or [spec.DEFAULT_SCALE]]


SWEEP_SCALES = [sweep_scale for name in spec.available() for sweep_scale in scale_ids(name)]


def first_corner(overrides: list[str]) -> list[str]:
    """One trial of a sweep: every axis at its first value."""
    return [values[0] for values in parse_axes(overrides).values()]


@pytest.fixture(scope="module")
def composer():
    return Composer()


@pytest.mark.parametrize("path", OPTION_FILES, ids=option_id)
def test_option_composes_and_validates(composer, path):
    """Defaults + `group=option` (+ its EXTRA_OVERRIDES) validate against the schema, and the group of the
    composed config is that option: the option file's keys, with its values (interpolated values, such as
    data.root from $SGDLAB_DATA_DIR, are checked for presence only; keys set by the overrides are skipped)."""
    group, choice = path.parent.name, option_id(path)
    extra = EXTRA_OVERRIDES.get(choice, [])
    overrides = [choice, *BASE_OVERRIDES, *extra]
    try:
        (raw,) = composer.raw_many([overrides])
        validate(raw)
    except ConfigError as exc:
        pytest.fail(f"{choice} with extra overrides {extra} does not compose and validate ({exc}); "
                    "list its minimal extra overrides in EXTRA_OVERRIDES", pytrace=False)
    option = OmegaConf.load(path)
    assert set(raw[group]) == set(option), f"{choice}: composed keys differ from the option file's"
    skip = overridden_keys(group, overrides)
    for key in set(option) - skip:
        if not OmegaConf.is_interpolation(option, key):
            assert raw[group][key] == option[key], f"{choice}: {group}.{key} is not the option's value"


def test_extra_overrides_name_existing_options():
    """Every EXTRA_OVERRIDES entry is an option file that exists (no stale entries)."""
    assert set(EXTRA_OVERRIDES) <= {option_id(path) for path in OPTION_FILES}


@pytest.mark.parametrize("sweep_scale", SWEEP_SCALES)
def test_sweep_scale_expands_to_valid_trials(composer, sweep_scale):
    """A sweep's default scale expands into at least one trial, every one validated by expand. Other scales
    (paper presets, up to thousands of trials: sgd_noise/paper alone takes ~30 s) expand at one corner of the
    grid, every axis at its first value, so each preset is known to give a valid config."""
    name, scale = sweep_scale.split("/")
    overrides = spec.load(name).override_strings(scale)
    if scale != spec.DEFAULT_SCALE:
        overrides = first_corner(overrides)
    assert expand(overrides, composer), f"{sweep_scale} expands to no trial"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_expand_their_sweeper_grid(composer, path):
    """An experiment's hydra.sweeper.params expand, after `+experiment=NAME`, into valid trials (as the basic
    sweeper expands them); noise_grid's are the trials of sweeps/smoke.yaml, with the same trial ids."""
    choice = f"+experiment={path.stem}"
    params = composer.sweeper_params([choice])
    assert params, f"{path.name} has no hydra.sweeper.params"
    trials = expand([choice, *params], composer)
    assert trials
    if path.stem == "noise_grid":
        assert [t.trial_id for t in trials] == [t.trial_id for t in expand(spec.load("smoke").override_strings())]
