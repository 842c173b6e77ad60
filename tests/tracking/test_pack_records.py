"""The records of packs in a real SQLite store: the ended members of packs in flight (the progress bar's source)
and the pack's shared heartbeat."""

def test_ended_members_of_packs_in_flight_are_read_from_the_store(tmp_path):
    """The progress bar's source: trials whose newest train run, started since the sweep command began, has
    ended; runs of earlier commands, running runs and probe runs do not count."""
    import time

    from sgdlab.tracking.query import ended_since
    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.writer import TrialRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handle = open_sweep(uri, "progress")
    before = TrialRun.start(handle, "old", {"seed": 0}, attempt=1, run_name="old")
    before.finish("converged")
    time.sleep(0.01)
    since = int(time.time() * 1000)
    runs = {name: TrialRun.start(handle, name, {"seed": 0}, attempt=1, run_name=name)
            for name in ("done", "broken", "busy", "retried")}
    runs["done"].finish("max_steps")
    runs["broken"].fail(RuntimeError("boom"))
    runs["retried"].fail(RuntimeError("worker lost"))
    TrialRun.start(handle, "retried", {"seed": 0}, attempt=2, run_name="retried")  # its retry is running
    TrialRun.start(handle, "probed", {"seed": 0}, attempt=1, run_name="probe", kind="probe").finish("done")
    assert ended_since(uri, "progress", since) == {"done": "FINISHED", "broken": "FAILED"}
    assert ended_since(uri, "no_such_sweep", since) == {}
    assert ended_since("http://127.0.0.1:1", "progress", since) is None


def test_packed_runs_share_their_packs_heartbeat(tmp_path):
    """A pack refreshes one member's run for all (tag sgdlab.pack): a RUNNING member whose own heartbeat is old is
    running while a run of its pack beats, and stale once none does; a run outside the pack keeps its own."""
    import time

    from sgdlab.tracking import tags
    from sgdlab.tracking.query import by_trial, sweep_runs, trial_state
    from sgdlab.tracking.store import client, open_sweep
    from sgdlab.tracking.writer import TrialRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handle = open_sweep(uri, "beats")
    runs = [TrialRun.start(handle, f"m{i}", {"seed": i}, attempt=1, run_name=f"m{i}", heartbeat_s=None,
                     extra_tags={tags.PACK: "pack-1"}) for i in range(3)]
    alone = TrialRun.start(handle, "alone", {"seed": 9}, attempt=1, run_name="alone")
    old = f"{time.time() - 600:.3f}"
    for run in [*runs, alone]:
        client(uri).set_tag(run.run_id, tags.HEARTBEAT, old)

    def states():
        trials = by_trial(sweep_runs(uri, "beats"))
        return {trial: trial_state(records, stale_after_s=60) for trial, records in trials.items()}

    assert states() == {"m0": "stale", "m1": "stale", "m2": "stale", "alone": "stale"}
    runs[1].flush()  # the pack beats on one member's run
    assert states() == {"m0": "running", "m1": "running", "m2": "running", "alone": "stale"}
    runs[1].finish("converged")  # an ended member's last heartbeat still says the pack was alive then
    assert states() == {"m0": "running", "m1": "finished", "m2": "running", "alone": "stale"}
