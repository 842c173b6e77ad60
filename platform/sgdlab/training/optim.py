"""Optimizers as pure updates of (params, state): no hidden state, so a step can be vmapped or checkpointed.
`lr` may be a tensor (one value per member inside torch.func.vmap).

sgd:   w <- w - lr g
adam:  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  w <- w - lr m_hat / (sqrt(v_hat) + eps),
       m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)   (Kingma & Ba, no weight decay)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sgd:
    lr: float
    still_at_zero_gradient = True  # a zero gradient leaves the parameters exactly as they were

    def init(self, params: Params) -> dict:
        return {}

    def update(self, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
        return {k: p - self.lr * grads[k] for k, p in params.items()}, state


@dataclass(frozen=True)
class Adam:
    lr: float
    beta1: float
    beta2: float
    eps: float
    still_at_zero_gradient = False  # the first moment keeps moving the parameters

    def init(self, params: Params) -> dict:
        first = next(iter(params.values()))  # the step count is a tensor so that it can be stacked and vmapped
        return {"m": {k: torch.zeros_like(p) for k, p in params.items()},
                "v": {k: torch.zeros_like(p) for k, p in params.items()},  # own tensors: a resume writes into them
                "t": torch.zeros((), dtype=first.dtype, device=first.device)}

    def update(self, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
        t = state["t"] + 1
        m = {k: self.beta1 * state["m"][k] + (1 - self.beta1) * g for k, g in grads.items()}
        v = {k: self.beta2 * state["v"][k] + (1 - self.beta2) * g * g for k, g in grads.items()}
        c1, c2 = 1 - self.beta1**t, 1 - self.beta2**t
        new = {k: p - self.lr * (m[k] / c1) / (torch.sqrt(v[k] / c2) + self.eps) for k, p in params.items()}
        return new, {"m": m, "v": v, "t": t}


def build(cfg: dict) -> Sgd | Adam:
    if cfg["name"] == "sgd":
        return Sgd(cfg["lr"])
    if cfg["name"] == "adam":
        return Adam(cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["eps"])
    raise ValueError(f"optim.name: unknown optimizer {cfg['name']!r}")
