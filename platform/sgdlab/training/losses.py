"""Losses on the predictor F (already multiplied by alpha), per example, with 'fitted' and 'error'.

hinge:          l(y F) / alpha, l(z) = max(0, 1 - z), y = +-1 (class 1 is +1); one output.
                The gradient on an unfitted point is -y df/dw: independent of alpha; alpha sets the margin.
                A point is fitted when y F >= 1 (its loss is exactly 0).
cross_entropy:  softmax cross-entropy, one output per class; fitted = classified right.
mse:            1/2 ||F - onehot(y)||^2 summed over classes (Cohen et al.'s normalization); fitted = classified right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf


@dataclass(frozen=True)
class Loss:
    name: str
    alpha: float

    def n_outputs(self, n_classes: int) -> int:
        return 1 if self.name == "hinge" else n_classes

    def per_example(self, F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "hinge":
            return torch.relu(1 - F[:, 0] * (2 * y - 1)) / self.alpha
        if self.name == "cross_entropy":
            return nnf.cross_entropy(F, y, reduction="none")
        if self.name == "mse":
            onehot = (y[:, None] == torch.arange(F.shape[1], device=y.device)).to(F.dtype)  # vmap-safe one_hot
            return 0.5 * ((F - onehot) ** 2).sum(dim=1)
        raise ValueError(f"loss.name: unknown loss {self.name!r}")

    def mean(self, F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_example(F, y).mean()

    def margin(self, F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y F for the hinge loss; for the others, the true-class output minus the best other output."""
        if self.name == "hinge":
            return F[:, 0] * (2 * y - 1)
        true = F.gather(1, y[:, None])[:, 0]
        other = F.scatter(1, y[:, None], float("-inf")).max(dim=1).values
        return true - other

    def fitted(self, F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        margin = self.margin(F, y)
        return margin >= 1 if self.name == "hinge" else margin > 0

    def error(self, F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Misclassified (a zero output counts as wrong)."""
        return self.margin(F, y) <= 0
