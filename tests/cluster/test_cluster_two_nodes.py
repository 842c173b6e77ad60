"""Two Ray nodes on this machine and an MLflow server on PostgreSQL: a sweep spreads over both nodes and loses
nothing; the second node dies in the middle of a sweep and the trials it held are retried on the head.

The head and the second node are separate `ray start` processes with one CPU each, their own ports and temp
dirs and a token of their own; sgdlab joins them as a driver (`cluster.address=ray://...` through the Ray
Client, then `cluster.address=host:port`) with MLFLOW_TRACKING_URI=http://127.0.0.1:PORT, and the records are
read back through the server's REST API.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import NO_REPORT, SGDLAB, run_sgdlab, status_json

from cluster_helpers import listening_addresses, mlflow_server, postgres_reachable, ray_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SPREAD = """
description: six short trials, spread over the cluster's two nodes
overrides: [model.depth=1, model.width=8, data.n_train=64, data.batch_size=8, optim.temperature=0.01,
            train.max_steps=300, train.stop_when_fitted=false, train.log_every=50]
axes:
  model.alpha: [1, 4, 16]
  seed: [0, 1]
"""

# Long enough (about 4.5 s of compute here) that the node dies mid-trial: it is killed 1-1.5 s after the run starts.
HOLD_STEPS = 12500
HOLD = f"""
description: four longer trials; the second node dies while it runs one
overrides: [model.depth=1, model.width=8, data.n_train=64, data.batch_size=8, optim.temperature=0.01,
            train.max_steps={HOLD_STEPS}, train.stop_when_fitted=false, train.log_every=500,
            train.checkpoint_every=1000]
axes:
  model.alpha: [1, 4]
  seed: [0, 1]
"""


def train_runs(client, sweep: str) -> list:
    exp = client.get_experiment_by_name(sweep)
    return client.search_runs([exp.experiment_id], "tags.`sgdlab.kind` = 'train'",
                              order_by=["attributes.start_time ASC"]) if exp else []


def node_of(run, ids: dict[str, str]) -> str:
    """'head' or 'second', from the run's sgdlab.node tag (host/ip/ray_node_id)."""
    tag = run.data.tags["sgdlab.node"]
    (name,) = [name for name, node_id in ids.items() if tag.endswith("/" + node_id)]
    return name


def by_trial(runs) -> dict[str, list]:
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags["sgdlab.trial_id"], []).append(run)
    return out


def test_sweeps_on_two_ray_nodes_with_postgres_mlflow(sweeps_dir, tmp_path, monkeypatch):
    reason = postgres_reachable()
    if reason:
        pytest.fail(f"{reason} (.ci/run starts it; locally: pg_ctlcluster $(ls /etc/postgresql) main start)")
    from mlflow.tracking import MlflowClient

    (sweeps_dir / "spread.yaml").write_text(SPREAD)
    (sweeps_dir / "hold.yaml").write_text(HOLD)
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    # Ray first (its processes start in the background), then the MLflow server, which waits until it answers.
    with ray_cluster(tmp_path) as (env, gcs_address, client_address, head, second), \
            mlflow_server(tmp_path) as (url, pg_uri, _):
        assert listening_addresses(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}  # this machine only
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        for name, value in env.items():
            if name.startswith("RAY_"):
                monkeypatch.setenv(name, value)
        head.wait_started()
        second.wait_started()
        ids = {"head": head.node_id(), "second": second.node_id()}
        assert ids["head"] != ids["second"]
        client = MlflowClient(url)

        # 1. A sweep through the Ray Client spreads over both nodes; every trial finishes once.
        out = run_sgdlab("sweep", "spread", f"cluster.address={client_address}", cwd=work, timeout=150)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "6 finished" in out.stderr and f"Store: {url}" in out.stderr
        runs = train_runs(client, "spread")
        assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
        assert all(len(rs) == 1 for rs in by_trial(runs).values()) and len(by_trial(runs)) == 6
        assert all(r.data.tags["sgdlab.attempt"] == "1" for r in runs)
        nodes = {r.data.tags["sgdlab.node"] for r in runs}
        assert {node_of(r, ids) for r in runs} == {"head", "second"} and len(nodes) == 2, nodes
        print(f"\nspread: node tags {sorted(nodes)}")
        assert status_json(work, "spread")["counts"]["finished"] == 6

        # 2. The second node dies while it runs a trial: Ray retries it on the head, which ends the lost run
        # FAILED ('worker lost') and finishes the trial as attempt 2; no trial is lost or finished twice.
        sweep = subprocess.Popen([*SGDLAB, "sweep", "hold", f"cluster.address={gcs_address}",
                                  "resources.max_retries=3", NO_REPORT], cwd=work, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline, held = time.monotonic() + 120, []
            while not held:
                assert sweep.poll() is None, sweep.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no trial ran on the second node"
                held = [r for r in train_runs(client, "hold")
                        if r.info.status == "RUNNING" and node_of(r, ids) == "second"]
                time.sleep(0.5)
            time.sleep(1.0)  # in the middle of the trial
            killed_at = time.time() * 1000
            second.crash()
            _, stderr = sweep.communicate(timeout=180)
        finally:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
        assert sweep.returncode == 0, stderr[-3000:]
        assert "4 finished" in stderr and "0 failed" in stderr
        runs = train_runs(client, "hold")
        trials = by_trial(runs)
        assert len(trials) == 4
        for trial_id, trial_runs in trials.items():
            assert [r.info.status for r in trial_runs].count("FINISHED") == 1, trial_id
            assert not [r for r in trial_runs if r.info.status == "RUNNING"], trial_id
        held_ids = {r.data.tags["sgdlab.trial_id"] for r in held}
        for trial_id in held_ids:
            lost = [r for r in trials[trial_id] if r.info.status == "FAILED"]
            (done,) = [r for r in trials[trial_id] if r.info.status == "FINISHED"]
            assert lost and all(node_of(r, ids) == "second" for r in lost)
            assert all(r.data.tags["sgdlab.error"].startswith("worker lost") for r in lost)
            assert node_of(done, ids) == "head" and int(done.data.tags["sgdlab.attempt"]) >= 2
            assert int(done.data.metrics["steps"]) == HOLD_STEPS
        after = [r for r in runs if r.info.start_time > killed_at + 1000]
        assert all(node_of(r, ids) == "head" for r in after)
        report = status_json(work, "hold")
        assert report["counts"]["finished"] == 4 and report["failed"] == []
        print(f"hold: trials held by the second node {sorted(held_ids)} retried on the head; "
              f"node tags {sorted({r.data.tags['sgdlab.node'] for r in runs})}; "
              f"{time.monotonic() - started:.0f} s in all")
