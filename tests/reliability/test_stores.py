"""Stores as users find them: damaged files, read-only folders, unreachable servers, copied folders. Every
command either works or ends with one line and exit code 2, and never changes the store it could not use."""

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.store import open_sweep
from sgdlab.tracking.writer import TrialRun

from conftest import SGDLAB, TINY, idle, run_sgdlab, status_json


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def small_store(folder: Path, sweep: str = "tiny") -> str:
    """A store with one finished run of `sweep` (its config.yaml artifact) in `folder`; returns the run id."""
    handle = open_sweep(f"sqlite:///{folder / 'mlflow.db'}", sweep)
    run = TrialRun.start(handle, "t0", {"seed": 0}, attempt=1, run_name="t0")
    run.log_metrics(1, {"train_loss": 0.5})
    run.finish("converged")
    return run.run_id


def truncated(path: Path) -> None:
    small_store(path.parent)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def middle_bytes(path: Path) -> None:
    """8 KB of random bytes in the middle of a whole store: the header says nothing, SQLite's quick_check does."""
    small_store(path.parent)
    idle(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8192] = os.urandom(8192)
    path.write_bytes(data)


def directory(path: Path) -> None:
    path.mkdir()


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(50_000))


def text(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 20)


# Every damage on a command that only reads (status) and on one that writes (sweep); one on the others.
@pytest.mark.parametrize("damage, args", [
    *((damage, args) for damage in (random_bytes, text, truncated) for args in (("status", "tiny"), ("sweep", "tiny"))),
    (random_bytes, ("report", "tiny")), (truncated, ("resubmit", "tiny")),
    *((middle_bytes, (command, "tiny")) for command in ("status", "sweep", "report", "resubmit")),
    (directory, ("status", "tiny")), (directory, ("sweep", "tiny")),
], ids=lambda x: x.__name__ if callable(x) else x[0])
def test_a_damaged_store_gives_one_line_naming_it_and_is_left_as_it_was(damage, args, sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    work = tmp_path / "work"
    work.mkdir()
    damage(work / "mlflow.db")
    for leftover in work.glob("mlflow.db-*"):  # a truncated store's write-ahead log would repair it
        leftover.unlink()
    before = folder_digest(work)
    out = run_sgdlab(*args, cwd=work)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"sgdlab: error: {work / 'mlflow.db'} is not a readable MLflow store (")
    assert "move it away" in line
    assert folder_digest(work) == before


def test_reading_an_idle_store_leaves_the_folder_as_it_was(sweeps_dir, tmp_path):
    """status reads an idle store immutable: no -shm or -wal file appears beside it, nothing changes."""
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    small_store(tmp_path)
    idle(tmp_path / "mlflow.db")
    before = folder_digest(tmp_path)
    assert status_json(tmp_path, "tiny")["counts"]["pending"] == 4
    assert folder_digest(tmp_path) == before


def test_a_read_overlapped_by_a_writer_is_read_again(tmp_path):
    """An idle store is read without SQLite's locks (immutable): a writer that starts meanwhile makes the read a
    transient error, and `retried` reads again, now through the write-ahead log, and sees the write."""
    import sqlite3

    from sgdlab.tracking.location import reading, retried

    path = tmp_path / "mlflow.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x INTEGER)")
    db.close()
    assert not (tmp_path / "mlflow.db-wal").exists()
    writer = sqlite3.connect(path)
    attempts = []

    def read() -> int:
        with reading(path) as db:
            count = db.execute("SELECT count(*) FROM t").fetchone()[0]
            if not attempts:
                writer.execute("INSERT INTO t VALUES (1)")
                writer.commit()
            attempts.append(count)
        return count

    try:
        with pytest.raises(sqlite3.OperationalError, match="written while read"):
            read()
        assert retried(read) == 1
    finally:
        writer.close()
    assert attempts == [0, 1]


def test_an_empty_store_file_is_a_store_not_yet_created(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    (tmp_path / "mlflow.db").touch()
    assert status_json(tmp_path, "tiny")["counts"]["pending"] == 4


def read_only_folder(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """Run a command with `folder` mounted read-only (as root, permissions alone would not stop a write)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return subprocess.run(list(command), capture_output=True, text=True, timeout=120)
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), *command], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_status_and_report_read_a_store_in_a_read_only_folder(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    work = tmp_path / "work"
    work.mkdir()
    out = run_sgdlab("sweep", "tiny", "cluster.num_cpus=1", cwd=work)
    assert out.returncode == 0, out.stderr
    before = folder_digest(work)
    env_cd = ["env", "-C", str(work)]
    status = read_only_folder(work, *env_cd, *SGDLAB, "status", "tiny", "--json")
    assert status.returncode == 0, status.stderr
    assert '"finished": 4' in status.stdout
    report = read_only_folder(work, *env_cd, *SGDLAB, "report", "tiny", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "not attached to the sweep's MLflow run: its store is read-only" in report.stderr
    assert (tmp_path / "report" / "summary.csv").is_file()
    assert folder_digest(work) == before


def test_an_unreachable_tracking_server_fails_within_the_timeout(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        for uri, extra, limit in ((f"http://127.0.0.1:{port}", ["tracking.timeout_s=2"], 2),
                                  ("http://127.0.0.1:9", [], 10)):  # nothing listens on 9: refused at once
            started = time.monotonic()
            out = run_sgdlab("status", "tiny", *extra, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
            took = time.monotonic() - started
            assert out.returncode == 2, out.stderr
            (line,) = out.stderr.strip().splitlines()
            assert line.startswith(f"sgdlab: error: tracking server {uri} did not answer within {limit} s")
            assert took < limit + 20, took  # the command's own start-up, then at most the timeout
    finally:
        silent.close()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_second_sweep_file_of_the_same_name_is_refused_unless_asked(sweeps_dir, tmp_path, shared_ray):
    """Two sweep files named tiny in two --sweeps-dir folders shared one experiment, and its report mixed them:
    the sweep's run records the file that defined it (real path, sha256), and another file with other content
    is refused in one line, the store byte-identical, unless --redefine. The same file edited, or the same
    content in another folder, is the same definition."""
    from sgdlab.sweep import spec as sweep_spec

    (sweeps_dir / "tiny.yaml").write_text(TINY)
    first = sweep_spec.load("tiny")
    work = tmp_path / "work"
    work.mkdir()
    record = ("import sys; from sgdlab.sweep.spec import load; from sgdlab.tracking.store import open_sweep; "
              "spec = load('tiny'); open_sweep(sys.argv[1], 'tiny', definition={'sgdlab.sweep_file': spec.source, "
              "'sgdlab.sweep_file_sha256': spec.digest})")
    # in a process of its own, which closes the store as a command does (no -wal left)
    subprocess.run([SGDLAB[0], "-c", record, f"sqlite:///{work / 'mlflow.db'}"], check=True, capture_output=True)
    assert [p.name for p in work.iterdir()] == ["mlflow.db"]
    other = tmp_path / "other_sweeps"
    other.mkdir()
    (other / "tiny.yaml").write_text(TINY.replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    before = folder_digest(work)
    out = run_sgdlab("--sweeps-dir", str(other), "sweep", "tiny", cwd=work)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line == (f"sgdlab: error: sweep 'tiny' in this store was defined by {sweeps_dir / 'tiny.yaml'}, another "
                    f"file than {other / 'tiny.yaml'}: their records would mix in one experiment; rename one, use "
                    "another store, or pass --redefine to make this file the definition")
    assert folder_digest(work) == before

    recorded = (first.source, first.digest)
    (sweeps_dir / "tiny.yaml").write_text(TINY + "# one more comment\n")
    assert sweep_spec.load("tiny").other_definition(*recorded) is None  # the same file, edited
    (other / "tiny.yaml").write_text(TINY)
    os.environ["SGDLAB_SWEEPS_DIR"] = str(other)
    assert sweep_spec.load("tiny").other_definition(*recorded) is None  # the same content elsewhere
    os.environ["SGDLAB_SWEEPS_DIR"] = str(sweeps_dir)

    (other / "tiny.yaml").write_text(TINY.replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    out = run_sgdlab("--sweeps-dir", str(other), "sweep", "tiny", "--redefine", cwd=work)
    assert out.returncode == 0, out.stderr
    import sqlite3

    db = sqlite3.connect(work / "mlflow.db")
    assert db.execute("SELECT value FROM tags WHERE key = 'sgdlab.sweep_file'").fetchall() == [
        (str(other / "tiny.yaml"),)]
    db.close()


def test_a_database_uri_that_takes_no_connection_fails_at_once(sweeps_dir, tmp_path):
    """MLflow retries a failed database connection for ~100 s before its traceback; a PostgreSQL URI naming a
    missing database (on this machine's server) or a port where no server listens is one line within
    tracking.timeout_s, the password hidden."""
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    for uri, shown in (("postgresql+psycopg://postgres:secret@127.0.0.1:5432/sgdlab_no_such_database",
                        "postgresql+psycopg://postgres:***@127.0.0.1:5432/sgdlab_no_such_database"),
                       ("postgresql+psycopg://postgres@127.0.0.1:9/sgdlab",) * 2):
        started = time.monotonic()
        out = run_sgdlab("status", "tiny", "tracking.timeout_s=3", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"sgdlab: error: database {shown} cannot be used (connection failed"), line
        assert "secret" not in line
        assert time.monotonic() - started < 3 + 20
    assert list(tmp_path.iterdir()) == [sweeps_dir]


def test_a_copied_store_folder_reads_and_writes_its_own_artifacts(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    run_id = small_store(original)
    shutil.copytree(original, copy)
    shutil.rmtree(original / "mlartifacts")  # had the copy kept the original's paths, it would now find nothing
    handle = open_sweep(f"sqlite:///{copy / 'mlflow.db'}", "tiny")
    assert download_bytes(handle.uri, run_id, "config.yaml") == b"seed: 0\n"
    new = TrialRun.start(handle, "t1", {"seed": 1}, attempt=1, run_name="t1")
    assert (copy / "mlartifacts" / "tiny" / new.run_id / "artifacts" / "config.yaml").is_file()
    assert not (original / "mlartifacts").exists()  # nothing written into the original's folder


def test_a_store_reached_through_a_link_keeps_its_artifacts(tmp_path):
    """Folder B's mlflow.db a symbolic link to folder A's: a command in B (report, sweep) opens the store through
    the link and must leave the artifact locations at A's mlartifacts/, where the files are, even where B has an
    mlartifacts/ folder of the sweep's name."""
    import sqlite3

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    run_id = small_store(a)
    (b / "mlflow.db").symlink_to(a / "mlflow.db")
    (b / "mlartifacts" / "tiny").mkdir(parents=True)  # B's own folder of the sweep, from runs of its own before
    locations = lambda: sorted(sqlite3.connect(a / "mlflow.db").execute(  # noqa: E731
        "SELECT artifact_uri FROM runs UNION SELECT artifact_location FROM experiments"))
    before = locations()
    handle = open_sweep(f"sqlite:///{b / 'mlflow.db'}", "tiny")
    assert locations() == before
    assert download_bytes(handle.uri, run_id, "config.yaml") == b"seed: 0\n"
    new = TrialRun.start(handle, "t1", {"seed": 1}, attempt=1, run_name="t1")
    assert (a / "mlartifacts" / "tiny" / new.run_id / "artifacts" / "config.yaml").is_file()
    assert not any((b / "mlartifacts" / "tiny").iterdir())


def test_a_store_caught_mid_checkpoint_is_not_taken_for_truncated(tmp_path):
    """A checkpoint of SQLite's write-ahead log writes the header page (the new page count) before the pages that
    extend the file: a reader may find the file shorter than its header says for a moment. check_sqlite_store
    reads it again until it settles; a file that stays short is truncated."""
    import threading

    from sgdlab.tracking.location import StoreError, check_sqlite_store

    small_store(tmp_path)
    path = tmp_path / "mlflow.db"
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])  # the header says more pages than there are, for 0.3 s
    extend = threading.Timer(0.3, lambda: path.write_bytes(whole))
    extend.start()
    check_sqlite_store(path)
    extend.join()
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(StoreError, match=r"truncated: \d+ of \d+ bytes"):
        check_sqlite_store(path, settle_s=0.2)


def test_a_live_store_whose_checkpoint_outlasts_the_settle_time_is_whole(tmp_path):
    """Under load a checkpoint can hold the header's page count ahead of the file for longer than the settle
    time (a 5-round refinement failed two trials with 'truncated' on a healthy store). The missing pages are in the
    write-ahead log: SQLite's own quick_check, which reads it, decides, and the store is not called damaged."""
    import sqlite3

    from sgdlab.tracking.location import check_sqlite_store

    path = tmp_path / "mlflow.db"
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")  # every new page stays in the log
        writer.execute("CREATE TABLE t (x BLOB)")
        writer.executemany("INSERT INTO t VALUES (?)", [(bytes(1000),) for _ in range(200)])
        writer.commit()
        header = bytearray(path.read_bytes()[:100])
        pages = 1 + path.stat().st_size // int.from_bytes(header[16:18], "big") + 50  # ahead of the file
        header[28:32] = pages.to_bytes(4, "big")
        header[92:96] = header[24:28]  # a page count valid for this change counter, as a checkpoint writes it
        with open(path, "r+b") as f:
            f.write(header)
        check_sqlite_store(path, settle_s=0.2)  # no StoreError
    finally:
        writer.close()
