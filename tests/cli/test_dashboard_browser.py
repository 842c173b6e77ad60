"""The MLflow dashboard as a new user sees it, in a real browser: after `sgdlab sweep smoke` alone, `sgdlab ui`
prints a URL whose page in headless Chromium (a fresh profile) lists the 8 trial runs, and a link to the sweep run's
report, whose page shows the phase diagram served from the store. Screenshots are left in the test's temporary
folder for a person to look at."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from sgdlab.sweep import spec
from sgdlab.sweep.expand import expand
from sgdlab.tracking.tags import run_name

from conftest import SGDLAB, run_sgdlab

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray"),
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")]
# The flags a headless Chromium needs on a machine without a desktop or outside network (as root: no sandbox).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1600,1000", "--virtual-time-budget=20000"]


def chromium(url: str, profile, *action: str) -> str:
    """Chromium's stdout for one page load with a fresh profile (`--dump-dom` prints the rendered DOM)."""
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *action, url], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def rendered(url: str, tmp_path, name: str, expected: str, tries: int = 3) -> str:
    """The page's DOM once it shows `expected` (the UI loads its data asynchronously), and its screenshot."""
    for attempt in range(tries):
        dom = chromium(url, tmp_path / f"profile-{name}-{attempt}", "--dump-dom")
        if expected in dom:
            break
    chromium(url, tmp_path / f"profile-{name}-shot", f"--screenshot={tmp_path / f'{name}.png'}")
    return dom


def test_after_a_smoke_sweep_ui_prints_a_url_that_lists_the_trials_and_serves_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("SGDLAB_SWEEPS_DIR", raising=False)  # the repository's own sweeps/smoke.yaml
    out = run_sgdlab("sweep", "smoke", "report.auto=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "attached to the sweep's MLflow run under report/" in out.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    server = subprocess.Popen([*SGDLAB, "ui", "--port", str(port)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        printed = server.stderr.readline() + server.stderr.readline()
        runs_url, report_url = re.findall(r"http://\S+", printed)
        assert "workflowType=machine_learning" in runs_url and "viewStateShareKey=" in runs_url
        assert report_url.endswith("/artifacts/report?workflowType=machine_learning")
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.time() < deadline, "the MLflow server did not answer"
                time.sleep(1)

        names = [run_name(t.swept, {"data.n_train": "256"}) for t in expand(spec.load("smoke").override_strings())]
        assert len(names) == 8
        dom = rendered(runs_url, tmp_path, "runs", names[-1])
        listed = [n for n in names if f">{n}<" in dom]
        assert listed == names, f"trial runs missing from the page: {sorted(set(names) - set(listed))}"
        assert "digits_parity" in dom  # the Dataset column
        assert "Traces 0" not in dom and "Detect Issues" not in dom  # not the GenAI view

        figure = report_url.replace("/artifacts/report?", "/artifacts/report/phase_test_error.png?")
        dom = rendered(figure, tmp_path, "report", 'alt="report/phase_test_error.png"')
        assert re.search(r'<img alt="report/phase_test_error.png" src="blob:', dom), "the figure is not shown"
        run_id = re.search(r"/runs/([0-9a-f]{32})/", report_url).group(1)
        png = urllib.request.urlopen(f"http://127.0.0.1:{port}/get-artifact?path=report/phase_test_error.png"
                                     f"&run_uuid={run_id}", timeout=10).read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        for shot in ("runs.png", "report.png"):  # for a person to look at
            assert (tmp_path / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
