"""The full-data curvature operator of an objective whose data is sharded across W workers (torch.distributed).

With the probe data split into shards s = 1..W of n_s examples (N = sum_s n_s), the mean-loss objective is
L(w) = sum_s (n_s / N) L_s(w), so its Hessian (or Gauss-Newton matrix) is M = sum_s (n_s / N) M_s. Each rank
holds an ordinary CurvatureOperator on its own shard (M_s, itself a size-weighted sum over its chunks), and

    matvec(v) = all_reduce_sum( (n_s / N) M_s v )

gives every rank the full-data product. Lanczos (probes/lanczos.py), Hutchinson / Hutch++ (probes/trace.py) and
SLQ (probes/density.py) take any operator with dim, dtype, device and matvec; run with the same seed on every
rank they draw the same start and probe vectors (on the CPU generator), receive the same products (an
all_reduce hands every rank the same sum) and so take the same steps and return the same numbers everywhere.
Every rank must call matvec the same number of times (it is a collective). The result equals the
single-process operator's up to the order of floating-point sums (tested in float64, tests/test_distributed.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from sgdlab.probes.hvp import Batch, CurvatureOperator, Loss, Predict


def shard_data(data: Batch, rank: int, workers: int, chunk_size: int) -> list[Batch]:
    """Rank's contiguous share of the probe data (tensors of equal length; shares differ by at most one
    example), in chunks of at most chunk_size."""
    n = len(data[0])
    lo, hi = rank * n // workers, (rank + 1) * n // workers
    return [tuple(t[i:min(i + chunk_size, hi)] for t in data) for i in range(lo, hi, chunk_size)]


class DistributedCurvatureOperator:
    """M v = sum over ranks of (n_s / N) M_s v, M_s this rank's CurvatureOperator (module docstring).

    batches: this rank's share of the data (a rank may hold none); the other arguments are CurvatureOperator's,
    the same on every rank. params must be identical on all ranks."""

    def __init__(self, predict: Predict, loss: Loss, params: Mapping[str, Tensor], batches: Sequence[Batch],
                 matrix: str = "full", method: str = "double_backward", keep_graph: bool | None = None):
        if matrix == "batch":
            raise ValueError("a sharded operator is a full-data (or ggn) operator; use CurvatureOperator for one batch")
        self.local = CurvatureOperator(predict, loss, params, batches, matrix=matrix, method=method,
                                       keep_graph=keep_graph) if batches else None
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.dim = sum(p.numel() for p in params.values())
        self.layout = self.local.layout if self.local else None
        n_local = self.local.n_examples if self.local else 0
        counts = torch.tensor([float(n_local)], dtype=torch.float64, device=self.device)
        self._all_reduce(counts)
        self.n_local, self.n_examples = n_local, int(counts[0])
        self.weight = n_local / self.n_examples
        self.matrix, self.method = matrix, method
        self.n_products = 0

    @staticmethod
    def _all_reduce(t: Tensor) -> Tensor:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @property
    def description(self) -> dict:
        return {"matrix": self.matrix, "normalization": "mean over examples", "n_examples": self.n_examples,
                "n_workers": dist.get_world_size() if dist.is_initialized() else 1, "method": self.method,
                "dim": self.dim, "dtype": str(self.dtype).removeprefix("torch.")}

    def matvec(self, v: Tensor) -> Tensor:
        """The full-data product, the same on every rank (a collective: every rank calls it)."""
        if self.local is not None:
            out = self.local.matvec(v).mul_(self.weight)
        else:
            out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        self.n_products += 1
        return self._all_reduce(out)

    def gradient(self) -> Tensor:
        """grad L over all shards (a collective)."""
        out = (self.local.gradient().mul_(self.weight) if self.local is not None
               else torch.zeros(self.dim, dtype=self.dtype, device=self.device))
        return self._all_reduce(out)
