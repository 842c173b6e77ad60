"""Dense float64 ground truth for tiny models: the matrix a CurvatureOperator represents, entry by entry.

With w the flattened parameters (ParamLayout order) and L_b(w) = loss(predict(w, batch_b), batch_b):
    "full"   sum_b (n_b / N) d2 L_b / dw2          by torch.func.hessian of the weighted objective
    "batch"  d2 L_b / dw2 for batch_index           likewise, one batch
    "ggn"    sum_b (n_b / N) J_b^T Q_b J_b          J_b = jacrev of predict (outputs x dim), Q_b = hessian of loss in F
Parameters and floating batch tensors are cast to float64; a module's buffers (BatchNorm statistics) must already
be float64 (model.double()). Memory is O(dim^2 + dim * outputs): a few thousand parameters at most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from sgdlab.probes.hvp import MATRICES, Batch, Loss, ParamLayout, Predict


def dense_curvature(predict: Predict, loss: Loss, params: Mapping[str, Tensor], batches: Sequence[Batch],
                    matrix: str = "full", batch_index: int = 0) -> Tensor:
    """The (dim, dim) float64 matrix of `matrix` ("full", "batch" or "ggn") at params."""
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {MATRICES}, got {matrix!r}")
    layout = ParamLayout.of(params)
    w = layout.flatten(params).detach().to(torch.float64)
    batches = [tuple(t.double() if t.is_floating_point() else t for t in batch) for batch in batches]
    if matrix == "batch":
        batches = [batches[batch_index]]
    n_examples = sum(len(batch[0]) for batch in batches)
    if matrix in ("full", "batch"):
        def objective(flat: Tensor) -> Tensor:
            params_ = layout.unflatten(flat)
            return sum(len(b[0]) / n_examples * loss(predict(params_, b), b) for b in batches)
        return torch.func.hessian(objective)(w)
    def predict_flat(flat: Tensor, batch: Batch) -> Tensor:
        return predict(layout.unflatten(flat), batch)
    ggn = torch.zeros(layout.dim, layout.dim, dtype=torch.float64, device=w.device)
    for batch in batches:
        outputs = predict_flat(w, batch)
        jacobian = torch.func.jacrev(predict_flat)(w, batch).reshape(-1, layout.dim)
        loss_hessian = torch.func.hessian(loss)(outputs, batch).reshape(outputs.numel(), -1)
        ggn += len(batch[0]) / n_examples * jacobian.T @ loss_hessian @ jacobian
    return ggn
