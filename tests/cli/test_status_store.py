"""Which store a command reads: an explicit tracking.uri wins over MLFLOW_TRACKING_URI (MLflow's own order), and
`sgdlab status` names the store it read, or says that there is none instead of counting every trial pending."""

import json

from typer.testing import CliRunner

from conftest import TINY


def status(*args: str):
    from sgdlab.cli.main import app

    return CliRunner().invoke(app, ["status", "tiny", *args], prog_name="sgdlab")


def test_status_in_a_folder_without_a_store_says_so(sweeps_dir, tmp_path, monkeypatch):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    out = status()
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())
    assert f"No store at sqlite:///{tmp_path / 'mlflow.db'}: nothing has run here yet" in text
    assert "runs its 4 trials" in text and "pending" not in text
    report = json.loads(status("--json").stdout)
    assert report["store"] == {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "exists": False}
    assert not (tmp_path / "mlflow.db").exists()


def test_an_explicit_tracking_uri_wins_over_the_environment(sweeps_dir, tmp_path, monkeypatch):
    from sgdlab.tracking.store import open_sweep

    (sweeps_dir / "tiny.yaml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    chosen = f"sqlite:///{tmp_path / 'chosen.db'}"
    open_sweep(chosen, "tiny")  # a store with the sweep's experiment and no trial yet
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'environment.db'}")
    report = json.loads(status(f"tracking.uri={chosen}", "--json").stdout)
    assert report["store"] == {"uri": chosen, "exists": True} and report["counts"]["pending"] == 4
    assert json.loads(status("--json").stdout)["store"]["uri"] == f"sqlite:///{tmp_path / 'environment.db'}"
    out = status(f"tracking.uri={chosen}")
    assert f"store: {chosen}" in " ".join(out.stdout.split())
