"""curvlinops' Hessian (curvlinops-for-pytorch 3.0.1) as a scipy LinearOperator; the only module importing it.

curvlinops.HessianLinearOperator(model, loss_function, params, data) represents the Hessian of
    c * sum_n loss(model(x_n), y_n),   c = 1/N for loss_function.reduction == "mean", 1 for "sum",
computed batch by batch as sum_b (n_b / N) * Hessian of the batch's mean loss. With a torch loss whose
reduction is "mean" (e.g. MSELoss(reduction="mean"), CrossEntropyLoss()) this is the same matrix as our
CurvatureOperator(matrix="full") on the same batches, with predict = model(x) and loss = loss_function(F, y).
The model must be deterministic (eval mode); its trainable parameters are taken in named_parameters() order,
the flat order of ParamLayout.
"""

from __future__ import annotations

from collections.abc import Sequence

import scipy.sparse.linalg
from curvlinops import HessianLinearOperator
from torch import Tensor, nn


def curvlinops_hessian(model: nn.Module, loss_function: nn.Module, data: Sequence[tuple[Tensor, Tensor]],
                       check_deterministic: bool = False) -> scipy.sparse.linalg.LinearOperator:
    """Hessian of the loss over data = [(x, y), ...] as a float64 scipy LinearOperator (numpy in, numpy out).

    Products run in the model's dtype and device. check_deterministic=True lets curvlinops verify, with a few
    extra passes, that the model and data give the same results twice.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    operator = HessianLinearOperator(model, loss_function, params, data, check_deterministic=check_deterministic)
    return operator.to_scipy()
