"""analysis/gate_section.py: the feature-learning gate on synthetic records, every number worked out by hand."""

import math

import pytest

from sgdlab.analysis.frames import swept_columns, trial_frame
from sgdlab.analysis.gate_section import PASSES, gate_cells, gate_section, gate_verdicts, task_columns
from sgdlab.analysis.report import build_report
from test_analysis import PNG_MAGIC, record

ALPHAS = (2 ** -6, 1, 4096)
SE3 = 0.01 / math.sqrt(3)  # standard error of three values 0.01 apart: sample std 0.01, over sqrt(3)


def task_records(name, P, errors, outcomes=None):
    """One task at T = 1e-3: errors[alpha] = test errors of seeds 0, 1, 2; outcomes[(alpha, seed)] if not converged."""
    out = []
    for alpha in ALPHAS:
        for seed, error in enumerate(errors[alpha]):
            r = record(alpha, 1e-3, seed, P=P, width=64, outcome=(outcomes or {}).get((alpha, seed), "converged"),
                       trial_id=f"{name}-{alpha}-{seed}", metrics={"test_error": error})
            r.params["data.name"] = name
            out.append(r)
    return out


def gate_records():
    # sphere: feature learning 0.11 ± SE3 against lazy 0.06 ± SE3: D = 0.05 ± sqrt(2) SE3 = 0.00816, z = 6.1
    sphere = task_records("sphere_field", 2048, {ALPHAS[0]: [0.10, 0.11, 0.12], 1: [0.08] * 3,
                                                ALPHAS[2]: [0.05, 0.06, 0.07]})
    # digits: feature learning worse but not by 3 s.e.: 0.05 ± 2 SE3 against 0.04 ± SE3, D = 0.01 ± sqrt(5) SE3
    # (z = 0.77); a fourth seed stopped at max_steps is left out and counted.
    digits = task_records("digits_parity", 1536, {ALPHAS[0]: [0.03, 0.05, 0.07], 1: [0.04] * 3,
                                                  ALPHAS[2]: [0.03, 0.04, 0.05]})
    late = record(ALPHAS[0], 1e-3, 3, P=1536, width=64, outcome="max_steps", trial_id="digits-late",
                  metrics={"test_error": 0.5})
    late.params["data.name"] = "digits_parity"
    # mnist1d: one lazy seed fitted: no verdict
    mnist1d = task_records("mnist1d_parity", 1536, {ALPHAS[0]: [0.3, 0.3, 0.3], 1: [0.3] * 3, ALPHAS[2]: [0.4] * 3},
                           outcomes={(ALPHAS[2], 1): "max_steps", (ALPHAS[2], 2): "max_steps"})
    return [*sphere, *digits, late, *mnist1d]


def test_gate_verdicts_by_hand():
    frame = trial_frame(gate_records())
    columns = task_columns(frame, swept_columns(frame))
    assert columns == ["data.name", "P"]
    cells = gate_cells(frame, columns)
    table = gate_verdicts(cells).set_index("task")
    assert list(table.index) == ["digits_parity P=1536", "mnist1d_parity P=1536", "sphere_field P=2048"]
    sphere = table.loc["sphere_field P=2048"]
    assert (sphere.alpha_feature, sphere.alpha_lazy) == (2 ** -6, 4096)
    assert sphere.error_feature == pytest.approx(0.11) and sphere.se_feature == pytest.approx(SE3)
    assert sphere.error_lazy == pytest.approx(0.06) and sphere.se_lazy == pytest.approx(SE3)
    assert sphere.difference == pytest.approx(0.05) and sphere.difference_se == pytest.approx(math.sqrt(2) * SE3)
    assert sphere.z == pytest.approx(0.05 / (math.sqrt(2) * SE3)) and sphere.verdict == PASSES
    digits = table.loc["digits_parity P=1536"]
    assert digits.error_feature == pytest.approx(0.05) and digits.se_feature == pytest.approx(2 * SE3)
    assert digits.difference == pytest.approx(0.01) and digits.difference_se == pytest.approx(math.sqrt(5) * SE3)
    assert digits.verdict == "does not pass"
    assert table.loc["mnist1d_parity P=1536", "verdict"] == "no verdict (fewer than 2 fitted seeds at alpha = 4096)"
    by_cell = cells.set_index(["task", "alpha"])
    assert by_cell.loc[("digits_parity P=1536", 2 ** -6), ["test_error_n", "n_unfitted"]].tolist() == [3, 1]
    assert by_cell.loc[("mnist1d_parity P=1536", 4096), ["test_error_n", "n_unfitted"]].tolist() == [1, 2]


def test_gate_in_the_report(tmp_path):
    report = build_report(gate_records(), "sgd_noise_gate", tmp_path)
    assert "1 of 3 tasks pass the gate: sphere_field P=2048." in report.markdown
    assert "digits_parity P=1536 alpha = 0.015625: 1; mnist1d_parity P=1536 alpha = 4096: 2" in report.markdown
    assert report.numbers["summary/gate_tasks_passing"] == 1
    assert report.numbers["summary/gate_difference/sphere_field P_2048"] == pytest.approx(0.05)
    assert report.numbers["summary/gate_passes/sphere_field P_2048"] == 1
    assert report.numbers["summary/gate_passes/digits_parity P_1536"] == 0
    assert "summary/gate_passes/mnist1d_parity P_1536" not in report.numbers  # no verdict, no number
    assert (tmp_path / "gate_test_error_vs_alpha.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "gate.csv").exists()


def test_no_gate_when_T_varies(tmp_path):
    records = [record(alpha, T, 0, metrics={"test_error": 0.1}) for alpha in (1, 1024) for T in (0.001, 0.01)]
    frame = trial_frame(records)
    assert gate_section(frame, swept_columns(frame), tmp_path, {}) == ([], [])


def test_tasks_are_named_by_data_set_then_the_params_that_tell_them_apart():
    """data.name first; a param that the data set fixes (d = 5 of sphere_field, NaN for digits) is left out; chi of
    the teacher tasks is kept."""
    def task(name, alpha, seed, **data):
        r = record(alpha, 1e-3, seed, trial_id=f"{name}-{data}-{alpha}-{seed}", metrics={"test_error": 0.1})
        r.params.update({"data.name": name, **{f"data.{k}": str(v) for k, v in data.items()}})
        return r

    mixed = [task("digits_parity", a, s) for a in (1, 4096) for s in (0, 1)]
    mixed += [task("sphere_field", a, s, dim=5) for a in (1, 4096) for s in (0, 1)]
    frame = trial_frame(mixed)
    assert task_columns(frame, swept_columns(frame)) == ["data.name"]
    teacher = [task("teacher_perceptron", a, s, dim=16, chi=chi) for a in (1, 4096) for s in (0, 1) for chi in (0, 1)]
    frame = trial_frame(teacher)
    columns = task_columns(frame, swept_columns(frame))
    assert columns == ["chi"]
    assert sorted(gate_cells(frame, columns)["task"].unique()) == ["chi=0", "chi=1"]
    frame = trial_frame([*mixed, *teacher])
    columns = task_columns(frame, swept_columns(frame))
    assert columns == ["data.name", "chi"]
    assert sorted(gate_cells(frame, columns)["task"].unique()) == [
        "digits_parity", "sphere_field", "teacher_perceptron chi=0", "teacher_perceptron chi=1"]
