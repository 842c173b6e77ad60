"""Hessian probes side by side on one model and one data set, in one run: products, seconds, errors, ratios.

    .venv/bin/python bench/probe_bench.py                                  # small CNN, 512 digits 8x8, CPU
    .venv/bin/python bench/probe_bench.py --device cuda --model resnet18-like

Compared on the same float32 model, data and device:
  top-1 / top-5 eigenvalues: our Lanczos (tol 1e-3 on the relative Ritz residual), PyHessian's power iteration
  (its default stopping rule, relative change < 1e-3), curvlinops' Hessian + scipy eigsh (ARPACK, tol 1e-3);
  trace: Hutchinson and Hutch++ with PyHessian's number of products, PyHessian's Hutchinson (tol 1e-3);
  one gradient versus one Hessian-vector product (double backward, forward-over-reverse).
Reference: the dense float64 Hessian (eigvalsh, exact trace) for the small CNN; for resnet18-like (11M
parameters, BatchNorm in eval mode, 128 random 32x32 images) our float64 Lanczos at tol 1e-8 and no exact trace. Goals: top-1 and top-5 at <= 1e-3 relative error with at
most 1/3 of PyHessian's products and seconds; one HVP at most 3.5 gradients.
PyHessian is used as published (`make bench-probe` installs it with --no-deps so that it cannot replace the
pinned torch); if it cannot be imported its rows say so.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn

from sgdlab.probes.curvlinops_adapter import curvlinops_hessian
from sgdlab.probes.hvp import CurvatureOperator
from sgdlab.probes.lanczos import top_eigenpairs
from sgdlab.probes.trace import hutch_plus_plus, hutchinson

try:
    from pyhessian import hessian as PyHessian
    PYHESSIAN_ERROR = None
except Exception as error:  # noqa: BLE001 -- any import failure is reported in the table, never patched
    PyHessian, PYHESSIAN_ERROR = None, f"{type(error).__name__}: {error}"


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet18_like() -> nn.Module:
    """CIFAR-style ResNet-18: 3x3 stem, four stages of two basic blocks (64..512 channels), 11M parameters."""
    layers, c_in = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def problem(name: str, n: int, device: str, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float32 model in eval mode, briefly trained with Adam so that the spectrum has its outliers."""
    torch.manual_seed(seed)
    if name == "cnn":
        from sklearn.datasets import load_digits
        digits = load_digits()
        x = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32)[:, None]
        y = torch.tensor(digits.target[:n])
        model, steps = small_cnn(), 150
    else:
        x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
        model, steps = resnet18_like(), 30
    model, x, y = model.to(device), x.to(device), y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2 if name == "cnn" else 1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), x, y


def operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "auto",
             keep_graph: bool | None = None) -> CurvatureOperator:
    return CurvatureOperator(lambda p, b: torch.func.functional_call(model, p, (b[0],)),
                             lambda F, b: nn.functional.cross_entropy(F, b[1]),
                             dict(model.named_parameters()), [(x, y)], method=method, keep_graph=keep_graph)


def timed(device: str, fn, repeats: int = 3):
    """fn() run `repeats` times: its last output and the median wall time (after a GPU synchronize)."""
    seconds = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return out, statistics.median(seconds)


def rel_error(values, reference) -> float:
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(values) < len(reference):
        return float("inf")
    return float(np.max(np.abs(values[: len(reference)] - reference) / np.abs(reference)))


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dense: bool) -> tuple[np.ndarray, float | None]:
    """Top-5 eigenvalues and exact trace of the float64 Hessian: dense (columns H e_i by torch.func, vmapped over
    unit vectors, then eigvalsh), or top-5 by our float64 Lanczos at tol 1e-8 and no trace."""
    model64 = copy.deepcopy(model).double()
    if not dense:
        return top_eigenpairs(operator(model64, x.double(), y), k=5, tol=1e-8, max_iter=300).eigenvalues, None
    names, params = zip(*((n, p.detach()) for n, p in model64.named_parameters()))

    def objective(*ps):
        return nn.functional.cross_entropy(torch.func.functional_call(model64, dict(zip(names, ps)), (x.double(),)), y)

    def column(e):
        tangent = tuple(chunk.view_as(p) for chunk, p in zip(e.split([p.numel() for p in params]), params))
        hv = torch.func.jvp(torch.func.grad(objective, argnums=tuple(range(len(params)))), params, tangent)[1]
        return torch.cat([t.reshape(-1) for t in hv])
    eye = torch.eye(sum(p.numel() for p in params), dtype=torch.float64, device=x.device)
    h = torch.func.vmap(column, chunk_size=64)(eye).cpu().numpy()
    h = (h + h.T) / 2
    return np.linalg.eigvalsh(h)[::-1][:5].copy(), float(np.trace(h))


def pyhessian_call(model, x, y, device, fn):
    """fn(PyHessian object) and its number of products, counted by a hook on the first parameter (one call per
    HVP; PyHessian's constructor computes the gradient graph before the hook is set)."""
    torch.manual_seed(0)
    count = [0]
    h = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device == "cuda")
    handle = next(model.parameters()).register_hook(lambda g: count.__setitem__(0, count[0] + 1))
    try:
        return fn(h), count[0]
    finally:
        handle.remove()


def eigsh_top(model, x, y, k):
    """scipy eigsh (ARPACK, tol 1e-3, seeded v0) on curvlinops' Hessian; products counted by a wrapper."""
    op = curvlinops_hessian(model, nn.CrossEntropyLoss(), [(x, y)])
    count = [0]

    def matvec(v):
        count[0] += 1
        return op.matvec(v)
    counted = scipy.sparse.linalg.LinearOperator(op.shape, matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    values = scipy.sparse.linalg.eigsh(counted, k=k, which="LA", tol=1e-3, v0=v0, return_eigenvectors=False)
    return np.sort(values)[::-1], count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="cnn", choices=["cnn", "resnet18-like"])
    parser.add_argument("--n", type=int, help="number of examples, one batch (default 512 cnn, 128 resnet18-like)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible to torch")
    args.n = args.n or (512 if args.model == "cnn" else 128)
    model, x, y = problem(args.model, args.n, args.device, args.seed)
    auto = operator(model, x, y)
    print(f"model {args.model}, {auto.dim} parameters, {args.n} examples, float32, device {args.device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds = median of 3 runs")
    print(f"method='auto' picked {auto.method} (one timed product each: "
          + ", ".join(f"{m} {s * 1e3:.1f} ms" for m, s in auto.method_seconds.items()) + ")")
    ref_top, ref_trace = reference(model, x, y, dense=args.model == "cnn")
    print(f"reference top-5 ({'dense float64 eigvalsh' if ref_trace is not None else 'float64 Lanczos tol 1e-8'}):"
          f" {np.array2string(ref_top, precision=6)}" + (f", trace {ref_trace:.6f}" if ref_trace is not None else ""))

    def ours(k: int):
        result = top_eigenpairs(operator(model, x, y, auto.method), k=k, tol=1e-3)
        return result.eigenvalues, result.n_products

    def pyhessian_top(k, tol):
        values, products = pyhessian_call(model, x, y, args.device, lambda h: h.eigenvalues(top_n=k, tol=tol)[0])
        return sorted(values, reverse=True), products

    rows = []  # (task, method, products, seconds, relative error); products None: unavailable
    for k in (1, 5):
        candidates = [("sgdlab Lanczos tol 1e-3", functools.partial(ours, k)),
                      ("PyHessian power iter tol 1e-3", functools.partial(pyhessian_top, k, 1e-3)),
                      ("PyHessian power iter tol 1e-5", functools.partial(pyhessian_top, k, 1e-5)),
                      ("curvlinops + eigsh tol 1e-3", functools.partial(eigsh_top, model, x, y, k))]
        for label, fn in candidates:
            if label.startswith("PyHessian") and PyHessian is None:
                rows.append((f"top-{k}", label, None, None, None))
                continue
            (values, products), seconds = timed(args.device, fn)
            rows.append((f"top-{k}", label, products, seconds, rel_error(values, ref_top[:k])))

    budget = 100
    if PyHessian is None:
        rows.append(("trace", "PyHessian Hutchinson tol 1e-3", None, None, None))
    else:
        (samples, budget), seconds = timed(args.device, lambda: pyhessian_call(model, x, y, args.device,
                                                                                lambda h: h.trace(tol=1e-3)))
        rows.append(("trace", "PyHessian Hutchinson tol 1e-3", budget, seconds, trace_error(np.mean(samples), ref_trace)))
    trace_notes = []
    for label, estimator in [("sgdlab Hutchinson", hutchinson), ("sgdlab Hutch++", hutch_plus_plus)]:
        estimate, seconds = timed(args.device, lambda e=estimator: e(operator(model, x, y, auto.method), max(budget, 3)))
        rows.append(("trace", label, estimate.n_products, seconds, trace_error(estimate.mean, ref_trace)))
        trace_notes.append(f"{label} {estimate.mean:.4f} +- {estimate.stderr:.4f}")

    print()
    header = f"{'task':<6} {'method':<30} {'products':>8} {'seconds':>8} {'rel.err':>8} {'prod/PyH':>8} {'sec/PyH':>8}"
    print(header)
    print("-" * len(header))
    for task, label, products, seconds, error in rows:
        if products is None:
            print(f"{task:<6} {label:<30} unavailable: {PYHESSIAN_ERROR}")
            continue
        base = next((r for r in rows if r[0] == task and r[1].startswith("PyHessian") and r[2] is not None), None)
        ratios = f"{products / base[2]:>8.2f} {seconds / base[3]:>8.2f}" if base else f"{'-':>8} {'-':>8}"
        err = f"{error:.1e}" if error is not None else "n/a"
        print(f"{task:<6} {label:<30} {products:>8d} {seconds:>8.3f} {err:>8} {ratios}")
    print("ratios are to the first PyHessian row of each task (its default tol 1e-3)")
    print("trace estimates (mean +- standard error): " + "; ".join(trace_notes))

    v = torch.randn(auto.dim, generator=torch.Generator().manual_seed(0)).to(args.device)
    _, gradient_s = timed(args.device, operator(model, x, y).gradient, repeats=21)
    print(f"\none gradient: {gradient_s * 1e3:.2f} ms (median of 21)")
    for method, keep_graph in [("double_backward", False), ("double_backward", True), ("forward_over_reverse", None)]:
        hvp = operator(model, x, y, method, keep_graph)
        _, seconds = timed(args.device, functools.partial(hvp.matvec, v), repeats=21)
        label = method + {False: " (graph rebuilt)", True: " (graph kept)", None: ""}[keep_graph]
        print(f"one HVP, {label:<31}: {seconds * 1e3:.2f} ms = {seconds / gradient_s:.2f} x gradient")
    print("\ngoals: top-1 and top-5 at <= 1e-3 relative error with products and seconds <= 1/3 of PyHessian's;"
          " one HVP <= 3.5 x one gradient")


def trace_error(estimate: float, exact: float | None) -> float | None:
    return abs(estimate - exact) / abs(exact) if exact is not None else None


if __name__ == "__main__":
    main()
