"""Curvature matrices of a training objective as matrix-free symmetric operators on flat parameter vectors.

The objective over a fixed list of batches b = 1..B with n_b examples each (N = sum_b n_b) is

    L(w) = sum_b (n_b / N) L_b(w),    L_b(w) = loss(predict(w, batch_b), batch_b),

where loss is the mean of the per-example loss over the batch, so L is the mean over all N examples.
The operator represents one of
    "full"   H   = sum_b (n_b / N) d2 L_b / dw2                  (full-data Hessian)
    "batch"  H_b = d2 L_b / dw2 for one given batch               (mini-batch Hessian)
    "ggn"    G   = sum_b (n_b / N) J_b^T (d2 loss / dF2) J_b      (Gauss-Newton, J_b = dF/dw on batch b)
Hessian-vector products come from double backward, (d/dw <grad L_b(w), v>), or from forward-over-reverse,
the directional derivative of grad L_b along v (torch.func.jvp of torch.func.grad); both are exact. Double
backward can keep the graph of grad L_b between products, so that a product is one backward pass through it.

The operator measures whatever predict computes. With a torch nn.Module the caller puts it in eval mode: then
BatchNorm uses its running statistics, every example's output depends on its own input only, and the Hessian of
the mean loss is the size-weighted mean of the batch Hessians. In train mode the batch statistics would be part
of the function (and would be updated by every product).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Batch = tuple[Tensor, ...]
Predict = Callable[[dict[str, Tensor], Batch], Tensor]
Loss = Callable[[Tensor, Batch], Tensor]

MATRICES = ("full", "batch", "ggn")
HESSIAN_METHODS = ("double_backward", "forward_over_reverse")
GGN_METHOD = "jvp_loss_hessian_vjp"


class SymmetricOperator(Protocol):
    """What every probe needs: v -> A v on flat vectors of length dim, with A symmetric."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ParamLayout:
    """A parameter dict laid out as one flat vector w = concat(p.reshape(-1) for p in params, in dict order)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, params: Mapping[str, Tensor]) -> ParamLayout:
        return cls(tuple(params), tuple(p.shape for p in params.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @property
    def slices(self) -> dict[str, slice]:
        """Where each named parameter lies in the flat vector."""
        ends = [sum(self.sizes[: i + 1]) for i in range(len(self.sizes))]
        return {name: slice(end - size, end) for name, size, end in zip(self.names, self.sizes, ends)}

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        return {name: chunk.view(shape) for name, chunk, shape in zip(self.names, vector.split(self.sizes), self.shapes)}


class CurvatureOperator:
    """v -> M v for M the full-data Hessian, one batch's Hessian or the Gauss-Newton matrix (module docstring).

    params: dict of tensors of one floating dtype and device, which become the operator's (cast the model to
        float64 for float64 products). They are measured as they are: leave them unchanged while in use.
    batches: device-resident tuples of tensors; the first tensor's len() is the batch size.
    matrix: "full", "batch" (batches[batch_index]) or "ggn" (product: jvp, loss Hessian, vjp).
    method: "double_backward", "forward_over_reverse" or "auto": time both once on the first batch, after a
        warm-up, and keep the faster (timings in `method_seconds`; a method that raises, such as
        forward-over-reverse through F.mse_loss in torch 2.13, is skipped, its error in `method_errors`).
    keep_graph: double backward keeps each batch's gradient graph between products (memory: one gradient graph
        per batch); by default only with a single batch, where one product builds that graph anyway.
    Every matvec counts as one product (`n_products`), however many batches it sweeps.
    """

    def __init__(self, predict: Predict, loss: Loss, params: Mapping[str, Tensor], batches: Sequence[Batch],
                 matrix: str = "full", batch_index: int = 0, method: str = "auto", keep_graph: bool | None = None):
        if matrix not in MATRICES:
            raise ValueError(f"matrix must be one of {MATRICES}, got {matrix!r}")
        allowed = ("auto", GGN_METHOD) if matrix == "ggn" else ("auto", *HESSIAN_METHODS)
        if method not in allowed:
            raise ValueError(f"method for matrix={matrix!r} must be one of {allowed}, got {method!r}")
        self.predict, self.loss, self.matrix = predict, loss, matrix
        self.params = {name: p.detach() for name, p in params.items()}
        dtypes, devices = {p.dtype for p in self.params.values()}, {p.device for p in self.params.values()}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"params must share one dtype and device, got {sorted(map(str, dtypes | devices))}")
        self.dtype, self.device = dtypes.pop(), devices.pop()
        self.layout = ParamLayout.of(self.params)
        self.dim = self.layout.dim
        self.batch_index = batch_index if matrix == "batch" else None
        self.batches = [batches[batch_index]] if matrix == "batch" else list(batches)
        sizes = [len(batch[0]) for batch in self.batches]
        self.n_examples = sum(sizes)
        self.weights = [n / self.n_examples for n in sizes]
        self.keep_graph = len(self.batches) == 1 if keep_graph is None else keep_graph
        self._graphs: dict[int, tuple[list[Tensor], tuple[Tensor, ...]]] = {}
        self._products = {"double_backward": self._double_backward,
                          "forward_over_reverse": self._forward_over_reverse,
                          GGN_METHOD: self._gauss_newton}
        self.method_seconds: dict[str, float] = {}
        self.method_errors: dict[str, str] = {}
        if method == "auto":
            method = GGN_METHOD if matrix == "ggn" else self._fastest_method()
        self.method = method
        self.n_products = 0

    @property
    def description(self) -> dict:
        """What was measured, for the records."""
        return {"matrix": self.matrix, "normalization": "mean over examples", "n_examples": self.n_examples,
                "n_batches": len(self.batches), "batch_index": self.batch_index, "method": self.method,
                "keep_graph": self.keep_graph and self.method == "double_backward", "dim": self.dim,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def matvec(self, v: Tensor) -> Tensor:
        """M v = sum_b (n_b / N) M_b v for a flat vector v (cast to the operator's dtype and device)."""
        tangent = self.layout.unflatten(v.to(self.device, self.dtype))
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for i, weight in enumerate(self.weights):
            out.add_(self.layout.flatten(self._products[self.method](i, tangent)), alpha=weight)
        self.n_products += 1
        return out

    def gradient(self) -> Tensor:
        """grad L = sum_b (n_b / N) grad L_b as a flat vector (not counted as a product)."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for weight, batch in zip(self.weights, self.batches):
            out.add_(self.layout.flatten(torch.func.grad(self._objective)(self.params, batch)), alpha=weight)
        return out

    def _objective(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        return self.loss(self.predict(params, batch), batch)

    def _gradient_graph(self, i: int) -> tuple[list[Tensor], tuple[Tensor, ...]]:
        """Leaves w and grad L_i(w) with its graph (create_graph=True); kept for the next product if keep_graph."""
        if i in self._graphs:
            return self._graphs[i]
        leaves = [p.detach().requires_grad_(True) for p in self.params.values()]
        with torch.enable_grad():
            grads = torch.autograd.grad(self._objective(dict(zip(self.layout.names, leaves)), self.batches[i]),
                                        leaves, create_graph=True, allow_unused=True, materialize_grads=True)
        if self.keep_graph:
            self._graphs[i] = (leaves, grads)
        return leaves, grads

    def _double_backward(self, i: int, v: dict[str, Tensor]) -> dict[str, Tensor]:
        """H_i v = d/dw <grad L_i(w), v>: a backward pass through the graph of the gradient."""
        leaves, grads = self._gradient_graph(i)
        pairs = [(g, v[name]) for g, name in zip(grads, self.layout.names) if g.requires_grad]
        if not pairs:  # the gradient does not depend on w: the Hessian is zero
            return {name: torch.zeros_like(p) for name, p in self.params.items()}
        hv = torch.autograd.grad([g for g, _ in pairs], leaves, grad_outputs=[t for _, t in pairs],
                                 retain_graph=self.keep_graph, allow_unused=True, materialize_grads=True)
        return dict(zip(self.layout.names, hv))

    def _forward_over_reverse(self, i: int, v: dict[str, Tensor]) -> dict[str, Tensor]:
        """H_i v = d/dt grad L_i(w + t v) at t = 0: forward-mode derivative of the reverse-mode gradient."""
        batch = self.batches[i]
        _, hv = torch.func.jvp(lambda w: torch.func.grad(self._objective)(w, batch), (self.params,), (v,))
        return hv

    def _gauss_newton(self, i: int, v: dict[str, Tensor]) -> dict[str, Tensor]:
        """G_i v = J^T (d2 loss / dF2) (J v): jvp through predict, loss Hessian on F (reverse over reverse; it
        is symmetric), vjp through predict."""
        batch = self.batches[i]
        F, jv = torch.func.jvp(lambda w: self.predict(w, batch), (self.params,), (v,))
        _, loss_hessian_product = torch.func.vjp(lambda f: torch.func.grad(self.loss)(f, batch), F)
        _, pullback = torch.func.vjp(lambda w: self.predict(w, batch), self.params)
        return pullback(loss_hessian_product(jv)[0])[0]

    def _fastest_method(self) -> str:
        generator = torch.Generator().manual_seed(0)
        tangent = self.layout.unflatten(torch.randn(self.dim, generator=generator, dtype=torch.float64)
                                        .to(self.device, self.dtype))
        for method in HESSIAN_METHODS:
            try:
                self._products[method](0, tangent)  # warm-up (and the kept gradient graph)
            except RuntimeError as error:  # a gap in torch's AD, e.g. F.mse_loss under jvp of grad (pytorch#123996)
                self.method_errors[method] = str(error).splitlines()[0]
                continue
            self._synchronize()
            start = time.perf_counter()
            self._products[method](0, tangent)
            self._synchronize()
            self.method_seconds[method] = time.perf_counter() - start
        if not self.method_seconds:
            raise RuntimeError(f"no Hessian-vector product method works on this objective: {self.method_errors}")
        fastest = min(self.method_seconds, key=self.method_seconds.get)
        if fastest != "double_backward":
            self._graphs.clear()
        return fastest

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
