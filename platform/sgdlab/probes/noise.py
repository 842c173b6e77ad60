"""The gradient noise of an objective L(w) = (1/N) sum_i l_i(w) over N examples, from the per-example gradients
g_i = grad l_i(w) (torch.func.vmap of torch.func.grad, a chunk of examples at a time):

    g          = (1/N) sum_i g_i                         the full-data gradient
    Sigma      = (1/N) sum_i (g_i - g)(g_i - g)^T        the covariance of one example's gradient (a batch of B
                                                         examples drawn with replacement has covariance Sigma / B)
    tr(Sigma)  = (1/N) sum_i |g_i|^2 - |g|^2
    B_noise    = tr(Sigma) / |g|^2                       the simple noise scale of McCandlish et al. (2018): the
                                                         batch size at which a batch gradient's noise, tr(Sigma) / B,
                                                         equals its signal |g|^2
    top-k share = sum_j v_j^T Sigma v_j / tr(Sigma)       for orthonormal directions v_1..v_k (the top-k Hessian
                                                         eigenvectors): how much of the noise lies where the
                                                         curvature is

Memory: the gradients of at most CHUNK_BYTES of examples at a time (a batch is split further where its
gradients would take more). Sums are accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sgdlab.probes.hvp import Batch, Loss, ParamLayout, Predict

CHUNK_BYTES = 1 << 28  # per-example gradients held at once


@dataclass(frozen=True)
class GradientNoise:
    trace: float  # tr(Sigma)
    grad_norm_sq: float  # |g|^2
    n_examples: int
    top_share: float | None  # of tr(Sigma) in the given directions (None: none given)

    @property
    def scale(self) -> float:
        """B_noise = tr(Sigma) / |g|^2 (inf at a stationary point)."""
        return self.trace / self.grad_norm_sq if self.grad_norm_sq > 0 else math.inf


def per_example_gradients(predict: Predict, loss: Loss, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """(n, dim): the gradient of each example's loss, loss(predict(w, example), example), flattened in the
    ParamLayout order of params."""
    layout = ParamLayout.of(params)

    def example_loss(p: dict[str, Tensor], *example: Tensor) -> Tensor:
        one = tuple(t.unsqueeze(0) for t in example)
        return loss(predict(p, one), one)

    grads = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, *[0] * len(batch)))(dict(params), *batch)
    return torch.cat([grads[name].reshape(len(batch[0]), -1) for name in layout.names], dim=1)


def gradient_noise(predict: Predict, loss: Loss, params: Mapping[str, Tensor], batches: Sequence[Batch],
                   directions: Tensor | None = None) -> GradientNoise:
    """tr(Sigma), |g|^2 and the share of tr(Sigma) in `directions` (dim, k; orthonormal columns) over the examples
    of `batches` (module docstring)."""
    params = {k: v.detach() for k, v in params.items()}
    dim = ParamLayout.of(params).dim
    n, squares, total = 0, torch.zeros((), dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    k = 0 if directions is None else directions.shape[1]
    along, along_squares = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    itemsize = next(iter(params.values())).element_size()
    rows = max(1, CHUNK_BYTES // (dim * itemsize))
    chunks = [tuple(t[i:i + rows] for t in batch) for batch in batches for i in range(0, len(batch[0]), rows)]
    for chunk in chunks:
        grads = per_example_gradients(predict, loss, params, chunk).double().cpu()
        n += len(grads)
        squares += (grads * grads).sum()
        total += grads.sum(0)
        if k:
            projected = grads @ directions.double().cpu()
            along += projected.sum(0)
            along_squares += (projected * projected).sum(0)
    mean = total / n
    grad_norm_sq = float(mean @ mean)
    trace = float(squares / n) - grad_norm_sq
    share = None
    if k:
        in_directions = float((along_squares / n - (along / n) ** 2).sum())
        share = in_directions / trace if trace > 0 else math.nan
    return GradientNoise(trace, grad_norm_sq, n, share)
