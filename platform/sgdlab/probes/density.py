"""Spectral density of a symmetric operator H by stochastic Lanczos quadrature (SLQ).

The spectral density phi(t) = (1/dim) sum_i delta(t - lambda_i) satisfies, for a random unit vector v with
E[v v^T] = I / dim, E[v^T f(H) v] = (1/dim) tr f(H) = integral f phi. Lanczos from q_1 = v for m steps gives the
m-point Gauss quadrature of the measure sum_i (v^T u_i)^2 delta(t - lambda_i): nodes = eigenvalues theta_j of T_m,
weights = (first component of the j-th eigenvector of T_m)^2, summing to 1. It is exact for polynomials of degree
<= 2m - 1, so trace(H^p)/dim ~ mean over starts of sum_j w_j theta_j^p, with only the sampling error of the starts
for p <= 2m - 1. Starts are Rademacher vectors / sqrt(dim), for which Var(v^T A v) = 2 (||A||_F^2 -
sum_i A_ii^2) / dim^2. A start whose Krylov space becomes invariant stops early: its quadrature is then exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sgdlab.probes.hvp import SymmetricOperator
from sgdlab.probes.lanczos import LanczosProcess
from sgdlab.probes.trace import mean_and_stderr, rademacher


@dataclass
class Quadrature:
    """Per start: Ritz values (nodes) and squared first components (weights, summing to 1)."""

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    n_products: int


def slq(op: SymmetricOperator, n_starts: int = 8, n_steps: int = 60, seed: int = 0) -> Quadrature:
    """n_starts random unit starts, each followed by up to n_steps Lanczos steps with full reorthogonalization."""
    generator = torch.Generator().manual_seed(seed)
    n_steps = min(n_steps, op.dim)
    nodes, weights = [], []
    for start in rademacher(op, generator, n_starts).T:
        lanczos = LanczosProcess(op, start, n_steps, generator)
        while lanczos.m < n_steps and not lanczos.invariant:
            lanczos.step()
        theta, s, _ = lanczos.ritz()
        nodes.append(theta)
        weights.append(s[0] ** 2)
    return Quadrature(nodes, weights, sum(len(theta) for theta in nodes))


def density_on_grid(nodes: Sequence[np.ndarray], weights: Sequence[np.ndarray], grid: np.ndarray,
                    sigma: float) -> np.ndarray:
    """phi(t) ~ mean over starts of sum_j w_j N(t; theta_j, sigma^2): integrates to 1 over the real line."""
    grid = np.asarray(grid, dtype=np.float64)
    density = np.zeros_like(grid)
    for theta, w in zip(nodes, weights):
        gaussians = np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density += gaussians @ w
    return density / len(nodes)


def moments(quadrature: Quadrature, powers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """SLQ estimates of tr(H^p)/dim for each p, and their standard errors over the starts."""
    per_start = np.array([[np.sum(w * theta**p) for theta, w in zip(quadrature.nodes, quadrature.weights)]
                          for p in powers])
    estimates = [mean_and_stderr(samples) for samples in per_start]
    return np.array([m for m, _ in estimates]), np.array([s for _, s in estimates])
