"""Probe jobs: curvature of a trained trial's objective, config dict in, summary out, records through tracking/.

What is measured is the Hessian (or Gauss-Newton matrix, probe.matrix) of the training objective
L(w) = mean over the probe data of loss(alpha (f(w, x) - f(w0, x)), y): the first probe.n_examples training
points, in batches of probe.chunk_size, size-weighted. Every probe run records that description in its tags.

- run_probe: the end-of-training probe, its own MLflow run (kind probe) under the sweep run, on the parameters
  in the train run's `checkpoint/final.pt` (loaded with weights_only=True): sharpness and hessian_top_k/i
  (Lanczos), hessian_trace (Hutchinson, with its standard error), optionally the SLQ spectral density, the
  mini-batch vs full comparison for probe.batch_sizes, per-layer traces and top eigenvalues, and with
  probe.noise the gradient noise scale (noise_metrics).
- trajectory_hook: the in-training probe (probe.every, probe.at_start), logging sharpness (and hessian_trace,
  the batch sharpness, and at step 0 lambda_max(H_B)) along training.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from sgdlab.jobs.summary import TrialSummary
from sgdlab.probes.batch import batch_sharpness, minibatch_curvature
from sgdlab.probes.blocks import block_probes
from sgdlab.probes.density import density_on_grid, slq
from sgdlab.probes.distributed import DistributedCurvatureOperator, shard_data
from sgdlab.probes.hvp import CurvatureOperator
from sgdlab.probes.lanczos import Eigenpairs, top_eigenpairs
from sgdlab.probes.noise import gradient_noise
from sgdlab.probes.trace import hutchinson
from sgdlab.sweep.identity import probe_id
from sgdlab.tracking import tags
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import TrialRun
from sgdlab.training import checkpoint
from sgdlab.training.distributed import world
from sgdlab.training.problem import DTYPES, Problem, build_problem

def operator(problem: Problem, params: dict, pcfg: dict) -> CurvatureOperator:
    """The probe's curvature operator at params (cast to probe.dtype)."""
    dtype = DTYPES[pcfg["dtype"]]
    cast = lambda batch: tuple(t.to(dtype) if t.is_floating_point() else t for t in batch)  # noqa: E731
    batches = [cast(b) for b in problem.train_batches(pcfg["n_examples"], pcfg["chunk_size"])]
    return CurvatureOperator(problem.predict, problem.batch_loss, {k: v.detach().to(dtype) for k, v in params.items()},
                             batches, matrix=pcfg["matrix"])


def distributed_operator(problem: Problem, params: dict, pcfg: dict) -> DistributedCurvatureOperator:
    """The probe's full-data operator on W data-parallel workers: this rank's contiguous share of the probe data
    (probe.n_examples training points) in chunks of probe.chunk_size, products all-reduced."""
    workers, dtype = world(), DTYPES[pcfg["dtype"]]
    x, y, f0 = problem.train_batches(pcfg["n_examples"], 10**12)[0]
    batches = shard_data((x.to(dtype), y, f0.to(dtype)), workers.rank, workers.size, pcfg["chunk_size"])
    return DistributedCurvatureOperator(problem.predict, problem.batch_loss,
                                        {k: v.detach().to(dtype) for k, v in params.items()}, batches,
                                        matrix=pcfg["matrix"])


def description_tags(op: CurvatureOperator) -> dict[str, str]:
    d = op.description
    return {tags.MATRIX: d["matrix"], tags.NORMALIZATION: d["normalization"],
            tags.PROBE_DATA: f"first {d['n_examples']} training points in {d['n_batches']} batches",
            tags.HVP_METHOD: d["method"], tags.PROBE_DTYPE: d["dtype"]}


def trajectory_hook(problem: Problem, pcfg: dict, log, make_operator=operator) -> callable:
    """on_params callback, logged at the step it is called: along training (probe.every) the sharpness, optionally
    hessian_trace, and batch_sharpness/B<b> for each b in probe.batch_sizes; at step 0 with probe.at_start, the
    batch sharpness and batch_lambda_max/B<b> (E[lambda_max(H_B)] over probe.n_batches batches, with its standard
    error and its ratio to lambda_max(H)), the point from which the largest stable lr 2 / E[lambda_max(H_B)] is
    predicted; with probe.noise, the gradient noise (noise_metrics) wherever it is called. The batches are the
    same at every step (seeded by probe.seed). make_operator(problem, params, pcfg): the full-data curvature
    operator (`operator`, or `distributed_operator` on W data-parallel workers)."""

    def hook(step: int, params: dict) -> None:
        metrics = {}
        if pcfg["every"] or pcfg["noise"]:
            op = make_operator(problem, params, pcfg)
            top = top_eigenpairs(op, k=pcfg["top_k"] if pcfg["noise"] else 1, tol=pcfg["tol"], seed=pcfg["seed"],
                                 return_vectors=pcfg["noise"])
            metrics["sharpness"] = float(top.eigenvalues[0])
            if (pcfg["trace_every"] or pcfg["noise"]) and pcfg["trace_samples"]:
                metrics["hessian_trace"] = hutchinson(op, pcfg["trace_samples"], seed=pcfg["seed"]).mean
            if pcfg["noise"]:
                metrics.update(noise_metrics(op, top, metrics["hessian_trace"]))
        if pcfg["batch_sizes"]:
            metrics.update(batch_metrics(problem, params, pcfg, lambda_max=step == 0 and pcfg["at_start"]))
        log(step, metrics)

    return hook


def noise_metrics(op: CurvatureOperator, top: Eigenpairs, hessian_trace: float) -> dict[str, float]:
    """The gradient noise on the operator's probe data (probes/noise.py): noise_trace = tr(Sigma),
    grad_norm_sq = |g|^2, noise_scale = tr(Sigma) / |g|^2, noise_top_share = the share of tr(Sigma) in the span
    of top's eigenvectors, and curvature_ratio = tr(H) / lambda_max(H) (the Hutchinson trace over the top
    eigenvalue)."""
    noise = gradient_noise(op.predict, op.loss, op.params, op.batches, directions=top.vectors)
    return {"noise_trace": noise.trace, "grad_norm_sq": noise.grad_norm_sq, "noise_scale": noise.scale,
            "noise_top_share": noise.top_share, "curvature_ratio": hessian_trace / float(top.eigenvalues[0])}


def batch_metrics(problem: Problem, params: dict, pcfg: dict, lambda_max: bool) -> dict[str, float]:
    """batch_sharpness/B<b> (and with lambda_max, batch_lambda_max/B<b> and the ratio to the full lambda_max) for
    each b in probe.batch_sizes, on probe.n_batches seeded batches of the probe data."""
    x, y, f0 = problem.train_batches(pcfg["n_examples"], 10**12)[0]
    dtype = DTYPES[pcfg["dtype"]]
    data, params = (x.to(dtype), y, f0.to(dtype)), {k: v.detach().to(dtype) for k, v in params.items()}
    metrics = {}
    for b in pcfg["batch_sizes"]:
        if lambda_max:
            mb = minibatch_curvature(problem.predict, problem.batch_loss, params, data, b, pcfg["n_batches"],
                                     chunk_size=pcfg["chunk_size"], tol=pcfg["tol"], seed=pcfg["seed"])
            metrics.update({f"batch_lambda_max/B{b}": mb.mean, f"batch_lambda_max_se/B{b}": mb.stderr,
                            f"batch_lambda_max_ratio/B{b}": mb.mean / mb.full_lambda_max,
                            f"batch_sharpness/B{b}": mb.batch_sharpness_mean,
                            f"batch_sharpness_se/B{b}": mb.batch_sharpness_stderr})
        else:
            mean, stderr = batch_sharpness(problem.predict, problem.batch_loss, params, data, b, pcfg["n_batches"],
                                           seed=pcfg["seed"])
            metrics.update({f"batch_sharpness/B{b}": mean, f"batch_sharpness_se/B{b}": stderr})
    return metrics


def measure(problem: Problem, params: dict, pcfg: dict, run: TrialRun) -> tuple[dict[str, float], bool]:
    """All end-of-training measurements; spectra go to run artifacts. Returns (metrics, all converged)."""
    op = operator(problem, params, pcfg)
    run.flush(description_tags(op))
    top = top_eigenpairs(op, k=pcfg["top_k"], tol=pcfg["tol"], seed=pcfg["seed"], return_vectors=pcfg["noise"])
    metrics = {"sharpness": float(top.eigenvalues[0]), "lanczos_products": float(top.n_products),
               "lanczos_residual": float(top.residuals[0])}
    metrics.update({f"hessian_top_k/{i + 1}": float(v) for i, v in enumerate(top.eigenvalues)})
    converged = top.converged
    if pcfg["trace_samples"]:
        trace = hutchinson(op, pcfg["trace_samples"], seed=pcfg["seed"])
        metrics.update({"hessian_trace": trace.mean, "hessian_trace_se": trace.stderr})
    if pcfg["noise"]:
        metrics.update(noise_metrics(op, top, metrics["hessian_trace"]))
    if pcfg["slq_starts"]:
        quad = slq(op, pcfg["slq_starts"], pcfg["slq_steps"], seed=pcfg["seed"])
        lo = min(float(n.min()) for n in quad.nodes)
        hi = max(float(n.max()) for n in quad.nodes)
        sigma = max(hi - lo, 1e-12) / 200
        grid = np.linspace(lo - 10 * sigma, hi + 10 * sigma, 1000)
        run.log_text(json.dumps({"nodes": [n.tolist() for n in quad.nodes],
                                 "weights": [w.tolist() for w in quad.weights], "dim": op.dim}), "spectrum/slq.json")
        density = density_on_grid(quad.nodes, quad.weights, grid, sigma)
        run.log_text("eigenvalue,density\n" + "".join(f"{g:.9g},{d:.9g}\n" for g, d in zip(grid, density)),
                     "spectrum/density.csv")
    metrics.update(batch_metrics(problem, params, pcfg, lambda_max=True))
    if pcfg["per_layer"]:
        for name, block in block_probes(op, n_samples=max(pcfg["trace_samples"], 2), tol=pcfg["tol"],
                                        seed=pcfg["seed"]).items():
            metrics.update({f"layer_trace/{name}": block.trace.mean, f"layer_trace_se/{name}": block.trace.stderr,
                            f"layer_lambda_max/{name}": float(block.top.eigenvalues[0])})
    return metrics, converged


def run_probe(config: dict, handle: SweepHandle, *, trial_id: str, train_run_id: str, attempt: int,
              run_name: str) -> TrialSummary:
    """The end probe of a finished train run, as its own probe run; the summary's run_id is the probe run."""
    torch.set_num_threads(max(1, int(config["resources"]["cpus"])))
    pid = probe_id(config, trial_id)
    run = TrialRun.start(handle, trial_id, config, attempt=attempt, run_name=f"probe {run_name}", kind="probe",
                   extra_tags={tags.PROBE_ID: pid, tags.TRAIN_RUN: train_run_id},
                   heartbeat_s=config["tracking"]["heartbeat_s"], stale_after_s=config["tracking"]["stale_after_s"])
    started = time.perf_counter()
    try:
        data = download_bytes(handle.uri, train_run_id, checkpoint.FINAL)
        if data is None:
            raise FileNotFoundError(f"train run {train_run_id} has no {checkpoint.FINAL}")
        state = checkpoint.from_bytes(data)["state"]
        problem = build_problem(config)
        metrics, converged = measure(problem, state["params"], config["probe"], run)
        metrics["probe_time"] = time.perf_counter() - started
        run.log_metrics(int(state["steps"]), metrics)
    except Exception as exc:
        return TrialSummary.failed(trial_id, run.fail(exc), run.run_id, stage="probe")
    duplicate = run.finish("converged" if converged else "max_steps")  # another driver probed it meanwhile
    if duplicate:
        return TrialSummary.elsewhere(trial_id, run.run_id, duplicate)
    return TrialSummary(trial_id, "finished", run.run_id, metrics=metrics)
