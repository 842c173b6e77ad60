"""Independent check (plain torch, no sgdlab code): does the lazy mean-field MLP's test error rise between
T = 1e-4 and T = 1e-3 on the teacher task, as sgdlab's temperature_vs_p says?

x ~ N(0, I_16) with |x_1| ~ |x_1|^chi exp(-x_1^2/2) near 0, y = sign(x_1); h1 = relu(W1 x / sqrt(16)) / c,
h2 = relu(W2 h1 / sqrt(64)) / c, c = sqrt(E relu(z)^2) = sqrt(1/2); f = v . h2 / 64; F = alpha (f - f0);
loss = mean over the batch of max(0, 1 - y F) / alpha; SGD with lr = T B width, B = 16 distinct points per step;
stop when every training point has y F >= 1.
"""
import math
import sys

import numpy as np
import torch

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)


def data(chi, n, rng):
    x = rng.standard_normal((n, 16))
    x[:, 0] = rng.choice([-1.0, 1.0], n) * np.sqrt(2 * rng.gamma((chi + 1) / 2, 1.0, n))
    return torch.tensor(x), torch.tensor(np.sign(x[:, 0]))


def run(chi, P, T, seed, alpha=4096.0, width=64, B=16):
    rng = np.random.default_rng(1000 + seed)
    x, y = data(chi, P, rng)
    xt, yt = data(chi, 4096, rng)
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(width, 16, generator=g); W2 = torch.randn(width, width, generator=g); v = torch.randn(width, generator=g)
    params = [W1.requires_grad_(), W2.requires_grad_(), v.requires_grad_()]
    c = math.sqrt(0.5)

    def f(ps, inp):
        a, b, w = ps
        h = torch.relu(inp @ a.T / 4.0) / c
        h = torch.relu(h @ b.T / 8.0) / c
        return h @ w / width
    init = [p.detach().clone() for p in params]
    f0, f0t = f(init, x), f(init, xt)
    lr = T * B * width
    for step in range(200000):
        with torch.no_grad():
            if step % 50 == 0 and bool((y * alpha * (f(params, x) - f0) >= 1).all()):
                break
        idx = torch.randperm(P, generator=g)[:B]
        F = alpha * (f(params, x[idx]) - f0[idx])
        loss = torch.clamp(1 - y[idx] * F, min=0).mean() / alpha
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p -= lr * gr
    with torch.no_grad():
        err = float((torch.sign(alpha * (f(params, xt) - f0t)) != yt).double().mean())
        w = math.sqrt(sum(float(((p - q) ** 2).sum()) for p, q in zip(params, init)))
        w0 = math.sqrt(sum(float((q ** 2).sum()) for q in init))
    return err, w / w0, step


if __name__ == "__main__":
    chi, P = float(sys.argv[1]), int(sys.argv[2])
    seeds = range(int(sys.argv[3]) if len(sys.argv) > 3 else 8)
    rows = {T: [run(chi, P, T, s) for s in seeds] for T in (1e-4, 1e-3, 0.1)}
    for T, r in rows.items():
        e = np.array([a for a, _, _ in r])
        print(f"chi={chi:g} P={P} T={T:g}: test error {e.mean():.4f} ± {e.std(ddof=1) / math.sqrt(len(e)):.4f}, "
              f"weight change {np.mean([b for _, b, _ in r]):.4f}, steps {np.mean([s for _, _, s in r]):.0f}")
    e1, e2 = (np.array([a for a, _, _ in rows[T]]) for T in (1e-4, 1e-3))
    d = e2 - e1
    print(f"paired err(1e-3) - err(1e-4): {d.mean():.4f} ± {d.std(ddof=1) / math.sqrt(len(d)):.4f} "
          f"({(d > 0).sum()} of {len(d)} up), relative {d.mean() / e1.mean():+.2f}")
