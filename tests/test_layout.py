"""The package layout rules of DESIGN.md."""

import subprocess
import sys

from conftest import REPO


def test_no_platform_package():
    # A package named `platform` would shadow the standard library module that torch, Ray and MLflow import.
    assert not (REPO / "platform" / "__init__.py").exists()


def test_import_sgdlab_and_status_do_not_import_torch_or_ray():
    code = ("import sys, sgdlab, sgdlab.cli.main, sgdlab.tracking.query, sgdlab.sweep.expand; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ci_runs_make_test():
    assert "make test" in (REPO / ".ci" / "run").read_text()
