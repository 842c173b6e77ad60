"""Hessian probes against dense float64 ground truth (torch.func.hessian) on tiny models, and against known matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sgdlab.probes.batch import batch_sharpness, minibatch_curvature, sampled_batches
from sgdlab.probes.blocks import block_probes
from sgdlab.probes.density import density_on_grid, moments, slq
from sgdlab.probes.hvp import CurvatureOperator, ParamLayout
from sgdlab.probes.lanczos import top_eigenpairs
from sgdlab.probes import noise as noise_module
from sgdlab.probes.noise import gradient_noise
from sgdlab.probes.reference import dense_curvature
from sgdlab.probes.trace import hutch_plus_plus, hutchinson

torch.set_default_dtype(torch.float64)


class Problem:
    """A tiny float64 model in eval mode, its predict / loss pair and three batches of unequal sizes."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, alpha: float = 1.0):
        self.model = model.double().eval()
        with torch.no_grad():
            f0 = self.model(x)  # a batch carries (x, y, f0): the predictor is centred at initialization
        self.data = (x, y, f0)
        self.params = {name: p.detach() for name, p in self.model.named_parameters()}
        self.alpha = alpha
        self.loss_name = loss
        self.batches = [tuple(t[a:b] for t in self.data) for a, b in [(0, 20), (20, 33), (33, 40)]]
        self._dense: dict[tuple[str, int], torch.Tensor] = {}

    def predict(self, params, batch):
        return self.alpha * (torch.func.functional_call(self.model, params, (batch[0],)) - batch[2])

    def loss(self, F, batch):
        if self.loss_name == "cross_entropy":
            return nn.functional.cross_entropy(F, batch[1])
        onehot = batch[1][:, None] == torch.arange(F.shape[1])  # one_hot without .item(): vmap can take it
        return 0.5 * ((F - onehot.to(F.dtype)) ** 2).sum(dim=1).mean()

    def operator(self, **kwargs) -> CurvatureOperator:
        return CurvatureOperator(self.predict, self.loss, self.params, self.batches, **kwargs)

    def whole(self) -> CurvatureOperator:
        """The full-data Hessian as one batch of all 40 examples (cheap products: the gradient graph is kept)."""
        return CurvatureOperator(self.predict, self.loss, self.params, [self.data])

    def dense(self, matrix="full", batch_index=0, batches=None) -> torch.Tensor:
        if batches is not None:
            return dense_curvature(self.predict, self.loss, self.params, batches, matrix, batch_index)
        key = (matrix, batch_index if matrix == "batch" else 0)
        if key not in self._dense:
            self._dense[key] = dense_curvature(self.predict, self.loss, self.params, self.batches, *key)
        return self._dense[key]


def mlp() -> Problem:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    return Problem(model, torch.randn(40, 6), torch.randint(0, 3, (40,)), "cross_entropy", alpha=2.0)


def cnn() -> Problem:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(64, 3))
    return Problem(model, torch.randn(40, 1, 6, 6), torch.randint(0, 3, (40,)), "mse")


def batchnorm_mlp() -> Problem:
    """BatchNorm in eval mode with non-trivial running statistics: an affine map per example."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 3))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return Problem(model, torch.randn(40, 5), torch.randint(0, 3, (40,)), "cross_entropy")


PROBLEMS = {"mlp": mlp, "cnn": cnn, "batchnorm": batchnorm_mlp}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny products run fastest on one thread, and do not fight a busy machine for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request) -> Problem:
    return PROBLEMS[request.param]()


@pytest.fixture(scope="module")
def mlp_problem() -> Problem:
    return mlp()


@pytest.fixture(scope="module")
def mlp_hessian(mlp_problem) -> torch.Tensor:
    return mlp_problem.dense("full")


class MatrixOperator:
    """A known symmetric matrix as an operator."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.dim, self.dtype, self.device = matrix, matrix.shape[0], matrix.dtype, matrix.device

    def matvec(self, v):
        return self.matrix @ v


def with_eigenvalues(eigenvalues, seed=0) -> MatrixOperator:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed)))
    return MatrixOperator(q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T)


def assert_matvec_matches(op, dense, n_vectors=3):
    for v in torch.randn(n_vectors, op.dim, generator=torch.Generator().manual_seed(5)):
        expected = dense @ v
        assert torch.linalg.vector_norm(op.matvec(v) - expected) <= 1e-10 * max(1.0, float(expected.norm()))


# ---------------------------------------------------------------- hvp


@pytest.mark.parametrize("matrix,method,keep_graph", [
    ("full", "double_backward", False), ("full", "double_backward", True), ("full", "forward_over_reverse", None),
    ("full", "auto", None), ("batch", "double_backward", None), ("batch", "forward_over_reverse", None),
    ("batch", "auto", None), ("ggn", "auto", None)])
def test_products_match_dense(problem, matrix, method, keep_graph):
    op = problem.operator(matrix=matrix, batch_index=1, method=method, keep_graph=keep_graph)
    dense = problem.dense(matrix, batch_index=1)
    assert_matvec_matches(op, dense)
    assert_matvec_matches(op, dense)  # a kept gradient graph serves later products too
    assert op.n_products == 6
    assert op.description["matrix"] == matrix
    assert op.description["n_examples"] == (13 if matrix == "batch" else 40)
    assert op.description["normalization"] == "mean over examples"
    assert op.method in ("double_backward", "forward_over_reverse", "jvp_loss_hessian_vjp")


def test_full_hessian_is_size_weighted_mean_of_batch_hessians(problem):
    # Independent of the batching: the Hessian of the mean loss over all 40 examples as a single batch.
    whole = problem.dense("full", batches=[problem.data])
    weighted = sum(len(b[0]) / 40 * problem.dense("batch", batch_index=i) for i, b in enumerate(problem.batches))
    assert torch.allclose(whole, weighted, rtol=0, atol=1e-12)
    assert_matvec_matches(problem.operator(matrix="full"), whole)
    assert not torch.allclose(problem.dense("batch", batch_index=0), whole, atol=1e-3)  # the test can fail


def test_torch_mse_loss_everywhere():
    # Forward-over-reverse through F.mse_loss(reduction="mean") raises in torch 2.13 (pytorch#123996):
    # "auto" must fall back to double backward, and the Gauss-Newton product must not depend on it.
    problem = cnn()
    problem.loss = lambda F, batch: nn.functional.mse_loss(F, nn.functional.one_hot(batch[1], F.shape[1]).double())
    for matrix in ("full", "ggn"):
        op = problem.operator(matrix=matrix)
        assert_matvec_matches(op, problem.dense(matrix))


def test_ggn_differs_from_hessian_and_is_psd(mlp_problem, mlp_hessian):
    ggn = mlp_problem.dense("ggn")
    assert torch.linalg.eigvalsh(ggn).min() > -1e-12
    assert not torch.allclose(ggn, mlp_hessian, atol=1e-3)


def test_float32_operator_agrees_with_float64(mlp_problem, mlp_hessian):
    # functional_call replaces every tensor of the (buffer-free) module: float32 params and data give float32
    params = {name: p.float() for name, p in mlp_problem.params.items()}
    batches = [tuple(t.float() if t.is_floating_point() else t for t in b) for b in mlp_problem.batches]
    op = CurvatureOperator(mlp_problem.predict, mlp_problem.loss, params, batches)
    v = torch.randn(op.dim)
    assert op.dtype == torch.float32 and op.matvec(v).dtype == torch.float32
    assert torch.allclose(op.matvec(v).double(), mlp_hessian @ v, rtol=0, atol=1e-5 * float(mlp_hessian.norm()))


def test_param_layout_round_trip(mlp_problem):
    layout = ParamLayout.of(mlp_problem.params)
    flat = layout.flatten(mlp_problem.params)
    assert flat.shape == (layout.dim,) == (sum(p.numel() for p in mlp_problem.params.values()),)
    for name, tensor in layout.unflatten(flat).items():
        assert torch.equal(tensor, mlp_problem.params[name])
        assert torch.equal(flat[layout.slices[name]], mlp_problem.params[name].reshape(-1))


def test_bad_arguments(mlp_problem):
    with pytest.raises(ValueError, match="matrix"):
        mlp_problem.operator(matrix="fisher")
    with pytest.raises(ValueError, match="method"):
        mlp_problem.operator(matrix="ggn", method="double_backward")


# ---------------------------------------------------------------- lanczos


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("matrix", ["full", "ggn"])
def test_top_eigenpairs_match_dense(problem, k, matrix):
    exact = np.linalg.eigvalsh(problem.dense(matrix).numpy())[::-1][:k]
    op = problem.operator(matrix=matrix)
    result = top_eigenpairs(op, k=k, tol=1e-10, return_vectors=True)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, exact, rtol=1e-6)
    assert result.n_products == op.n_products < op.dim
    dense = problem.dense(matrix)
    for value, vector in zip(result.eigenvalues, result.vectors.T):
        assert float((dense @ vector - value * vector).norm()) <= 1e-8 * abs(value)


def test_loose_tolerance_stops_early_within_its_bound(mlp_problem, mlp_hessian):
    exact = np.linalg.eigvalsh(mlp_hessian.numpy())[::-1]
    loose = top_eigenpairs(mlp_problem.operator(), k=1, tol=1e-2)
    tight = top_eigenpairs(mlp_problem.operator(), k=1, tol=1e-10)
    assert loose.converged and loose.n_products < tight.n_products
    assert abs(loose.eigenvalues[0] - exact[0]) <= loose.residuals[0] <= 1e-2 * abs(loose.eigenvalues[0])


def test_lanczos_k_larger_than_dim_returns_the_whole_spectrum():
    op = with_eigenvalues([3.0, -1.0, 0.5, 2.0, 7.0, -4.0])
    result = top_eigenpairs(op, k=10)
    assert result.converged and result.n_products == 6
    np.testing.assert_allclose(result.eigenvalues, [7.0, 3.0, 2.0, 0.5, -1.0, -4.0], atol=1e-12)


def test_lanczos_invariant_subspace_restarts_until_k_values():
    # Rank 3 in dimension 40: the Krylov space of a random start is invariant after 4 steps (3 values and 0);
    # k = 5 needs a restart orthogonal to it, which finds the second zero.
    op = with_eigenvalues([5.0, 2.0, -1.0] + [0.0] * 37)
    result = top_eigenpairs(op, k=5, tol=1e-8)
    assert result.converged and result.n_products == 5
    np.testing.assert_allclose(result.eigenvalues, [5.0, 2.0, 0.0, 0.0, -1.0], atol=1e-10)


def test_lanczos_reports_non_convergence_at_max_iter():
    op = with_eigenvalues(np.linspace(1.0, 1.1, 200))
    result = top_eigenpairs(op, k=1, tol=1e-12, max_iter=5)
    assert not result.converged and result.n_products == 5


# ---------------------------------------------------------------- trace


def z_scores(estimator, op, exact, n, seeds=range(8)) -> np.ndarray:
    estimates = [estimator(op, n, seed=seed) for seed in seeds]
    assert all(e.n_products == n for e in estimates)
    return np.array([(e.mean - exact) / e.stderr for e in estimates])


@pytest.mark.parametrize("estimator", [hutchinson, hutch_plus_plus])
def test_trace_estimates_within_their_standard_errors(mlp_problem, mlp_hessian, estimator):
    exact = float(torch.trace(mlp_hessian))
    z = z_scores(estimator, mlp_problem.whole(), exact, 60)
    assert np.all(np.abs(z) < 3)
    assert 0.3 < np.sqrt(np.mean(z**2)) < 2.0  # the standard error is the size of the error, not far off


def test_hutchinson_stderr_matches_the_rademacher_variance(mlp_problem, mlp_hessian):
    h = mlp_hessian
    predicted = math.sqrt(2 * (float((h**2).sum()) - float((torch.diagonal(h) ** 2).sum())) / 200)
    estimate = hutchinson(mlp_problem.whole(), 200, seed=3)
    assert 0.7 * predicted < estimate.stderr < 1.4 * predicted


def test_hutch_plus_plus_beats_hutchinson_on_outliers():
    spectrum = np.concatenate([[400.0, 250.0, 120.0, 80.0, 60.0], np.random.default_rng(0).uniform(0.5, 1.5, 195)])
    op, exact = with_eigenvalues(spectrum, seed=1), float(spectrum.sum())
    plain, plus = hutchinson(op, 60, seed=0), hutch_plus_plus(op, 60, seed=0)
    assert plus.stderr < plain.stderr / 10
    assert abs(plus.mean - exact) < 3 * plus.stderr
    assert abs(plain.mean - exact) < 3 * plain.stderr


def test_estimates_are_seeded(mlp_problem):
    assert hutchinson(mlp_problem.operator(), 5, seed=7) == hutchinson(mlp_problem.operator(), 5, seed=7)
    assert hutch_plus_plus(mlp_problem.operator(), 9, seed=7) == hutch_plus_plus(mlp_problem.operator(), 9, seed=7)
    assert hutchinson(mlp_problem.operator(), 5, seed=7) != hutchinson(mlp_problem.operator(), 5, seed=8)


# ---------------------------------------------------------------- density


def test_slq_moments_within_start_sampling_error(mlp_problem, mlp_hessian):
    n_starts, dim = 30, mlp_hessian.shape[0]
    quadrature = slq(mlp_problem.whole(), n_starts=n_starts, n_steps=20, seed=0)
    assert quadrature.n_products == n_starts * 20
    estimates, stderrs = moments(quadrature, [1, 2])
    for p, estimate, stderr in zip([1, 2], estimates, stderrs):
        a = torch.linalg.matrix_power(mlp_hessian, p)
        exact = float(torch.trace(a)) / dim
        # one start v = z / sqrt(dim), z Rademacher: Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2) / dim^2
        sd = math.sqrt(2 * (float((a**2).sum()) - float((torch.diagonal(a) ** 2).sum()))) / dim
        assert abs(estimate - exact) < 4 * sd / math.sqrt(n_starts)
        assert 0.4 * sd / math.sqrt(n_starts) < stderr < 2.5 * sd / math.sqrt(n_starts)


def test_slq_nodes_and_weights(mlp_problem, mlp_hessian):
    exact = np.linalg.eigvalsh(mlp_hessian.numpy())
    quadrature = slq(mlp_problem.whole(), n_starts=3, n_steps=15, seed=1)
    for nodes, weights in zip(quadrature.nodes, quadrature.weights):
        assert len(nodes) == len(weights) == 15
        assert abs(weights.sum() - 1) < 1e-12 and np.all(weights >= 0)
        assert exact[0] - 1e-10 <= nodes.min() and nodes.max() <= exact[-1] + 1e-10


def test_slq_is_exact_on_an_invariant_krylov_space():
    # Three distinct eigenvalues: every start's Krylov space is invariant after three steps.
    op = with_eigenvalues([2.0] * 10 + [-1.0] * 5 + [0.5] * 15)
    quadrature = slq(op, n_starts=4, n_steps=10, seed=0)
    assert quadrature.n_products == 12
    for nodes in quadrature.nodes:
        np.testing.assert_allclose(nodes, [-1.0, 0.5, 2.0], atol=1e-10)


def test_density_integrates_to_one(mlp_problem):
    quadrature = slq(mlp_problem.whole(), n_starts=4, n_steps=20, seed=0)
    sigma = 0.01
    low = min(n.min() for n in quadrature.nodes) - 12 * sigma
    high = max(n.max() for n in quadrature.nodes) + 12 * sigma
    grid = np.linspace(low, high, 20001)
    density = density_on_grid(quadrature.nodes, quadrature.weights, grid, sigma)
    assert np.all(density >= 0)
    assert abs(np.trapezoid(density, grid) - 1) < 1e-6


# ---------------------------------------------------------------- blocks


def test_block_probes_match_diagonal_blocks(mlp_problem, mlp_hessian):
    op = mlp_problem.whole()
    probes = block_probes(op, n_samples=40, tol=1e-10, seed=0)
    slices = op.layout.slices
    assert list(probes) == list(slices)
    total_estimate, total_variance = 0.0, 0.0
    for name, probe in probes.items():
        block = mlp_hessian[slices[name], slices[name]]
        assert probe.dim == block.shape[0] and probe.trace.n_products == 40
        assert abs(probe.trace.mean - float(torch.trace(block))) < 4 * probe.trace.stderr + 1e-12
        np.testing.assert_allclose(probe.top.eigenvalues[0], float(torch.linalg.eigvalsh(block)[-1]), rtol=1e-6,
                                   atol=1e-12)
        total_estimate += probe.trace.mean
        total_variance += probe.trace.stderr**2
    assert abs(total_estimate - float(torch.trace(mlp_hessian))) < 4 * math.sqrt(total_variance)


def test_block_groups(mlp_problem, mlp_hessian):
    op = mlp_problem.whole()
    groups = {"first": ["0.weight", "0.bias"], "rest": ["2.weight", "2.bias", "4.weight", "4.bias"]}
    probes = block_probes(op, groups, n_samples=10, tol=1e-10)
    first = slice(0, op.layout.slices["0.bias"].stop)
    rest = slice(first.stop, op.dim)
    for label, part in [("first", first), ("rest", rest)]:
        block = mlp_hessian[part, part]
        np.testing.assert_allclose(probes[label].top.eigenvalues[0], float(torch.linalg.eigvalsh(block)[-1]),
                                   rtol=1e-6)
    with pytest.raises(ValueError, match="unknown parameter names"):
        block_probes(op, {"x": ["nope"]})


# ---------------------------------------------------------------- mini-batch versus full


def test_minibatch_curvature_matches_dense(problem):
    data = problem.data
    result = minibatch_curvature(problem.predict, problem.loss, problem.params, data, batch_size=12, n_batches=3,
                                 chunk_size=16, tol=1e-10, seed=4)
    full = problem.dense(batches=[data])
    np.testing.assert_allclose(result.full_lambda_max, float(torch.linalg.eigvalsh(full)[-1]), rtol=1e-6)
    layout = ParamLayout.of(problem.params)
    w = layout.flatten(problem.params)
    for index, value, sharpness in zip(result.indices, result.batch_lambda_max, result.batch_sharpness):
        assert len(index) == 12 and len(torch.unique(index)) == 12
        batch = tuple(t[index] for t in data)
        h = problem.dense(batches=[batch])
        np.testing.assert_allclose(value, float(torch.linalg.eigvalsh(h)[-1]), rtol=1e-6)
        g = torch.func.grad(lambda flat: problem.loss(problem.predict(layout.unflatten(flat), batch), batch))(w)
        np.testing.assert_allclose(sharpness, float(g @ h @ g / (g @ g)), rtol=1e-8)
    assert result.mean == pytest.approx(result.batch_lambda_max.mean())
    assert result.stderr == pytest.approx(result.batch_lambda_max.std(ddof=1) / math.sqrt(3))
    assert result.batch_sharpness_mean == pytest.approx(result.batch_sharpness.mean())
    again = minibatch_curvature(problem.predict, problem.loss, problem.params, data, batch_size=12, n_batches=3,
                                tol=1e-10, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(result.indices, again.indices))


def test_batch_sharpness_alone_matches_dense_on_the_same_batches(problem):
    """The cheap in-training batch sharpness (one gradient and one product a batch) draws the batches
    minibatch_curvature draws and gives g_B^T H_B g_B / g_B^T g_B of the dense float64 H_B, averaged."""
    data, layout = problem.data, ParamLayout.of(problem.params)
    mean, stderr = batch_sharpness(problem.predict, problem.loss, problem.params, data, batch_size=12, n_batches=4,
                                   seed=7)
    w, values = layout.flatten(problem.params), []
    for index in sampled_batches(data, 12, 4, seed=7):
        batch = tuple(t[index] for t in data)
        h = problem.dense(batches=[batch])
        g = torch.func.grad(lambda flat: problem.loss(problem.predict(layout.unflatten(flat), batch), batch))(w)
        values.append(float(g @ h @ g / (g @ g)))
    assert mean == pytest.approx(np.mean(values), rel=1e-8)
    assert stderr == pytest.approx(np.std(values, ddof=1) / 2, rel=1e-6)
    full = minibatch_curvature(problem.predict, problem.loss, problem.params, data, batch_size=12, n_batches=4,
                               tol=1e-10, seed=7)
    assert full.batch_sharpness_mean == pytest.approx(mean, rel=1e-8)


# ---------------------------------------------------------------- gradient noise


def test_gradient_noise_matches_dense_per_example_gradients(problem):
    """tr(Sigma), |g|^2, B_noise and the share of tr(Sigma) in the top-3 Hessian eigenspace, against per-example
    gradients taken one example at a time and a dense covariance, away from initialization."""
    torch.manual_seed(5)
    params = {k: v + 0.3 * torch.randn_like(v) for k, v in problem.params.items()}
    layout, (x, y, f0) = ParamLayout.of(params), problem.data
    w = layout.flatten(params)
    rows = []
    for i in range(len(x)):
        example = (x[i:i + 1], y[i:i + 1], f0[i:i + 1])
        rows.append(torch.func.grad(lambda flat: problem.loss(problem.predict(layout.unflatten(flat), example),
                                                              example))(w))
    grads = torch.stack(rows)
    mean = grads.mean(0)
    sigma = (grads - mean).T @ (grads - mean) / len(grads)
    hessian = dense_curvature(problem.predict, problem.loss, params, problem.batches)
    top = torch.linalg.eigh(hessian).eigenvectors[:, -3:]
    noise = gradient_noise(problem.predict, problem.loss, params, problem.batches, directions=top)
    assert noise.n_examples == len(x)
    assert noise.grad_norm_sq == pytest.approx(float(mean @ mean), rel=1e-10)
    assert noise.trace == pytest.approx(float(torch.trace(sigma)), rel=1e-10)
    assert noise.scale == pytest.approx(float(torch.trace(sigma) / (mean @ mean)), rel=1e-10)
    assert noise.top_share == pytest.approx(float(torch.trace(top.T @ sigma @ top) / torch.trace(sigma)), rel=1e-9)
    # the mean of the per-example gradients is the objective's gradient over the unequal batches
    op = CurvatureOperator(problem.predict, problem.loss, params, problem.batches)
    torch.testing.assert_close(mean, op.gradient(), rtol=1e-10, atol=1e-12)
    # with Lanczos' Ritz vectors in place of the dense eigenvectors
    ritz = top_eigenpairs(op, k=3, tol=1e-10, return_vectors=True).vectors
    assert gradient_noise(problem.predict, problem.loss, params, problem.batches, ritz).top_share == pytest.approx(
        noise.top_share, rel=1e-6)


def test_gradient_noise_splits_batches_whose_gradients_exceed_its_memory(mlp_problem, monkeypatch):
    whole = gradient_noise(mlp_problem.predict, mlp_problem.loss, mlp_problem.params, mlp_problem.batches)
    monkeypatch.setattr(noise_module, "CHUNK_BYTES", 3 * 8 * ParamLayout.of(mlp_problem.params).dim)  # 3 examples
    split = gradient_noise(mlp_problem.predict, mlp_problem.loss, mlp_problem.params, mlp_problem.batches)
    assert (split.n_examples, split.trace, split.grad_norm_sq) == pytest.approx(
        (whole.n_examples, whole.trace, whole.grad_norm_sq), rel=1e-12)


# ---------------------------------------------------------------- curvlinops


def test_curvlinops_agrees_with_our_hessian():
    from sgdlab.probes.curvlinops_adapter import curvlinops_hessian

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double().eval()
    x, y = torch.randn(30, 4), torch.randn(30, 2)
    data = [(x[:12], y[:12]), (x[12:25], y[12:25]), (x[25:], y[25:])]
    theirs = curvlinops_hessian(model, nn.MSELoss(reduction="mean"), data)
    ours = CurvatureOperator(lambda p, b: torch.func.functional_call(model, p, (b[0],)),
                             lambda F, b: nn.functional.mse_loss(F, b[1]), dict(model.named_parameters()), data)
    assert theirs.shape == (ours.dim, ours.dim)
    for v in np.random.default_rng(0).standard_normal((3, ours.dim)):
        expected = ours.matvec(torch.from_numpy(v)).numpy()
        assert np.max(np.abs(theirs @ v - expected)) <= 1e-10 * max(1.0, np.abs(expected).max())
