"""Per-parameter-block curvature: trace and top eigenvalue of each diagonal block H_bb.

A block b is a set of named parameters with coordinates I_b in the flat vector. The restricted operator
u -> (H P_b^T u)[I_b] is H_bb = P_b H P_b^T, of dimension |I_b|, and each product costs one product of H.
Each block is estimated with its own products (Hutchinson on H_bb, Lanczos on H_bb), never by splitting one
global random vector: a small block's share of a global estimate is very noisy (HAWQ-V2). The block traces of
a partition of all parameters sum to tr(H).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sgdlab.probes.hvp import CurvatureOperator
from sgdlab.probes.lanczos import Eigenpairs, top_eigenpairs
from sgdlab.probes.trace import TraceEstimate, hutchinson


class BlockOperator:
    """H_bb = P_b H P_b^T for the coordinates `index` of a CurvatureOperator."""

    def __init__(self, op: CurvatureOperator, index: Tensor):
        self.op, self.index = op, index.to(op.device)
        self.dim, self.dtype, self.device = len(index), op.dtype, op.device

    def matvec(self, u: Tensor) -> Tensor:
        v = torch.zeros(self.op.dim, dtype=self.dtype, device=self.device)
        v[self.index] = u.to(self.device, self.dtype)
        return self.op.matvec(v)[self.index]


@dataclass
class BlockProbe:
    names: tuple[str, ...]
    dim: int
    trace: TraceEstimate
    top: Eigenpairs


def block_probes(op: CurvatureOperator, blocks: Mapping[str, Sequence[str]] | None = None, n_samples: int = 30,
                 tol: float = 1e-3, seed: int = 0) -> dict[str, BlockProbe]:
    """Trace (Hutchinson, n_samples products) and top eigenvalue (Lanczos to tol) of each block.

    blocks maps a label to parameter names; by default every named parameter is its own block.
    Block i uses seed + i.
    """
    blocks = blocks or {name: (name,) for name in op.layout.names}
    slices = op.layout.slices
    unknown = sorted({name for names in blocks.values() for name in names} - set(slices))
    if unknown:
        raise ValueError(f"unknown parameter names in blocks: {unknown}")
    probes = {}
    for i, (label, names) in enumerate(blocks.items()):
        index = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names])
        block = BlockOperator(op, index)
        probes[label] = BlockProbe(tuple(names), block.dim, hutchinson(block, n_samples, seed=seed + i),
                                   top_eigenpairs(block, k=1, tol=tol, seed=seed + i))
    return probes
