"""Composition and validation of trial configs."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sgdlab import paths
from sgdlab.config.compose import Composer
from sgdlab.config.schema import ConfigError


@pytest.fixture(scope="module")
def composer():
    return Composer()


def test_defaults_compose_and_validate(composer):
    cfg = composer(["optim.temperature=0.01"])
    assert cfg["data"]["name"] == "digits_parity" and cfg["model"]["name"] == "mlp"
    assert cfg["optim"]["lr"] == pytest.approx(0.01 * cfg["data"]["batch_size"] * cfg["model"]["width"])


@pytest.mark.parametrize("overrides, lr", [
    (["model=mlp", "model.width=64", "data.batch_size=8", "optim.temperature=0.5"], 0.5 * 8 * 64),
    (["model=cnn", "model.channels=16", "data.batch_size=4", "optim.temperature=0.25"], 0.25 * 4 * 16),
    (["model=perceptron", "data.batch_size=32", "optim.temperature=0.125"], 0.125 * 32),
])
def test_temperature_convention(composer, overrides, lr):
    """T = lr / (B * width_scale): width for the mean-field MLP, channels for the CNN, 1 for the perceptron."""
    cfg = composer(overrides)
    assert cfg["optim"]["lr"] == pytest.approx(lr)
    back = composer([o for o in overrides if "temperature" not in o] + [f"optim.lr={lr}"])
    assert back["optim"]["temperature"] == pytest.approx(cfg["optim"]["temperature"])


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=0.1"], "optim.lrr: unknown config key"),
    (["optim.lr=0.1", "optim.temperature=0.1"], "give exactly one"),
    ([], "give exactly one"),
    (["optim.lr=0"], "optim.lr: must be > 0"),
    (["optim.lr=-1"], "optim.lr: must be > 0"),
    (["optim.lr=0.1", "data.batch_size=2000"], "data.batch_size: B = 2000 exceeds data.n_train"),
    (["optim.lr=0.1", "model.alpha=0"], "model.alpha: must be > 0"),
    (["optim.lr=0.1", "data.batch_size=abc"], "data.batch_size: expected an integer"),
    (["optim.lr=0.1", "model.center=maybe"], "model.center: expected true/false"),
    (["optim.lr=0.1", "model.activation=swish"], "model.activation: expected"),
    (["optim.lr=0.1", "model=resnet"], "model=resnet: unknown option; allowed: cnn, mlp, perceptron"),
    (["optim.lr=0.1", "+bogus=1"], "bogus: unknown key"),
    (["optim.lr=0.1", "train.dtype=float16"], "train.dtype"),
    (["optim.lr=0.1", "data=teacher_perceptron", "data.chi=-2"], "data.chi: must be > -1"),
    (["optim.lr=0.1", "data=sphere_field", "data.dim=1"], "data.dim: must be >= 2"),
    (["optim.lr=0.1", "data=sphere_field", "data.power=0"], "data.power: must be > 0"),
    (["optim.lr=0.1", "data=sphere_field", "data.teacher_width=0"], "data.teacher_width: must be >= 1"),
])
def test_bad_input_is_one_clear_line(composer, overrides, message):
    with pytest.raises(ConfigError) as info:
        composer(overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["model=perceptron", "data=teacher_perceptron", "data.chi=1", "optim.lr=2"],
    ["optim=adam", "optim.beta1=0.5", "optim.lr=0.1", "loss=cross_entropy"],
    ["model.alpha=2", "model=cnn", "optim.temperature=1e-3", "seed=7"],
    ["~fault", "+fault=none", "optim.lr=1", "train.max_steps=5"],
])
def test_fast_composition_equals_hydra_compose(composer, overrides):
    """Composer composes once per set of group choices then applies value overrides; it must equal compose()."""
    with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
        expected = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    assert composer.raw_many([overrides]) == [expected]


def test_a_config_recorded_before_the_newer_keys_resubmits_with_their_defaults():
    """Resubmit reruns a recorded config: keys added since it was recorded (train.compile_after,
    tracking.flush_s) take their defaults instead of failing the trial."""
    from sgdlab.config.compose import Composer
    from sgdlab.config.recorded import apply_runtime_overrides

    recorded = Composer()(["optim.lr=0.1"])
    del recorded["train"]["compile_after"], recorded["tracking"]["flush_s"]
    config = apply_runtime_overrides(recorded, {})
    assert config["train"]["compile_after"] == 1000 and config["tracking"]["flush_s"] == 15.0
