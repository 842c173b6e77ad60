"""What is fixed about a trial: its data, network, loss, initial parameters and f(w0, x).

The objective is L(w) = mean_i loss(F(x_i), y_i) with F(x) = alpha (f(w, x) - f(w0, x)). It is exposed as
`predict(params, batch)` and `batch_loss(F, batch)` on batches (x, y, f0): the training loop and the Hessian
probes use the same two functions, so a probe measures the curvature of exactly what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sgdlab.training import data as datasets
from sgdlab.training import models
from sgdlab.training.losses import Loss

DTYPES = {"float32": torch.float32, "float64": torch.float64}
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, y, f(w0, x)


@dataclass
class Problem:
    data: datasets.Dataset
    loss: Loss
    module: nn.Module
    params0: dict[str, torch.Tensor]
    f0_train: torch.Tensor
    f0_test: torch.Tensor

    def f(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return models.network(self.module)(params, x)

    def predict(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        x, _, f0 = batch
        return centred(self.f, params, x, f0, self.loss.alpha)

    def batch_loss(self, F: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss.mean(F, batch[1])

    def saved_per_example(self) -> int:
        """Elements of the tensors that the forward pass saves for backward per example (its activations: the
        difference between passes on two examples and on one, which both also save the weights): the memory
        per example of a batch in training or of a chunk of an evaluation."""
        params = {k: v.detach().requires_grad_() for k, v in self.params0.items()}
        saved = []
        for n in (1, 2):
            saved.append(0)

            def count(tensor: torch.Tensor) -> torch.Tensor:
                saved[-1] += tensor.numel()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
                self.f(params, self.data.x_train[:n])
        return max(1, saved[1] - saved[0])

    def train_batch(self, idx: torch.Tensor) -> Batch:
        return self.data.x_train[idx], self.data.y_train[idx], self.f0_train[idx]

    def train_batches(self, n_examples: int | None, batch_size: int) -> list[Batch]:
        """The first n_examples training points (all when None) in consecutive batches."""
        n = len(self.data.x_train) if n_examples is None else min(n_examples, len(self.data.x_train))
        return [self.train_batch(torch.arange(i, min(i + batch_size, n), device=self.data.x_train.device))
                for i in range(0, n, batch_size)]


def centred(f, params: dict[str, torch.Tensor], x: torch.Tensor, f0: torch.Tensor, alpha) -> torch.Tensor:
    """F(x) = alpha (f(w, x) - f(w0, x)), with f(w0, x) given (zero when model.center is false)."""
    return alpha * (f(params, x) - f0)


def load_data(cfg: dict, device: str = "cpu") -> datasets.Dataset:
    """The trial's data set on `device`, in train.dtype."""
    return datasets.load(cfg["data"]).to(device, DTYPES[cfg["train"]["dtype"]])


def build_problem(cfg: dict, device: str = "cpu", data: datasets.Dataset | None = None,
                  initial_outputs: bool = True) -> Problem:
    """`data`: the trial's data set if already loaded (trials of a pack share it); initial_outputs=False leaves
    f(w0, x) to the caller (f0_train and f0_test are None; a pack computes them for all members at once)."""
    dtype = DTYPES[cfg["train"]["dtype"]]
    data = load_data(cfg, device) if data is None else data
    loss = Loss(cfg["loss"]["name"], cfg["model"]["alpha"])
    module = models.build(cfg["model"], data.input_shape, loss.n_outputs(data.n_classes))
    params0 = {k: v[0] for k, v in models.init_params(module, [cfg["seed"]], dtype, device).items()}
    f = models.network(module)
    if not initial_outputs:
        return Problem(data, loss, module, params0, None, None)
    with torch.no_grad():  # F is centred: f(w0, x) is fixed data, computed once
        scale = 1.0 if cfg["model"]["center"] else 0.0
        f0_train, f0_test = scale * f(params0, data.x_train), scale * f(params0, data.x_test)
    return Problem(data, loss, module, params0, f0_train, f0_test)
