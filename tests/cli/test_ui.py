"""`sgdlab ui [NAME]`: serves the store's MLflow dashboard and prints the URL of the sweep's runs in MLflow's
training view (the most recent sweep without NAME); no store or an unknown sweep is one line and exit 2."""


def store_with_two_sweeps(folder):
    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.writer import TrialRun

    handles = {}
    for sweep in ("older", "newer"):
        handles[sweep] = open_sweep(f"sqlite:///{folder / 'mlflow.db'}", sweep)
        TrialRun.start(handles[sweep], "t0", {"seed": 0}, attempt=1, run_name="t0").finish("converged")
    return handles


def test_without_a_name_ui_opens_the_most_recently_updated_sweep(tmp_path):
    """(The server itself, and the URL it prints, are tested in test_safe_defaults.py.)"""
    from sgdlab.tracking.query import sweep_experiments
    from sgdlab.tracking.store import experiment_url

    handles = store_with_two_sweeps(tmp_path)
    assert sweep_experiments(f"sqlite:///{tmp_path / 'mlflow.db'}") == [
        ("newer", handles["newer"].experiment_id, False), ("older", handles["older"].experiment_id, False)]
    assert experiment_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert experiment_url("http://h:5000", "7", view=True) == (
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=sgdlab-trials")


def test_ui_without_a_store_or_with_an_unknown_sweep_exits_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sgdlab.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = CliRunner().invoke(app, ["ui"], prog_name="sgdlab")
    assert out.exit_code == 2 and out.stderr.startswith(f"sgdlab: error: no store at {tmp_path / 'mlflow.db'}")
    store_with_two_sweeps(tmp_path)
    out = CliRunner().invoke(app, ["ui", "nosuch"], prog_name="sgdlab")
    assert out.exit_code == 2 and "no sweep 'nosuch' in sqlite:///" in out.stderr
    assert "sweeps there: newer, older" in " ".join(out.stderr.split())
