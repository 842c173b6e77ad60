"""Stochastic trace estimates of a symmetric operator A, each with a standard error.

Hutchinson: for Rademacher z (entries +-1), E[z^T A z] = tr(A); the estimate is the mean of m samples and its
standard error the sample standard deviation / sqrt(m) (Var z^T A z = 2 (||A||_F^2 - sum_i A_ii^2)).

Hutch++ (Meyer, Musco, Musco, Williams 2021), with a budget of m products split into s + s + g (s = m // 3):
sketch Y = A S for s Rademacher columns S, take an orthonormal basis Q of range(Y), and write
    tr(A) = tr(Q^T A Q) + tr((I - QQ^T) A (I - QQ^T)).
The first term is exact (s products); the second is Hutchinson on the deflated operator with g Rademacher
vectors projected off Q. Once Q holds the dominant outlier eigenvectors the deflated part has a much smaller
variance; its sample standard error is the standard error of the whole estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sgdlab.probes.hvp import SymmetricOperator


@dataclass
class TraceEstimate:
    mean: float
    stderr: float
    n_products: int


def rademacher(op: SymmetricOperator, generator: torch.Generator, n: int) -> Tensor:
    """n Rademacher vectors as the columns of a (dim, n) matrix, drawn on the CPU, in the operator's dtype."""
    signs = torch.randint(0, 2, (op.dim, n), generator=generator, dtype=torch.int8) * 2 - 1
    return signs.to(op.device, op.dtype)


def quadratic_forms(op: SymmetricOperator, vectors: Tensor) -> np.ndarray:
    """z_i^T A z_i for each column z_i, accumulated in float64 (one product each)."""
    return np.array([float(op.matvec(z).double() @ z.double()) for z in vectors.T])


def mean_and_stderr(samples: np.ndarray) -> tuple[float, float]:
    stderr = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.inf
    return float(samples.mean()), stderr


def hutchinson(op: SymmetricOperator, n_samples: int, seed: int = 0) -> TraceEstimate:
    """tr(A) ~ mean_i z_i^T A z_i over n_samples Rademacher vectors."""
    generator = torch.Generator().manual_seed(seed)
    mean, stderr = mean_and_stderr(quadratic_forms(op, rademacher(op, generator, n_samples)))
    return TraceEstimate(mean, stderr, n_samples)


def hutch_plus_plus(op: SymmetricOperator, n_products: int, seed: int = 0) -> TraceEstimate:
    """tr(A) ~ tr(Q^T A Q) + Hutchinson on (I - QQ^T) A (I - QQ^T), with n_products >= 3 in all."""
    if n_products < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {n_products}")
    s = n_products // 3
    generator = torch.Generator().manual_seed(seed)
    sketch = torch.stack([op.matvec(z) for z in rademacher(op, generator, s).T], dim=1)
    q, _ = torch.linalg.qr(sketch)
    exact_part = float(sum(op.matvec(column).double() @ column.double() for column in q.T))
    tests = rademacher(op, generator, n_products - 2 * s)
    deflated_mean, stderr = mean_and_stderr(quadratic_forms(op, tests - q @ (q.T @ tests)))
    return TraceEstimate(exact_part + deflated_mean, stderr, s + q.shape[1] + tests.shape[1])
