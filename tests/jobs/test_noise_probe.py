"""The gradient-noise probe as the training job and the end probe run it (jobs/probe.py): at step 0 with
probe.at_start, its numbers are those of a plain loop over the probe data's examples (the dense float64 checks of
the estimator itself are in tests/probes/test_probes.py)."""

import pytest
import torch

from sgdlab.config.compose import Composer
from sgdlab.jobs.probe import trajectory_hook
from sgdlab.training.problem import build_problem


def test_the_noise_probe_at_step_0_logs_the_noise_scale_of_the_probe_data():
    cfg = Composer()(["data=digits_parity", "data.n_train=48", "model.depth=1", "model.width=8", "loss=mse",
                      "optim.lr=0.5", "probe.at_start=true", "probe.noise=true", "probe.top_k=2",
                      "probe.trace_samples=16", "probe.n_examples=40", "probe.chunk_size=16"])
    problem = build_problem(cfg)
    params = {k: v.double() + 0.2 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0),
                                                   dtype=torch.float64) for k, v in problem.params0.items()}
    logged = {}
    trajectory_hook(problem, cfg["probe"], lambda step, metrics: logged.update(metrics, step=step))(0, params)
    assert logged["step"] == 0
    # the noise of the first 40 training points, one example at a time, in float64
    x, y, f0 = (t[:40] for t in problem.train_batch(torch.arange(40)))
    grads = []
    for i in range(40):
        example = (x[i:i + 1].double(), y[i:i + 1], f0[i:i + 1].double())
        loss = lambda p: problem.batch_loss(problem.predict(p, example), example)  # noqa: E731
        grads.append(torch.cat([g.reshape(-1) for g in torch.func.grad(loss)(params).values()]))
    grads = torch.stack(grads)
    mean = grads.mean(0)
    trace = float(((grads - mean) ** 2).sum(1).mean())
    assert logged["noise_trace"] == pytest.approx(trace, rel=1e-9)
    assert logged["grad_norm_sq"] == pytest.approx(float(mean @ mean), rel=1e-9)
    assert logged["noise_scale"] == pytest.approx(trace / float(mean @ mean), rel=1e-9)
    assert 0 < logged["noise_top_share"] < 1
    assert logged["curvature_ratio"] == pytest.approx(logged["hessian_trace"] / logged["sharpness"])
