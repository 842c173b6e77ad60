"""Bad input: one clear line, exit code 2, before anything runs; the MLflow store is not even created."""

import hashlib
import shutil
from pathlib import Path

import pytest

from conftest import TINY, idle, run_sgdlab


@pytest.fixture(scope="module")
def other_store(tmp_path_factory) -> Path:
    """A folder with a store that holds one finished run of another sweep."""
    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.writer import TrialRun

    folder = tmp_path_factory.mktemp("store")
    run = TrialRun.start(open_sweep(f"sqlite:///{folder / 'mlflow.db'}", "other"), "t0", {"seed": 0}, attempt=1,
                         run_name="t0")
    run.finish("converged")
    idle(folder / "mlflow.db")  # as a store is between commands: no -wal or -shm beside it
    return folder


def digest(folder: Path) -> dict[str, str]:
    """Every file's hash (a -wal or -shm file a command left behind is a difference)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, message", [
    (("sweep", "no_such_sweep"),
     "unknown sweep 'no_such_sweep'; available: badrefine, elsewhere, empty, latin1, refined, tiny, twice"),
    (("sweep", "x" * 300), "at most 100 characters, got 300"),
    (("sweep", "twice"), "twice.yaml: not valid YAML (key 'seed' given twice)"),
    (("sweep", "latin1"), "latin1.yaml: not UTF-8 text (byte 0xe9 at position 16)"),
    (("sweep", "tiny", "train.loss_threshold=nan"), "train.loss_threshold: must be a finite number, got nan"),
    (("sweep", "tiny", "train.loss_threshold=inf"), "train.loss_threshold: must be a finite number, got inf"),
    (("sweep", "tiny", "data=teacher_perceptron", "data.chi=nan"), "data.chi: must be a finite number, got nan"),
    (("sweep", "tiny", "data=digits"), "loss: hinge is binary (one output, labels +-1); data=digits has ten classes"),
    (("sweep", "tiny", "resources.max_in_flight=-1"), "resources.max_in_flight: must be > 0, got -1"),
    (("sweep", "tiny", "seed=range(0,5,0)"), "seed: range() arg 3 must not be zero"),
    (("sweep", "../tiny"), "no paths"),
    (("sweep", "sub/tiny"), "no paths"),
    (("sweep", "tiny", "optim.lrr=0.1"), "optim.lrr: unknown config key; allowed in optim=sgd: lr, name, "
                                         "temperature"),
    # the keys of the option chosen, not of every model (vgg has no depth)
    (("sweep", "tiny", "model=vgg", "model.depth=3"), "model.depth: unknown config key; allowed in model=vgg: "
                                                      "activation, alpha, center, convs_per_stage, name, stages"),
    (("sweep", "tiny", "optim.temperature=interval(0.001,0.1)"),
     "optim.temperature: interval(0.001,0.1) is an interval, and a grid needs discrete values: use range() or a "
     "list, or an Optuna sweeper"),
    (("sweep", "tiny", "model=glob(z*)"), "model: glob(z*) selects none of the options cnn, mlp, perceptron, vgg"),
    (("sweep", "tiny", "optim.lr=glob(*)"), "optim.lr: glob() selects options of a config group ("),
    (("--sweeps-dir", "/nonexistent", "sweep", "tiny"), "--sweeps-dir /nonexistent: not a folder"),
    (("status", "no_such_sweep"), "unknown sweep 'no_such_sweep': no sweep file (available: badrefine, elsewhere, "
                                  "empty, latin1, refined, tiny, twice) and no runs of it in sqlite:///"),
    (("sweep", "tiny", "modle.alpha=2"), "modle.alpha: unknown config key"),
    (("sweep", "tiny", "data.batch_size=abc"), "data.batch_size: expected an integer, got 'abc'"),
    (("sweep", "tiny", "optim.temperature=0"), "optim.temperature: must be > 0"),
    (("sweep", "tiny", "optim.temperature=-1e-3"), "optim.temperature: must be > 0"),
    (("sweep", "tiny", "data.batch_size=65"), "data.batch_size: B = 65 exceeds data.n_train = 64"),
    (("sweep", "tiny", "model.alpha=0"), "model.alpha: must be > 0"),
    (("sweep", "tiny", "model.alpha=choice()"), "model.alpha"),
    (("sweep", "tiny", "model=resnet"), "model=resnet: unknown option; allowed: cnn, mlp, perceptron"),
    (("sweep", "tiny", "seed=[1"), "override 'seed=[1'"),
    (("status", "tiny", "train.max_steps=0"), "train.max_steps: must be > 0"),
    (("resubmit", "tiny"), "no runs of sweep 'tiny'"),
    (("resubmit", "../tiny"), "no paths"),
    (("resubmit", "tiny", "data.n_train=32"), "only single values of"),
    (("report", "tiny", "--out", "/etc/passwd"), "--out /etc/passwd: /etc/passwd is not a folder"),
    (("probe", "../x"), "run '../x': not an MLflow run id (32 hexadecimal digits)"),
    (("probe", "0123456789abcdef0123456789abcdef"), "no store at "),
    (("resubmit", "tiny", "resources.cpus=abc"), "resources.cpus: expected a number, got 'abc'"),
    (("sweep", "tiny", "seed=100000000000000000000000000000"), "seed: must be in [-2**63, 2**63)"),
    (("sweep", "tiny", "data=digits_parity", "data.n_train=5000"),
     "data.n_train: digits_parity has 1797 examples; P = 5000 plus a test set does not fit"),
    (("sweep", "tiny", "data=digits_parity", "data.n_train=1000", "data.n_test=800"),
     "P = 1000 plus data.n_test = 800 does not fit"),
    (("sweep", "tiny", "data=mnist_parity", "data.n_train=70000"),
     "data.n_train: mnist_parity has 60000 training examples, got P = 70000"),
    (("status", "tiny", "tracking.timeout_s=0"), "tracking.timeout_s: must be > 0"),
    (("sweep", "tiny", "train.compile_after=-1"), "train.compile_after: must be >= 0, got -1"),
    (("sweep", "tiny", "probe.noise=true", "probe.trace_samples=0"),
     "probe.noise: the curvature ratio tr(H) / lambda_max(H) needs probe.trace_samples >= 1, got 0"),
    (("sweep", "tiny", "probe.noise=true", "resources.workers_per_trial=2"),
     "probe.noise: per-example gradients are taken on one worker; resources.workers_per_trial must be 1, got 2"),
    (("sweep", "refined", "refine.tolerance=0"), "refine.tolerance: must be > 0, got 0"),
    (("sweep", "refined", "refine.axis=optim.lr"), "refine.axis: 'optim.lr' is not an axis of the sweep; axes: "
                                                   "model.alpha, seed"),
    (("sweep", "refined", "refine.criterion=test_eror > 0.1"), "refine.criterion: unknown metric 'test_eror'"),
    (("status", "refined", "model.alpha=4"), "refine.axis: model.alpha needs at least 2 distinct values to bracket "
                                             "a crossing, got 4"),
    (("sweep", "refined", "refine.rounds=3"), "refine.rounds: unknown refine key; allowed: axis, criterion,"),
    (("sweep", "tiny", "refine.tolerance=0.1"), "refine.tolerance: sweep 'tiny' has no refine block"),
    (("sweep", "badrefine"), "refine.scale: must be log or linear, got 'cubic'"),
    # a grid is counted before it is expanded (a 10^7 axis grew past 6 GB before anything was printed)
    (("sweep", "tiny", "seed=range(0,10000000)"), "the grid model.alpha (2) x seed (more than 100000) has more than "
                                                  "100000 trials, the limit (sgdlab sweep --max-trials)"),
    (("sweep", "tiny", "seed=range(0,20)", "--max-trials", "10"), "the grid model.alpha (2) x seed (more than 10) "
                                                                  "has more than 10 trials, the limit"),
    (("sweep", "tiny", "report.tc_thresholds=[]"), "report.tc_thresholds: must be a non-empty list of numbers > 0"),
    (("sweep", "tiny", "report.tc_error_change=0"), "report.tc_error_change: must be > 0, got 0"),
    (("report", "tiny", "report.tc_thresholds=[0.1,-1]"), "report.tc_thresholds: must be a non-empty list of "
                                                           "numbers > 0, got [0.1, -1.0]"),
    (("report", "tiny", "report.tc_error_change=0.1,0.2"), "report.tc_error_change: a report takes one value"),
    # hostile input that Hydra's parser, the file system or MLflow would answer with a traceback
    (("sweep", "tiny", "seed=" + "[" * 5000 + "0" + "]" * 5000), "nested deeper than 20 levels"),
    (("report", "tiny", "--out", "/proc/sgdlab"), "--out /proc/sgdlab: cannot write there"),
    (("report", "tiny", "--out", "/sys/sgdlab"), "--out /sys/sgdlab: cannot write there"),
    (("report", "tiny", "--out", "/tmp/" + "a" * 5000), "characters): cannot write there (File name too long)"),
    (("status", "tiny", "tracking.uri=file:///tmp/x"), "tracking URI 'file:///tmp/x': not a store sgdlab records"),
    (("sweep", "tiny", "tracking.uri=unknown://x"), "tracking URI 'unknown://x': not a store sgdlab records"),
    (("status", "tiny", "tracking.uri=/etc/passwd"), "tracking URI '/etc/passwd': not a store sgdlab records"),
    (("status", "tiny", "tracking.uri=sqlite:////etc/passwd"), "/etc/passwd is not a readable MLflow store (not an "
                                                                "SQLite database)"),
    (("sweep", "refined", "refine.criterion=!!python/object/apply:os.system [true]"),
     "refine.criterion: not a plain YAML value (could not determine a constructor for the tag"),
    (("sweep", "refined", "refine.criterion=test_error > nan"), "refine.criterion: 'nan' is not a finite number"),
    (("sweep", "refined", "refine.criterion=test_error > 1e999 x plateau"), "'1e999' is not a finite number"),
    (("sweep", "elsewhere"), "elsewhere.yaml: tracking.uri: a sweep file does not choose the store"),
    (("sweep", "tiny", "cluster.num_cpus=0"), "cluster.num_cpus: must be > 0, got 0"),
    # --dry-run refuses what the real run would refuse before a trial runs
    (("sweep", "tiny", "tracking.uri=unknown://x", "--dry-run"), "tracking URI 'unknown://x': not a store"),
    (("sweep", "tiny", "resources.cpus=1000", "--dry-run"), "resources.cpus = 1000: a trial needs 1000 CPU, but "
                                                            "the Ray cluster has"),
    (("sweep", "tiny", "resources.cpus=2", "cluster.num_cpus=1", "--dry-run"),
     "resources.cpus = 2: a trial needs 2 CPU, but the Ray cluster has 1"),
])
@pytest.mark.parametrize("with_store", [False, True], ids=["no-store", "with-store"])
def test_bad_input_exits_2_with_one_line_and_no_store(sweeps_dir, tmp_path, monkeypatch, other_store, with_store,
                                                      args, message):
    """Every row, in an empty folder (no store is created) and beside a store (left byte-identical). The command
    line's own entry point, in this process (a subprocess per row would spend ~2 s importing);
    test_empty_axis_in_a_sweep_file runs the real `sgdlab` process."""
    from typer.testing import CliRunner

    from sgdlab.cli.main import app

    (sweeps_dir / "tiny.yaml").write_text(TINY)
    (sweeps_dir / "refined.yaml").write_text(TINY + "refine:\n  axis: model.alpha\n  criterion: test_error > 0.1\n")
    (sweeps_dir / "badrefine.yaml").write_text(TINY + "refine: {axis: model.alpha, criterion: outcome == diverged, "
                                                      "scale: cubic}\n")
    (sweeps_dir / "empty.yaml").write_text("axes:\n  seed: []\n")
    (sweeps_dir / "twice.yaml").write_text("axes:\n  seed: [0, 1]\n  model.alpha: [1]\n  seed: [2]\n")
    (sweeps_dir / "latin1.yaml").write_bytes("description: caf\u00e9\naxes:\n  seed: [0]\n".encode("latin-1"))
    (sweeps_dir / "elsewhere.yaml").write_text("overrides: [tracking.uri=sqlite:////tmp/elsewhere.db]\n"
                                               "axes:\n  seed: [0]\n")
    work = tmp_path / "work"
    if with_store:
        shutil.copytree(other_store, work)
    else:
        work.mkdir()
    before = digest(work)
    monkeypatch.chdir(work)
    out = CliRunner().invoke(app, list(args), prog_name="sgdlab")
    assert out.exit_code == 2, (out.stderr, out.exception)
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("sgdlab: error: ")
    if not (with_store and message == "no store at "):  # beside a store, that run id is simply not in it
        assert message in out.stderr
    assert out.stdout == ""
    assert digest(work) == before


def test_resources_the_cluster_lacks_exit_2_before_the_store_is_made(sweeps_dir, tmp_path):
    """A GPU asked for where there is none would wait forever: refused once Ray has counted the resources, before
    the store exists."""
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    (sweeps_dir / "refined.yaml").write_text(TINY + "refine:\n  axis: model.alpha\n  criterion: test_error > 0.1\n")
    (sweeps_dir / "badrefine.yaml").write_text(TINY + "refine: {axis: model.alpha, criterion: outcome == diverged, "
                                                      "scale: cubic}\n")
    out = run_sgdlab("sweep", "tiny", "resources.gpu=1", "cluster.num_cpus=1", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "sgdlab: error: resources.gpu = 1: a trial needs 1 GPU, but the Ray cluster has 0"]
    assert list(tmp_path.iterdir()) == [sweeps_dir]


@pytest.mark.parametrize("body, message", [
    # a billion laughs: each line doubles the last, 2^30 values from a few hundred bytes
    ("a: &a [0, 1]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n"
                                for i in range(30)) + "axes:\n  seed: *b29\n", "alias *a: sweep files take no aliases"),
    ("axes:\n  seed: " + "[" * 5000 + "0" + "]" * 5000 + "\n", "nested deeper than 20 levels"),
])
def test_sweep_files_refuse_aliases_and_deep_nesting(sweeps_dir, tmp_path, body, message):
    from typer.testing import CliRunner

    from sgdlab.cli.main import app

    (sweeps_dir / "hostile.yaml").write_text(body)
    out = CliRunner().invoke(app, ["sweep", "hostile", "--dry-run"])
    assert out.exit_code == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_empty_axis_in_a_sweep_file(sweeps_dir, tmp_path):
    (sweeps_dir / "empty.yaml").write_text("axes:\n  seed: []\n")
    out = run_sgdlab("sweep", "empty", cwd=tmp_path)
    assert out.returncode == 2 and "axes.seed: empty axis" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args, message", [
    (("--port", "70000"), "--host 127.0.0.1 --port 70000: a port is a number from 1 to 65535"),
    (("--port", "{busy}"), "--host 127.0.0.1 --port {busy}: the port is in use (by another program; choose another "
                           "with --port)"),
    (("--host", "192.0.2.1"), "--host 192.0.2.1 --port 5000: cannot listen there (Cannot assign requested address)"),
])
def test_the_dashboard_refuses_a_port_it_cannot_listen_on(other_store, tmp_path, monkeypatch, args, message):
    """`sgdlab ui` printed a URL and then failed (a traceback, exit code 0), or with a port in use printed a URL
    that reached another program: now it tries the port first."""
    import socket

    from typer.testing import CliRunner

    from sgdlab.cli.main import app

    work = tmp_path / "work"
    shutil.copytree(other_store, work)
    before = digest(work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        out = CliRunner().invoke(app, ["ui", *(a.format(busy=port) for a in args)], prog_name="sgdlab")
    assert out.exit_code == 2, (out.stderr, out.exception)
    assert out.stderr.strip() == f"sgdlab: error: {message.format(busy=port)}"
    assert out.stdout == ""
    assert digest(work) == before
