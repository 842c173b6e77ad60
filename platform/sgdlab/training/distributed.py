"""Data-parallel workers of one pack (torch.distributed): where this process stands, and the reductions that the
training loop (training/loop.py) applies. ALONE, one process, makes every reduction the identity.

W workers (ranks) hold the full data set and the same parameters. At each step every rank draws the SAME global
batch of B indices per member (training/sampler.py) and takes its contiguous shard idx[:, r B/W : (r+1) B/W]
(B % W == 0, so that the shards have equal sizes); it computes g_r, the gradient of its shard's mean loss; the
gradients and the shard losses are summed with one all_reduce (flattened into one vector, as DDP buckets them)
and divided by W:

    g = (1/W) sum_r g_r = grad of the mean loss over the B points of the batch.

Every rank then applies the same pure optimizer update to the same g, so the parameters stay identical without
being broadcast. This is DDP's maths written as an explicit all_reduce of the gradient dict, because the loop is
functional (a pure function of a parameter dict) and DDP's hooks live on an nn.Module's own
parameters. The trajectory equals one process with batch B up to the order of floating-point sums.

Full-set metrics are computed on slices (each rank a contiguous slice of the set; sums, counts and the minimum
margin all-reduced), and the wall-time limit is read on rank 0's clock and broadcast, so that every decision of
the loop is taken from the same numbers on every rank and all ranks stop at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def check_batch(batch_size: int, workers: int) -> None:
    if workers < 1 or batch_size % workers != 0:
        raise ValueError(f"data.batch_size: B = {batch_size} is not divisible by resources.workers_per_trial = "
                         f"{workers}: each of the W workers takes B / W points of every batch")


@dataclass(frozen=True)
class Workers:
    """This process's rank among `size` data-parallel workers, and the loop's reductions across them."""

    rank: int = 0
    size: int = 1

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices, (members, B) -> (members, B / W)."""
        if self.size == 1:
            return idx
        check_batch(idx.shape[-1], self.size)
        width = idx.shape[-1] // self.size
        return idx[..., self.rank * width:(self.rank + 1) * width]

    def split(self, n: int) -> slice:
        """This rank's contiguous slice of n items (sizes differ by at most one): evaluation and probe data."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def mean(self, grads: dict[str, torch.Tensor], values: torch.Tensor):
        """(1/W) sum over ranks of the shard gradients and shard losses, in one all_reduce."""
        if self.size == 1:
            return grads, values
        flat = torch.cat([g.reshape(-1) for g in grads.values()] + [values.reshape(-1)])
        dist.all_reduce(flat)
        flat.div_(self.size)
        parts = flat.split([g.numel() for g in grads.values()] + [values.numel()])
        return {k: p.view_as(g) for (k, g), p in zip(grads.items(), parts)}, parts[-1].view_as(values)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def min(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def first(self, value: float, device: str) -> float:
        """Rank 0's number on every rank (a broadcast)."""
        if self.size == 1:
            return value
        box = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(box, src=0)
        return float(box[0])

    def from_rank0(self, value):
        """Rank 0's value (any picklable object) on every rank; the other ranks pass None."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


ALONE = Workers()


def world() -> Workers:
    """This process's place in its process group; ALONE without one."""
    if dist.is_available() and dist.is_initialized():
        return Workers(dist.get_rank(), dist.get_world_size())
    return ALONE
