"""The training loop and its parts on cases with known answers."""

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.func import grad

from sgdlab.config.compose import Composer
from sgdlab.training import data as datasets
from sgdlab.training import models
from sgdlab.training.losses import Loss
from sgdlab.training.loop import train


@pytest.fixture(scope="module")
def composer():
    return Composer()


def test_perceptron_on_separable_data_reaches_zero_hinge_loss(composer):
    cfg = composer(["model=perceptron", "data=teacher_perceptron", "data.dim=8", "data.n_train=64",
                    "data.n_test=256", "data.batch_size=8", "model.alpha=1", "optim.lr=8", "train.log_every=20"])
    logged = []
    result = train(cfg, on_log=lambda step, m: logged.append((step, m)))
    assert result.outcome == "converged"
    assert result.metrics["train_loss"] == 0.0 and result.metrics["n_unfitted"] == 0
    assert result.metrics["min_margin"] >= 1.0
    assert result.metrics["train_time"] == pytest.approx(8 * result.steps)
    assert logged[-1][0] == result.steps and [s for s, _ in logged[:-1]] == list(range(0, result.steps, 20))
    # The teacher frame (y = sign(x_1)): w - w0 = w_par e_1 + w_perp, from the final and initial weights.
    w0 = models.init_params(models.build(cfg["model"], (1, 1, 8), 1), [cfg["seed"]], torch.float32, "cpu")["weight"][0]
    delta = (result.params["weight"] - w0).flatten().double()
    m = result.metrics
    assert m["w_par"] == pytest.approx(float(delta[0]), rel=1e-5) and m["w_par"] > 0  # learned the teacher's sign
    assert m["w_perp"] == pytest.approx(float(delta[1:].norm()), rel=1e-5)
    assert m["w_ratio"] == pytest.approx(m["w_par"] / m["w_perp"], rel=1e-9)
    assert m["w0_norm"] == pytest.approx(float(w0.double().norm()), rel=1e-5)
    assert m["weight_delta"] == pytest.approx(math.hypot(m["w_par"], m["w_perp"]), rel=1e-5)
    mlp = train(composer(["data.n_train=64", "model.depth=1", "model.width=8", "optim.lr=1", "train.max_steps=5"]))
    assert "w_par" not in mlp.metrics  # only the teacher perceptron has a teacher frame


@pytest.mark.parametrize("model", ["mlp", "perceptron", "cnn"])
def test_hinge_gradient_on_unfitted_points_does_not_depend_on_alpha(model):
    """d/dw [max(0, 1 - y F) / alpha] = -y df/dw on unfitted points, F = alpha (f(w) - f(w0))."""
    torch.manual_seed(0)
    cfg = {"name": model, "depth": 2, "width": 16, "channels": 4, "activation": "tanh"}
    module = models.build(cfg, (1, 4, 4), 1)
    f = models.network(module)
    params0 = {k: v[0] for k, v in models.init_params(module, [0], torch.float64).items()}
    params = {k: v + 1e-4 * torch.randn_like(v) for k, v in params0.items()}
    x, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    grads = []
    for alpha in (1e-3, 1.0, 100.0):
        loss = Loss("hinge", alpha)
        F = lambda p: alpha * (f(p, x) - f(params0, x))  # noqa: E731
        assert bool((loss.margin(F(params), y) < 1).all())  # every point unfitted
        grads.append(grad(lambda p: loss.mean(F(p), y))(params))
    for g in grads[1:]:
        for k in g:
            torch.testing.assert_close(g[k], grads[0][k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [1000.0, 0.01])
def test_perceptron_at_alpha_and_T_is_the_one_at_1_and_alpha_T(composer, alpha):
    """The centred perceptron F = alpha (w - w0).x / sqrt(d) = u.x / sqrt(d), u = alpha (w - w0), with the loss
    max(0, 1 - y F) / alpha: the gradient on an unfitted point (y F < 1, a condition on u alone), -y x / sqrt(d),
    does not depend on alpha, so a step moves u by alpha lr times the batch mean of y x / sqrt(d) over its unfitted
    points: the alpha = 1 perceptron with lr' = alpha lr, i.e. T' = alpha T (T = lr / B for the perceptron). Same
    seeds, same batches: the same trajectory of u, the same steps, fitted points and test error, w - w0 divided by
    alpha. Checked in float64 to 1e-8."""
    base = ["model=perceptron", "data=teacher_perceptron", "data.dim=8", "data.n_train=64", "data.n_test=256",
            "data.batch_size=8", "data.seed=1", "seed=3", "train.dtype=float64", "train.log_every=100000"]
    scaled = train(composer([*base, f"model.alpha={alpha}", f"optim.temperature={4 / alpha}"]))
    plain = train(composer([*base, "model.alpha=1", "optim.temperature=4"]))
    assert scaled.outcome == plain.outcome == "converged" and scaled.steps == plain.steps > 50
    a, b = scaled.metrics, plain.metrics
    for key in ("weight_delta", "w_par", "w_perp"):
        assert alpha * a[key] == pytest.approx(b[key], rel=1e-8), key
    for key in ("train_loss", "test_loss"):  # hinge / alpha
        assert alpha * a[key] == pytest.approx(b[key], rel=1e-8, abs=1e-12), key
    assert alpha * a["train_time"] == pytest.approx(b["train_time"], rel=1e-12)  # sum of lr
    for key in ("test_error", "train_error", "n_unfitted", "w_ratio", "min_margin", "w0_norm"):
        assert a[key] == pytest.approx(b[key], rel=1e-8), key
    w0 = models.init_params(models.build({"name": "perceptron"}, (1, 1, 8), 1), [3], torch.float64)["weight"][0]
    torch.testing.assert_close(alpha * (scaled.params["weight"] - w0), plain.params["weight"] - w0, rtol=1e-8, atol=0)


def test_activation_scale_gives_unit_second_moment():
    assert models.activation_scale("relu") == pytest.approx(math.sqrt(0.5), rel=1e-10)
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("tanh", "gelu", "softplus"):
        second = (models.ACTIVATIONS[name](z) / models.activation_scale(name)).pow(2).mean()
        assert float(second) == pytest.approx(1.0, abs=5e-3)


def test_divergence_is_detected_and_is_an_outcome(composer):
    cfg = composer(["loss=mse", "model.depth=2", "model.width=16", "data.n_train=64", "optim.lr=1e6",
                    "train.max_steps=200"])
    result = train(cfg)
    assert result.outcome == "diverged" and result.steps < 200


def test_max_steps_and_loss_threshold(composer):
    base = ["loss=cross_entropy", "model.depth=1", "model.width=16", "data.n_train=128", "optim.lr=16",
            "train.stop_when_fitted=false", "train.log_every=10"]
    capped = train(composer(base + ["train.max_steps=30"]))
    assert capped.outcome == "max_steps" and capped.steps == 30
    stopped = train(composer(base + ["train.max_steps=5000", "train.loss_threshold=0.3"]))
    assert stopped.outcome == "converged" and stopped.metrics["train_loss"] <= 0.3 and stopped.steps % 10 == 0


def test_same_config_same_numbers(composer):
    cfg = composer(["model.depth=2", "model.width=16", "data.n_train=128", "optim.temperature=0.01",
                    "train.max_steps=300", "seed=3"])
    a, b = train(cfg), train(cfg)
    assert a.metrics == b.metrics
    c = train({**cfg, "seed": 4})
    assert c.metrics != a.metrics


@pytest.mark.parametrize("alpha", [0.25, 4.0])
def test_centered_predictor_starts_at_zero(composer, alpha):
    """F(w0) = 0, so after one step of a negligible lr every hinge loss is 1/alpha and the error is 1."""
    cfg = composer(["model.depth=2", "model.width=16", "data.n_train=64", "optim.lr=1e-12", "train.max_steps=1",
                    "train.log_every=1", f"model.alpha={alpha}"])
    result = train(cfg)
    assert result.metrics["train_loss"] == pytest.approx(1 / alpha, rel=1e-6)
    assert result.metrics["weight_change"] < 1e-9 and result.metrics["n_unfitted"] == 64


def test_adam_trains(composer):
    cfg = composer(["optim=adam", "optim.lr=1e-2", "model.depth=1", "model.width=16", "data.n_train=128",
                    "train.max_steps=2000", "train.log_every=100"])
    result = train(cfg)
    assert result.outcome == "converged" and result.metrics["test_error"] < 0.2


def test_teacher_perceptron_boundary_density():
    """P(|x_1| < eps) ~ eps^(chi + 1): chi = 1 depletes the boundary."""
    base = {"name": "teacher_perceptron", "n_train": 100_000, "n_test": 1, "batch_size": 1, "seed": 0, "dim": 3}
    eps = 0.05
    for chi, expected in ((0.0, math.erf(eps / math.sqrt(2))), (1.0, 1 - math.exp(-eps**2 / 2))):
        x, y, _, _ = datasets.teacher_perceptron({**base, "chi": chi})
        frac = float(np.mean(np.abs(x[:, 0, 0, 0]) < eps))
        assert frac == pytest.approx(expected, rel=0.15, abs=2e-4)
        assert np.array_equal(y, (x[:, 0, 0, 0] > 0).astype(np.int64))
        assert abs(x[:, 0, 0, 1].std() - 1) < 0.02


def test_sphere_field_points_labels_and_seeds():
    """x = sqrt(d) u with u uniform on the unit sphere (mean 0, E[u u^T] = I/d), y = sign f*(u) with
    f*(u) = H^-1/2 sum_h s_h (|theta_h . u|^a - m_a) and m_a = E|u_1|^a (1/2 for a = 1 on S^2, 1/d for a = 2): f* has
    no constant part and about half the labels are +1; the same seed gives the same data, a larger P extends the
    training set and keeps the test set."""
    base = {"name": "sphere_field", "n_train": 4096, "n_test": 1024, "batch_size": 16, "seed": 0, "teacher_width": 2000}
    for dim, power, mean in ((3, 1.0, 0.5), (5, 2.0, 0.2)):
        assert datasets.abs_power_mean(dim, power) == pytest.approx(mean, rel=1e-12)
        d = datasets.load({**base, "dim": dim, "power": power})
        assert d.x_train.shape == (4096, 1, 1, dim) and d.x_test.shape == (1024, 1, 1, dim) and d.n_classes == 2
        u = d.x_train.reshape(-1, dim).numpy() / math.sqrt(dim)
        assert np.allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-12)
        assert np.abs(u.mean(axis=0)).max() < 0.05 and np.allclose(u.T @ u / len(u), np.eye(dim) / dim, atol=0.02)
        theta, signs = datasets.sphere_field_teacher(0, dim, 2000)
        field = (np.abs(u @ theta.T) ** power - mean) @ signs / math.sqrt(2000)
        assert np.array_equal(d.y_train.numpy(), (field > 0).astype(np.int64))
        assert abs(field.mean()) < 0.1 * field.std() and 0.4 < float(d.y_train.double().mean()) < 0.6
    cfg = {**base, "dim": 5, "power": 1.0}
    x, y, x_test, y_test = datasets.sphere_field(cfg)
    again = datasets.sphere_field(cfg)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, x_test, y_test), again))
    larger = datasets.sphere_field({**cfg, "n_train": 8192})
    assert np.array_equal(larger[0][:4096], x) and np.array_equal(larger[2], x_test)
    assert not np.array_equal(datasets.sphere_field({**cfg, "seed": 1})[0], x)


def test_digits_and_mnist1d_parity():
    d = datasets.load({"name": "digits_parity", "n_train": 200, "n_test": None, "batch_size": 1, "seed": 0})
    assert d.x_train.shape == (200, 1, 8, 8) and len(d.x_test) == 1797 - 200
    assert torch.allclose(d.x_train.flatten(1).norm(dim=1), torch.full((200,), 8.0, dtype=torch.float64))
    assert 0.4 < float(d.y_train.double().mean()) < 0.6
    # exactly P and n_test points (mnist1d makes num_samples // 10 signals per class and splits with int())
    for P, n_test in ((100, 50), (511, 1000), (512, 1000), (1021, 1000), (1024, 1000), (16384, 1000)):
        m = datasets.load({"name": "mnist1d_parity", "n_train": P, "n_test": n_test, "batch_size": 1, "seed": 0})
        assert m.x_train.shape == (P, 1, 1, 40) and m.x_test.shape == (n_test, 1, 1, 40) and m.n_classes == 2
    assert 0.4 < float(m.y_train.double().mean()) < 0.6
    smaller = datasets.load({"name": "mnist1d_parity", "n_train": 512, "n_test": 1000, "batch_size": 1, "seed": 0})
    assert not torch.equal(smaller.x_train, m.x_train[:512])  # another pool: (P + n_test) rounded up to 10
    ten = datasets.load({"name": "digits", "n_train": 300, "n_test": 100, "batch_size": 1, "seed": 0})
    assert ten.x_train.shape == (300, 1, 8, 8) and len(ten.x_test) == 100 and ten.n_classes == 10
    assert set(ten.y_train.tolist()) == set(range(10))
    parity = datasets.load({"name": "digits_parity", "n_train": 300, "n_test": 100, "batch_size": 1, "seed": 0})
    assert torch.equal(parity.x_train, ten.x_train) and torch.equal(parity.y_train, (ten.y_train % 2 == 0).long())
    with pytest.raises(ValueError, match="digits has 1797 examples"):
        datasets.load({"name": "digits_parity", "n_train": 1797, "n_test": None, "batch_size": 1, "seed": 0})


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert datasets.read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist() == list(range(10))
    d = datasets.load({"name": "mnist_parity", "n_train": 20, "n_test": 10, "batch_size": 1, "seed": 0,
                       "root": str(tmp_path)})
    assert d.x_train.shape == (20, 1, 28, 28) and sorted(d.y_test.tolist()) == [0] * 5 + [1] * 5


def test_cifar_reader_and_missing_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (10, 3072)).astype(np.uint8), b"labels": list(range(10))}, f)
    d = datasets.load({"name": "cifar10_animals", "n_train": 40, "n_test": 10, "batch_size": 1, "seed": 0,
                       "root": str(tmp_path)})
    assert d.x_train.shape == (40, 3, 32, 32) and int(d.y_test.sum()) == 6  # six animal classes of ten
    with open(tmp_path / "evil", "wb") as f:
        pickle.dump({b"data": np.zeros(1), b"labels": print}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        datasets.read_cifar_batch(tmp_path / "evil")
    with pytest.raises(datasets.DataUnavailable, match="not found"):
        datasets.load({"name": "cifar10_animals", "n_train": 4, "n_test": 1, "batch_size": 1, "seed": 0,
                       "root": str(tmp_path / "nowhere")})
