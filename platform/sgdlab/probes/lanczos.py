"""Top eigenpairs of a symmetric operator H by Lanczos with full reorthogonalization.

Lanczos builds an orthonormal basis Q_m = [q_1 .. q_m] of the Krylov space span{q_1, H q_1, .., H^(m-1) q_1} in
which H is tridiagonal, Q_m^T H Q_m = T_m (diagonal alpha_j = q_j^T H q_j, off-diagonal beta_j), and
    H Q_m = Q_m T_m + beta_m q_(m+1) e_m^T.
An eigenpair T_m s = theta s gives the Ritz pair (theta, Q_m s) with residual ||H Q_m s - theta Q_m s|| =
|beta_m s_m|, and some eigenvalue of H lies within that residual of theta. We stop when the top-k residuals are
<= tol * |theta| (relative). Each new vector is orthogonalized against all of Q twice (classical Gram-Schmidt,
"twice is enough"), which keeps Q orthonormal to working precision: no spurious copies of converged eigenvalues.
T_m is solved in float64 by scipy's tridiagonal eigensolver; one product per step.

If beta_m ~ 0 the Krylov space is invariant and its Ritz values are exact eigenvalues of H. When fewer than k are
known, the process goes on from a random vector orthogonal to Q (a zero off-diagonal in T). Like every
single-vector Krylov method it sees one copy of a repeated eigenvalue (more only through such restarts or
rounding): an eigenvalue of multiplicity > 1 among the top k may be reported once, followed by the next ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from sgdlab.probes.hvp import SymmetricOperator


def random_vector(op: SymmetricOperator, generator: torch.Generator) -> Tensor:
    """A standard normal vector drawn on the CPU (the same numbers on every device), in the operator's dtype."""
    return torch.randn(op.dim, generator=generator, dtype=torch.float64).to(op.device, op.dtype)


class LanczosProcess:
    """Lanczos steps from `start`: the tridiagonal (alphas, betas[:-1]), the basis rows, the last beta."""

    def __init__(self, op: SymmetricOperator, start: Tensor, max_steps: int, generator: torch.Generator):
        self.op, self.generator = op, generator
        self.basis = torch.empty(max_steps, op.dim, dtype=op.dtype, device=op.device)
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] couples q_j and q_(j+1); 0 where the Krylov space was invariant
        self.invariant = False
        self._next = start / start.norm()

    @property
    def m(self) -> int:
        return len(self.alphas)

    def step(self) -> None:
        """One product: q_m -> alpha_m, beta_m and the next basis vector."""
        self.basis[self.m] = self._next
        w = self.op.matvec(self._next)
        self.alphas.append(float(w @ self._next))
        w = self._orthogonalize(w)
        beta = float(w.norm())
        scale = max(max(abs(a) for a in self.alphas), max(self.betas, default=0.0))
        self.invariant = beta <= 10 * self.op.dim ** 0.5 * torch.finfo(self.op.dtype).eps * scale
        self.betas.append(0.0 if self.invariant else beta)
        if self.m < self.op.dim:
            if self.invariant:
                w = self._orthogonalize(random_vector(self.op, self.generator))
            self._next = w / w.norm()

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors S of T_m (columns) and residuals |beta_m s_m|."""
        theta, s = scipy.linalg.eigh_tridiagonal(np.array(self.alphas), np.array(self.betas[:-1]))
        return theta, s, np.abs(self.betas[-1] * s[-1])

    def _orthogonalize(self, w: Tensor) -> Tensor:
        q = self.basis[: self.m]
        for _ in range(2):
            w = w - q.T @ (q @ w)
        return w


@dataclass
class Eigenpairs:
    """Top-k Ritz values of H (descending), their residuals |beta_m s_m|, and the Ritz vectors (dim, k) if asked."""

    eigenvalues: np.ndarray
    residuals: np.ndarray
    n_products: int
    converged: bool
    vectors: Tensor | None = None


def top_eigenpairs(op: SymmetricOperator, k: int = 1, tol: float = 1e-3, max_iter: int | None = None,
                   seed: int = 0, return_vectors: bool = False) -> Eigenpairs:
    """The k largest (algebraic) eigenvalues of op, to relative Ritz residual tol; k is capped at op.dim.

    max_iter (default max(100, 10 k)) caps the products; converged is False when it ran out first.
    """
    k = min(k, op.dim)
    max_iter = min(op.dim, max_iter or max(100, 10 * k))
    generator = torch.Generator().manual_seed(seed)
    lanczos = LanczosProcess(op, random_vector(op, generator), max_iter, generator)
    while True:
        lanczos.step()
        theta, s, residuals = lanczos.ritz()
        top = np.arange(lanczos.m - 1, max(lanczos.m - 1 - k, -1), -1)
        converged = lanczos.m == op.dim or (
            len(top) == k and bool(np.all(residuals[top] <= tol * np.abs(theta[top]))))
        if converged or lanczos.m == max_iter:
            break
    vectors = None
    if return_vectors:
        ritz = torch.as_tensor(s[:, top], dtype=op.dtype, device=op.device)
        vectors = lanczos.basis[: lanczos.m].T @ ritz
    return Eigenpairs(theta[top], residuals[top], lanczos.m, converged, vectors)
