"""Mini-batch versus full-data curvature at one point (Granziol et al. 2022; batch sharpness).

For k random batches B of size |B| (distinct points within a batch, drawn without replacement from the N
training points, seeded), lambda_max(H_B) of each mini-batch Hessian H_B, its mean, standard deviation and
standard error, next to lambda_max(H) of the full-data Hessian H = mean of the per-example Hessians.
E[H_B] = H, but lambda_max is convex in the matrix, so E[lambda_max(H_B)] >= lambda_max(H), the excess shrinking
as |B| grows. Batch sharpness: g_B^T H_B g_B / g_B^T g_B with g_B the mini-batch gradient, averaged over the
batches (the curvature along the direction an SGD step actually takes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sgdlab.probes.hvp import Batch, CurvatureOperator, Loss, Predict
from sgdlab.probes.lanczos import top_eigenpairs
from sgdlab.probes.trace import mean_and_stderr


@dataclass
class MiniBatchCurvature:
    batch_size: int
    indices: list[Tensor]  # the rows of the data in each sampled batch
    batch_lambda_max: np.ndarray
    mean: float
    std: float
    stderr: float
    full_lambda_max: float
    batch_sharpness: np.ndarray
    batch_sharpness_mean: float
    batch_sharpness_stderr: float
    n_products: int
    method: str


def sampled_batches(data: Batch, batch_size: int, n_batches: int, seed: int) -> list[Tensor]:
    """The rows of n_batches batches of batch_size distinct training points (seeded; the same for any params)."""
    n_data = len(data[0])
    if not 1 <= batch_size <= n_data:
        raise ValueError(f"batch_size must be in 1..{n_data}, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_data, generator=generator)[:batch_size].to(data[0].device) for _ in range(n_batches)]


def along_own_gradient(op: CurvatureOperator) -> float:
    """g^T H g / g^T g for the operator's own gradient g: the curvature in the direction a step takes."""
    g = op.gradient()
    return float(g @ op.matvec(g) / (g @ g))


def batch_sharpness(predict: Predict, loss: Loss, params: Mapping[str, Tensor], data: Batch, batch_size: int,
                    n_batches: int, seed: int = 0, method: str = "auto") -> tuple[float, float]:
    """(mean, standard error) of the batch sharpness g_B^T H_B g_B / g_B^T g_B over the sampled batches: one
    gradient and one product per batch, cheap enough to log along training."""
    values = [along_own_gradient(CurvatureOperator(predict, loss, params, [tuple(t[index] for t in data)],
                                                   matrix="batch", method=method))
              for index in sampled_batches(data, batch_size, n_batches, seed)]
    return mean_and_stderr(np.array(values))


def minibatch_curvature(predict: Predict, loss: Loss, params: Mapping[str, Tensor], data: Batch, batch_size: int,
                        n_batches: int, chunk_size: int = 1024, tol: float = 1e-3, seed: int = 0,
                        method: str = "auto") -> MiniBatchCurvature:
    """lambda_max(H_B) over n_batches sampled batches and lambda_max(H), each by Lanczos to relative tol.

    data: all training tensors (first dimension = examples), on the device; the full-data Hessian sweeps them
    in chunks of chunk_size. The product method is chosen once, on the full-data operator.
    """
    indices = sampled_batches(data, batch_size, n_batches, seed)
    chunks = list(zip(*(t.split(chunk_size) for t in data)))
    full = CurvatureOperator(predict, loss, params, chunks, matrix="full", method=method)
    full_top = top_eigenpairs(full, k=1, tol=tol, seed=seed)
    lambdas, sharpness, n_products = [], [], full_top.n_products
    for i, index in enumerate(indices):
        op = CurvatureOperator(predict, loss, params, [tuple(t[index] for t in data)], matrix="batch",
                               method=full.method)
        top = top_eigenpairs(op, k=1, tol=tol, seed=seed + 1 + i)
        sharpness.append(along_own_gradient(op))
        lambdas.append(top.eigenvalues[0])
        n_products += top.n_products + 1
    lambdas, sharpness = np.array(lambdas), np.array(sharpness)
    mean, stderr = mean_and_stderr(lambdas)
    std = float(lambdas.std(ddof=1)) if n_batches > 1 else float("nan")
    return MiniBatchCurvature(batch_size, indices, lambdas, mean, std, stderr, float(full_top.eigenvalues[0]),
                              sharpness, *mean_and_stderr(sharpness), n_products, full.method)
