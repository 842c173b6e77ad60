"""`sgdlab ui [NAME]`: serves the store's MLflow dashboard and prints the URL of the sweep's runs in MLflow's
training view (the most recent sweep without NAME); no store or an unknown sweep is one line and exit 2."""

import re
import subprocess
import urllib.request

from conftest import SGDLAB, run_sgdlab


def store_with_two_sweeps(folder):
    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.writer import TrialRun

    handles = {}
    for sweep in ("older", "newer"):
        handles[sweep] = open_sweep(f"sqlite:///{folder / 'mlflow.db'}", sweep)
        TrialRun.start(handles[sweep], "t0", {"seed": 0}, attempt=1, run_name="t0").finish("converged")
    return handles


def serve(folder, *args) -> tuple[str, str]:
    """(the printed URL, the page at its base) of `sgdlab ui ARGS` on a free port; the server is stopped."""
    from cluster.cluster_helpers import free_ports
    from sgdlab.tracking.server import wait_ready

    (port,) = free_ports(1)
    proc = subprocess.Popen([*SGDLAB, "ui", *args, "--port", str(port)], cwd=folder, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()
        url = re.search(r"(http://\S+)", line).group(1)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, 90, alive=lambda: proc.poll() is None)
        with urllib.request.urlopen(base, timeout=10) as page:
            return url, page.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)


def test_ui_prints_the_training_view_of_the_named_or_newest_sweep(tmp_path):
    handles = store_with_two_sweeps(tmp_path)
    url, page = serve(tmp_path, "older")
    assert url.endswith(f"/#/experiments/{handles['older'].experiment_id}/runs?workflowType=machine_learning")
    assert "<html" in page.lower()  # MLflow's UI is served
    url, _ = serve(tmp_path)
    assert f"/#/experiments/{handles['newer'].experiment_id}/runs?workflowType=machine_learning" in url


def test_ui_without_a_store_or_with_an_unknown_sweep_exits_2(tmp_path):
    out = run_sgdlab("ui", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(f"sgdlab: error: no store at {tmp_path / 'mlflow.db'}")
    store_with_two_sweeps(tmp_path)
    out = run_sgdlab("ui", "nosuch", cwd=tmp_path)
    assert out.returncode == 2 and "no sweep 'nosuch' in sqlite:///" in out.stderr
    assert "sweeps there: newer, older" in out.stderr
