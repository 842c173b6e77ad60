"""sgdlab sweep | status | ui: the command line. Bad input exits 2 with one line, before anything runs.

Ray and torch are imported only by the commands that run trials, so `sgdlab status` stays fast.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table

from sgdlab import paths
from sgdlab.config.schema import MAX_TRIALS, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweeps over SGD noise and curvature: Hydra configs, Ray scheduling, MLflow records.")
out = Console()
err = Console(stderr=True, soft_wrap=True)


RUN_ID = re.compile(r"[0-9a-f]{32}")


def why_not_writable(folder: Path) -> str | None:
    """Why a report cannot be written into `folder` (created if missing), or None if it can: the nearest existing
    folder must take a file (tried with a nameless temporary file, which /proc, /sys or a read-only mount refuse),
    and the path must be one the system accepts (a name over 255 bytes is not)."""
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())  # the folder, or where it is made
        if not existing.is_dir():
            return f"{existing} is not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable"
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def fail_input(message: str) -> typer.Exit:
    """One line on stderr, exit code 2 (bad input)."""
    err.print(f"sgdlab: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def load_trials(name: str, overrides: list[str], max_trials: int = MAX_TRIALS):
    """(sweep spec with the command line's refine.* applied, its trials, the override strings they expand);
    ConfigError for a grid of more than max_trials trials."""
    from sgdlab.sweep import expand, refine, spec

    sweep = spec.load(name)
    scale, overrides = spec.split_scale(list(overrides))
    sweep, overrides = spec.split_refine(sweep, overrides)
    strings = sweep.override_strings(scale) + overrides
    if sweep.refine:
        refine.check_axis(sweep.refine, strings)
    return sweep, expand.expand(strings, max_trials=max_trials), strings


def bracket_table(axis: str, criterion: str, brackets) -> Table:
    """A refinement's brackets, one row per combination of the other axes."""
    table = Table(title=f"{axis}: where `{criterion}` turns true")
    from sgdlab.tracking.tags import run_name

    for column in ("combination", "lower", "upper", "estimate", "rounds", "trials", "status"):
        table.add_column(column, justify="left" if column in ("combination", "status") else "right",
                         overflow="fold")
    number = lambda v: "-" if v is None or v != v else f"{v:.4g}"  # noqa: E731 (NaN != NaN)
    for b in brackets:  # combinations named as runs are (optim=sgd B=8)
        table.add_row(run_name(b.combination) if b.combination else "all", number(b.lower),
                      number(b.upper), number(b.estimate), str(b.rounds), str(b.trials), b.status)
    return table


def trial_table(trials, title: str) -> Table:
    keys = list(trials[0].swept) if trials else []
    table = Table(title=title)
    table.add_column("trial_id", style="cyan")
    for key in keys:
        table.add_column(key, justify="right")
    for trial in trials:
        table.add_row(trial.trial_id, *(trial.swept[k] for k in keys))
    return table


def swept_params(trials) -> list[str]:
    """The params (flattened config keys) that differ between the trials, in config order, without the groups
    that are not part of a trial's identity."""
    from sgdlab.config.schema import NON_IDENTITY_GROUPS
    from sgdlab.params import flatten, param_text

    flat = [flatten(t.config) for t in trials]
    return [key for key in flat[0] if key.split(".")[0] not in NON_IDENTITY_GROUPS
            and len({param_text(f.get(key)) for f in flat}) > 1]


def run_and_summarize(name: str, jobs: list, config: dict, uri: str, plan: str, description: str = "", then=None,
                      after=None, view_params: list[str] | None = None, again: str = "", last: str = "",
                      definition: dict[str, str] | None = None) -> list:
    """Run the jobs on Ray (`plan`, what will run, is printed once they are known to fit the cluster; `then`:
    the next rounds' jobs, `view_params`: the swept params, see run_jobs), print the summary and the failed
    trials with how to rerun them (`again`: the command that runs the sweep again, default make sweep), call
    `after()`, print `last` (if any) as the last line, and return the trials' summaries (`definition`: the
    sweep file's tags for the sweep's run). ConfigError when the
    cluster can never run them, StoreError when the store went bad meanwhile, KeyboardInterrupt when
    interrupted."""
    from sgdlab.orchestration.scheduler import run_jobs

    again = again or f"make sweep EXP={name}"
    results = run_jobs(name, jobs, config, uri, description, console=err, announce=plan, then=then,
                       view_params=view_params, definition=definition)
    failed = [r for r in results if r.status == "failed"]
    elsewhere = sum(r.status == "elsewhere" for r in results)
    outcomes: dict[str, int] = {}
    for r in results:
        if r.status == "finished" and r.outcome:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    probes = sum(1 for r in results if r.probe_run_id and r.status == "finished")
    err.print(f"{len(results) - len(failed) - elsewhere} finished "
              f"({', '.join(f'{v} {k}' for k, v in outcomes.items()) or '-'}"
              f"{f', {probes} end probes' if probes else ''}), {len(failed)} failed"
              f"{f', {elsewhere} left to another driver running this sweep' if elsewhere else ''}.")
    if after:
        after()
    for r in failed[:10]:
        err.print(f"  [red]{r.trial_id}[/]: {r.error}", highlight=False)
    lost = [r for r in failed if r.failed_stage != "probe" and r.run_id is None]  # no run: still pending
    if any(r.failed_stage != "probe" and r.run_id is not None for r in failed):
        err.print(f"Rerun the failed trials with: make resubmit EXP={name}")
    if lost:
        err.print(f"{len(lost)} trials were lost before their runs were recorded; run them with: {again}")
    if any(r.failed_stage == "probe" for r in failed):
        err.print(f"Failed end probes are retried by running the sweep again: {again}")
    if last:
        err.print(last, highlight=False)
    return results


def execute(name: str, jobs: list, config: dict, uri: str, plan: str, description: str = "", then=None,
            after=None, view_params: list[str] | None = None, last: str = "",
            definition: dict[str, str] | None = None) -> None:
    """run_and_summarize, then exit 2 if the cluster can never run the jobs, 1 if any trial failed, 130 when
    interrupted."""
    from sgdlab.tracking.location import StoreError

    try:
        results = run_and_summarize(name, jobs, config, uri, plan, description, then, after, view_params,
                                    last=last, definition=definition)
    except (ConfigError, StoreError) as exc:  # resources the cluster can never provide; a store gone bad meanwhile
        raise fail_input(str(exc))
    except KeyboardInterrupt:
        err.print(f"Stopped. Run what is left with: make sweep EXP={name}")
        raise typer.Exit(130)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def show_version(value: bool) -> None:
    if value:
        import sgdlab
        from sgdlab.numerics import VERSION

        out.print(f"sgdlab {sgdlab.__version__} (numerics version {VERSION})", highlight=False)
        raise typer.Exit()


@app.callback()
def options(_version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                          help="print the version and the numerics version, and exit"),
            sweeps_dir: Optional[Path] = typer.Option(
                None, "--sweeps-dir", help="folder of your own sweep files (default: the sweeps/ bundled with "
                                           "sgdlab, or $SGDLAB_SWEEPS_DIR)")):
    """Sweeps over SGD noise and curvature: Hydra configs, Ray scheduling, MLflow records."""
    if sweeps_dir is not None:
        if not sweeps_dir.is_dir():
            raise fail_input(f"--sweeps-dir {sweeps_dir}: not a folder")
        os.environ[paths.SWEEPS_DIR] = str(sweeps_dir.resolve())


@app.command()
def sweep(name: str = typer.Argument(..., help="sweep file sweeps/NAME.yaml"),
          overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides, e.g. data.n_train=512 seed=0,1"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print the trial table and run nothing"),
          max_trials: int = typer.Option(MAX_TRIALS, "--max-trials", min=1,
                                         help="refuse a grid of more trials, before expanding it"),
          redefine: bool = typer.Option(False, "--redefine", help="run the sweep although another sweep file of "
                                                                  "its name defined it in this store")):
    """Expand a sweep and run every trial that has no FINISHED run yet."""
    try:
        spec, trials, strings = load_trials(name, overrides or [], max_trials)
    except ConfigError as exc:
        raise fail_input(str(exc))
    if dry_run:
        dry_run_checks(trials)
        out.print(trial_table(trials, f"{name}: {len(trials)} trials"))
        if spec.refine:
            out.print(f"then refined along {spec.refine.axis} until `{spec.refine.criterion}` is bracketed to "
                      f"{spec.refine.tolerance:g} (at most {spec.refine.max_rounds} rounds)")
        if spec.description:
            out.print(spec.description, markup=False, highlight=False)
        return

    from sgdlab.orchestration.plan import plan_sweep
    from sgdlab.tracking.location import StoreError, check_store, resolve_uri
    from sgdlab.tracking import tags
    from sgdlab.tracking.query import sweep_runs

    first = trials[0].config
    uri = resolve_uri(first["tracking"]["uri"])
    try:
        check_store(uri, first["tracking"]["timeout_s"])
        records = sweep_runs(uri, name, kind=None)
        recorded = next((r.tags for r in records if r.kind == "sweep"), {})
        conflict = None if redefine else spec.other_definition(recorded.get(tags.SWEEP_FILE),
                                                               recorded.get(tags.SWEEP_FILE_SHA256))
        if conflict:
            raise ConfigError(conflict)
    except (ConfigError, StoreError) as exc:
        raise fail_input(str(exc))
    plan = plan_sweep(trials, records, first["tracking"]["stale_after_s"], time.time())
    summary = plan_summary(name, trials, plan, uri)
    rounds = refinement_rounds(spec, trials, strings, uri, first) if spec.refine else None
    jobs = plan.jobs
    if not jobs and rounds:  # the grid is done: the refinement's next round, replayed from the records
        err.print(summary)
        summary, jobs = "", rounds.next_jobs([])
    held = held_elsewhere(name, plan)
    if not jobs:
        if summary:
            err.print(summary)
        err.print("nothing to run.")
        if rounds:
            report_brackets(rounds)
        if held:
            err.print(held, highlight=False)
        return
    def after() -> None:
        if rounds:
            report_brackets(rounds)
        auto_report(name, uri, first, overrides or [])

    execute(name, jobs, first, uri, summary, spec.description, then=rounds and rounds.next_jobs, after=after,
            view_params=swept_params(trials), last=held,
            definition={tags.SWEEP_FILE: spec.source, tags.SWEEP_FILE_SHA256: spec.digest})


def dry_run_checks(trials: list) -> None:
    """What the real run would refuse before any trial runs and a dry run can know without opening the store or
    starting Ray: a tracking URI of no store, and on a local cluster a trial that asks for more CPUs or GPUs than
    it has. One line and exit code 2."""
    from sgdlab.orchestration.plan import local_resources, unplaceable
    from sgdlab.tracking.location import StoreError, check_uri, resolve_uri

    first = trials[0].config
    try:
        check_uri(resolve_uri(first["tracking"]["uri"]))
    except StoreError as exc:
        raise fail_input(str(exc))
    cluster = local_resources(first["cluster"], any(t.config["resources"]["gpu"] for t in trials))
    for trial in trials if cluster else []:
        problem = unplaceable(trial.config["resources"], cluster)
        if problem:
            raise fail_input(problem)


def held_elsewhere(name: str, plan) -> str:
    """The last line of a sweep that left trials to the runs of another driver: how many are unfinished, and when
    they become stale (and the next sweep runs them) if that driver has died."""
    if not plan.skipped_running:
        return ""
    at = time.strftime("%H:%M:%S", time.localtime(plan.stale_at))
    return (f"{len(plan.skipped_running)} trials are unfinished, held by the runs of another driver; if it has "
            f"died, they become stale at {at} and `make sweep EXP={name}` then runs them.")


def plan_summary(name: str, trials: list, plan, uri: str) -> str:
    """What a sweep's plan will do, in one line."""
    return (f"[bold]{name}[/]: {len(trials)} trials; {len(plan.skipped_finished)} already finished (skipped), "
            f"{len(plan.skipped_running)} running elsewhere, {len(plan.to_run)} to run ({len(plan.rerun)} failed "
            f"or stale before, {len(plan.outdated)} outdated), {len(plan.probe_only)} end probes of finished "
            f"trials to run. Store: {uri}")


def refinement_rounds(spec, trials, strings, uri: str, first: dict):
    from sgdlab.orchestration.refinement import Rounds
    from sgdlab.sweep.refine import Refinement

    return Rounds(Refinement(spec.refine, trials, strings), uri, spec.name, first["tracking"]["stale_after_s"],
                  say=lambda line: err.print(line, highlight=False))


def report_brackets(rounds) -> None:
    """Print a refinement's brackets and its trial count against a uniform grid; record them on the sweep run."""
    brackets = rounds.brackets()
    out.print(bracket_table(rounds.refinement.refine.axis, rounds.refinement.refine.criterion, brackets))
    used, uniform = sum(b.trials for b in brackets), rounds.refinement.uniform_grid_trials()
    located = sum(b.status == "located" for b in brackets)
    err.print(f"refinement: {located} of {len(brackets)} crossings located to {rounds.refinement.refine.tolerance:g} "
              f"in {used} trials ({sum(b.added for b in brackets)} added by bisection); a uniform grid at that "
              f"resolution over the same range: {uniform} trials ({used / uniform:.2f}x)", highlight=False)
    rounds.record(brackets)


@app.command()
def resubmit(name: str = typer.Argument(..., help="sweep name"),
             overrides: Optional[List[str]] = typer.Argument(
                 None, help="non-identity overrides only: fault.*, resources.*, cluster.*, tracking.*"),
             trial: Optional[List[str]] = typer.Option(None, "--trial", help="only these trial ids (repeatable)")):
    """Rerun exactly the failed and stale trials, from their recorded configs, as new attempts."""
    from sgdlab.config.recorded import apply_runtime_overrides, parse_runtime_overrides, runtime_value
    from sgdlab.orchestration.plan import plan_resubmit
    from sgdlab.sweep.spec import check_name
    from sgdlab.tracking.artifacts import recorded_config
    from sgdlab.tracking.location import StoreError, check_store, resolve_uri
    from sgdlab.tracking.query import sweep_runs

    try:
        check_name(name)
        changes = parse_runtime_overrides(overrides or [])
        uri = resolve_uri(changes.get(("tracking", "uri")))
        check_store(uri, runtime_value(changes, "tracking", "timeout_s"))
        jobs = plan_resubmit(name, uri, sweep_runs(uri, name), trial or [],
                             lambda run_id: apply_runtime_overrides(recorded_config(uri, run_id), changes), time.time())
    except (ConfigError, StoreError) as exc:
        raise fail_input(str(exc))
    summary = f"[bold]{name}[/]: {len(jobs)} failed or stale trials to rerun. Store: {uri}"
    if not jobs:
        err.print(summary)
        return
    execute(name, jobs, jobs[0].config, uri, summary, after=lambda: auto_report(name, uri, jobs[0].config))


def sweep_status(name: str, overrides: list[str]) -> dict:
    """The status object of `sgdlab status --json` (reads the store, never creates it). A sweep without a sweep
    file (one that sgdlab-run recorded, named by app.sweep) counts the trials the store holds."""
    from sgdlab.sweep import spec as sweep_spec
    from sgdlab.tracking.location import check_store, resolve_uri, sqlite_path
    from sgdlab.tracking.query import by_trial, sweep_runs

    if name not in sweep_spec.available():
        sweep_spec.check_name(name)
        return recorded_sweep_status(name, overrides)
    spec, trials, strings = load_trials(name, overrides)
    first = trials[0].config
    uri = resolve_uri(first["tracking"]["uri"])
    check_store(uri, first["tracking"]["timeout_s"])
    brackets = {}
    if spec.refine:  # the trials are those of the rounds so far, replayed from the records
        rounds = refinement_rounds(spec, trials, strings, uri, first)
        brackets = {"axis": spec.refine.axis, "criterion": spec.refine.criterion,
                    "brackets": [{k: None if v != v else v for k, v in vars(b).items()} for b in rounds.brackets()]}
        trials = [t for combo in rounds.refinement.combinations.values() for ts in combo.points.values() for t in ts]
    runs = by_trial(sweep_runs(uri, name))
    path = sqlite_path(uri)
    exists = path is None or (path.is_file() and path.stat().st_size > 0)  # a server answered check_store
    report = trial_states(name, uri, exists, runs, [t.trial_id for t in trials], first["tracking"]["stale_after_s"])
    return {**report, "refine": brackets} if spec.refine else report


def recorded_sweep_status(name: str, overrides: list[str]) -> dict:
    """sweep_status of a sweep without a sweep file: its trials are those recorded in the store (overrides:
    tracking.* only, as for resubmit); ConfigError when the store holds no run of it either."""
    from sgdlab.config.recorded import parse_runtime_overrides, runtime_value
    from sgdlab.sweep.spec import available
    from sgdlab.tracking.location import check_store, resolve_uri, sqlite_path
    from sgdlab.tracking.query import by_trial, sweep_runs

    changes = parse_runtime_overrides(overrides)
    uri = resolve_uri(changes.get(("tracking", "uri")))
    unknown = (f"unknown sweep {name!r}: no sweep file (available: {', '.join(available()) or 'none'}) and no "
               f"runs of it in {uri}")
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ConfigError(unknown)
    check_store(uri, runtime_value(changes, "tracking", "timeout_s"))
    runs = by_trial(sweep_runs(uri, name))
    if not runs:
        raise ConfigError(unknown)
    return trial_states(name, uri, True, runs, list(runs), runtime_value(changes, "tracking", "stale_after_s"))


def trial_states(name: str, uri: str, exists: bool, runs: dict, trial_ids: list[str], stale_after_s: float) -> dict:
    """Counts by state and outcome of these trials, and the errors of the failed ones (sweep_status)."""
    from sgdlab.tracking.query import newest_run, state_counts, trial_state

    now = time.time()
    counts, outcomes = state_counts(runs, trial_ids, stale_after_s, now)
    failed = [newest_run(runs[t]) for t in trial_ids if trial_state(runs.get(t, []), stale_after_s, now) == "failed"]
    return {"sweep": name, "store": {"uri": uri, "exists": exists}, "trials": len(trial_ids), "counts": counts,
            "outcomes": outcomes, "failed": [{"trial_id": run.trial_id, "error": run.error or run.status}
                                             for run in failed]}


@app.command()
def status(name: str = typer.Argument(..., help="sweep name"),
           overrides: Optional[List[str]] = typer.Argument(None, help="the overrides the sweep was run with"),
           as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Finished / failed / running / stale / pending trials of a sweep, and the errors of failed ones."""
    from sgdlab.tracking.location import StoreError

    try:
        report = sweep_status(name, overrides or [])
    except (ConfigError, StoreError) as exc:
        raise fail_input(str(exc))
    if as_json:
        print(json.dumps(report))
        return
    if not report["store"]["exists"]:
        out.print(f"No store at {report['store']['uri']}: nothing has run here yet; `make sweep EXP={name}` runs "
                  f"its {report['trials']} trials (or set MLFLOW_TRACKING_URI / tracking.uri to the store)",
                  highlight=False, soft_wrap=True)  # soft wrap: a path is never broken
        return
    out.print(f"store: {report['store']['uri']}", highlight=False, soft_wrap=True)
    table = Table(title=f"{name}: {report['trials']} trials")  # one row per state: readable in a narrow terminal
    table.add_column("state")
    table.add_column("trials", justify="right")
    for state, count in report["counts"].items():
        table.add_row(state, str(count))
    table.add_section()
    for outcome, count in report["outcomes"].items():
        table.add_row(f"finished: {outcome}", str(count))
    out.print(table)
    if report.get("refine"):
        from sgdlab.sweep.refine import Bracket

        refine = report["refine"]
        brackets = [Bracket(**b) for b in refine["brackets"]]
        done = sum(b.status not in ("open", "waiting") for b in brackets)
        out.print(bracket_table(refine["axis"], refine["criterion"], brackets))
        out.print(f"refinement: all {done} brackets done" if done == len(brackets) else
                  f"refinement: {done} of {len(brackets)} brackets done; `make sweep EXP={name}` runs the rest")
    if report["failed"]:
        failed = Table(title="failed trials")
        failed.add_column("trial_id", style="red")
        failed.add_column("error")
        for f in report["failed"]:
            failed.add_row(f["trial_id"], f["error"])
        out.print(failed)
        out.print(f"Rerun them with: make resubmit EXP={name}")


@app.command()
def report(name: str = typer.Argument(..., help="sweep name"),
           overrides: Optional[List[str]] = typer.Argument(None, help="the sweep command's overrides, if it had "
                                                                      "any (a refinement is replayed with them)"),
           out_dir: Optional[str] = typer.Option(None, "--out", help="folder for the report (default reports/NAME)")):
    """Phase diagrams, curvature figures, fits and summaries of a sweep: reports/NAME/ and the sweep's MLflow run."""
    from sgdlab.config.recorded import runtime_value
    from sgdlab.sweep.spec import check_name
    from sgdlab.tracking.location import StoreError, check_store, resolve_uri

    folder = Path(out_dir or Path("reports") / name)
    try:
        check_name(name)
        settings = sweep_report_settings(name, overrides or [])
        unwritable = why_not_writable(folder)
        if unwritable:
            shown = str(folder) if len(str(folder)) <= 80 else f"{str(folder)[:60]}...({len(str(folder))} characters)"
            raise ConfigError(f"--out {shown}: {unwritable}")
        uri = resolve_uri()
        check_store(uri, runtime_value({}, "tracking", "timeout_s"))
        err.print(write_report(name, uri, folder, overrides or [], settings), highlight=False)
    except (ConfigError, StoreError) as exc:
        raise fail_input(str(exc))


def sweep_report_settings(name: str, overrides: Sequence[str] = ()) -> dict:
    """The report group a sweep's report is written with: defaults, the sweep file's `report.*` overrides, then the
    command's (ConfigError on a bad value)."""
    from sgdlab.config.recorded import report_settings
    from sgdlab.sweep import spec

    return report_settings([*(spec.load(name).overrides if name in spec.available() else []), *overrides])


def write_report(name: str, uri: str, folder: Path, overrides: Sequence[str] = (), settings: dict | None = None) -> str:
    """Write the sweep's report into `folder` and attach it, with its headline numbers as metrics, to the sweep's
    MLflow run (unless the store is read-only); returns the line that says what was written. ConfigError when the
    store holds no run of the sweep. overrides: the sweep command's, which a refinement's brackets are replayed
    with; settings: the report group (default: sweep_report_settings)."""
    from sgdlab.tracking.location import sqlite_path
    from sgdlab.tracking.query import sweep_runs

    settings = settings or sweep_report_settings(name, overrides)
    records = sweep_runs(uri, name, kind=None)
    trains = [r for r in records if r.kind == "train"]
    probes = [r for r in records if r.kind == "probe"]
    if not trains and not probes:
        raise ConfigError(f"no runs of sweep {name!r} in {uri}; run `make sweep EXP={name}` first")
    refinement = refinement_brackets(name, uri, overrides)

    from sgdlab.analysis.report import build_report
    from sgdlab.analysis.report_inputs import report_inputs
    from sgdlab.analysis.tc_bootstrap import TcCriteria
    from sgdlab.tracking.store import log_sweep_files, log_sweep_metrics, open_sweep

    histories, densities, warnings = report_inputs(uri, trains, probes)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    folder.mkdir(parents=True, exist_ok=True)
    result = build_report(trains, name, folder, probes=probes, histories=histories, densities=densities,
                          refinement=refinement, criteria=TcCriteria(tuple(settings["tc_thresholds"]),
                                                                     settings["tc_error_change"]))
    files = [*result.figures, *result.tables, folder / "summary.csv", folder / "summary.md"]
    store = sqlite_path(uri)
    read_only = store is not None and not os.access(store.parent, os.W_OK)
    if not read_only:
        handle = open_sweep(uri, name)
        log_sweep_files(handle, files)
        log_sweep_metrics(handle, {k: v for k, v in result.numbers.items() if math.isfinite(v)})
    return (f"{name}: report of {len(trains)} train and {len(probes)} probe runs in {folder}/ "
            f"({len(result.figures)} figures, summary.csv, summary.md"
            f"{', ' + ', '.join(p.name for p in result.tables) if result.tables else ''}), "
            + ("not attached to the sweep's MLflow run: its store is read-only." if read_only else
               "also attached to the sweep's MLflow run under report/"
               + (f", with {len(result.numbers)} summary numbers as its metrics summary/*." if result.numbers
                  else ".")))


def auto_report(name: str, uri: str, config: dict, overrides: Sequence[str] = ()) -> None:
    """The report at the end of `sgdlab sweep` (report.auto): one line whatever happens; never fails the sweep."""
    if not config["report"]["auto"]:
        return
    folder = Path("reports") / name
    try:
        unwritable = why_not_writable(folder)
        if unwritable:
            raise ConfigError(f"{folder}: {unwritable}")
        err.print(write_report(name, uri, folder, overrides), highlight=False)
    except Exception as exc:  # noqa: BLE001 (the trials are recorded; a report can be made later)
        err.print(f"report not written ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                  f"write it with: make report EXP={name}", markup=False, highlight=False)


def refinement_brackets(name: str, uri: str, overrides: Sequence[str] = ()):
    """(brackets table, axis, criterion) of a sweep file with a refine block (and the sweep command's overrides),
    replayed from the records; else None."""
    import pandas as pd

    from sgdlab.sweep import spec

    if name not in spec.available():
        return None
    sweep, trials, strings = load_trials(name, list(overrides))
    if not sweep.refine:
        return None
    rounds = refinement_rounds(sweep, trials, strings, uri, trials[0].config)
    rows = [{**b.combination, **{k: v for k, v in vars(b).items() if k != "combination"}} for b in rounds.brackets()]
    return pd.DataFrame(rows), sweep.refine.axis, sweep.refine.criterion


@app.command()
def probe(run_id: str = typer.Argument(..., help="MLflow run id of a FINISHED train run"),
          overrides: Optional[List[str]] = typer.Argument(
              None, help="probe.* (what to measure) and resources.*, e.g. probe.top_k=5 probe.slq_starts=4")):
    """Measure the curvature of an existing finished trial (its checkpoint/final.pt) as a new probe run."""
    from sgdlab.config.recorded import apply_runtime_overrides, parse_runtime_overrides, runtime_value
    from sgdlab.tracking.artifacts import recorded_config
    from sgdlab.tracking.location import StoreError, check_store, resolve_uri, sqlite_path
    from sgdlab.tracking.query import run_record

    try:
        if not RUN_ID.fullmatch(run_id):
            raise ConfigError(f"run {run_id!r}: not an MLflow run id (32 hexadecimal digits)")
        changes = parse_runtime_overrides(overrides or [])
        uri = resolve_uri(changes.get(("tracking", "uri")))
        store = sqlite_path(uri)
        if store is not None and not store.is_file():
            raise ConfigError(f"no store at {store}; run a sweep first or set MLFLOW_TRACKING_URI")
        check_store(uri, runtime_value(changes, "tracking", "timeout_s"))
        info = run_record(uri, run_id)
        if info is None or info.kind != "train" or info.status != "FINISHED":
            raise ConfigError(f"run {run_id}: not a FINISHED train run in {uri}")
        config = apply_runtime_overrides(recorded_config(uri, run_id), changes)
    except (ConfigError, StoreError) as exc:
        raise fail_input(str(exc))

    from sgdlab.jobs.probe import run_probe
    from sgdlab.sweep.identity import probe_id
    from sgdlab.tracking.query import next_attempt, sweep_runs
    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.tags import PROBE_ID

    pid = probe_id(config, info.trial_id)
    attempt = next_attempt([r for r in sweep_runs(uri, info.sweep, kind="probe") if r.tags.get(PROBE_ID) == pid])
    err.print(f"probing {info.run_name} (trial {info.trial_id}, sweep {info.sweep})")
    result = run_probe(config, open_sweep(uri, info.sweep), trial_id=info.trial_id, train_run_id=run_id,
                       attempt=attempt, run_name=info.run_name)
    if result.status != "finished":
        err.print(f"probe failed: {result.error}", highlight=False)
        raise typer.Exit(1)
    table = Table(title=f"probe run {result.run_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.6g}")
    out.print(table)


def why_not_served(host: str, port: int) -> str | None:
    """Why the dashboard cannot listen on host:port (a port out of range, one another program holds, a host that
    is not this machine's), or None if it can: tried by binding it, as the server will."""
    if not 1 <= port <= 65535:
        return "a port is a number from 1 to 65535"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a closing socket is free
            probe.bind((host, port))
    except OSError as exc:
        return (f"the port is in use (by another program; choose another with --port)"
                if exc.errno == errno.EADDRINUSE else f"cannot listen there ({exc.strerror or exc})")
    return None


@app.command()
def ui(name: Optional[str] = typer.Argument(None, help="sweep to open (default: the most recent one)"),
       host: str = typer.Option("127.0.0.1", help="interface to bind (127.0.0.1: this machine only)"),
       port: int = typer.Option(5000, help="port"),
       open_browser: bool = typer.Option(False, "--open", help="open the URL in a browser once the server answers"),
       auth: str = typer.Option("none", "--auth", help="basic: ask for a user and password (MLflow's basic-auth "
                                                       "app; the first start prints admin's password once)")):
    """Serve the MLflow dashboard for this directory's store (or MLFLOW_TRACKING_URI) and print the URL of the
    sweep's runs in MLflow's training view. Without --auth basic, anyone who reaches the port (on 127.0.0.1: every
    user of this machine) can read and change the records."""
    from sgdlab.config.recorded import runtime_value
    from sgdlab.sweep.spec import check_name
    from sgdlab.tracking.location import StoreError, check_store, resolve_uri, sqlite_path
    from sgdlab.tracking.query import sweep_experiments
    from sgdlab.tracking.store import experiment_url, report_url

    uri = resolve_uri()
    try:
        if name is not None:
            check_name(name)
        if auth not in ("none", "basic"):
            raise ConfigError(f"--auth {auth}: must be none or basic")
        store = sqlite_path(uri)
        if store is not None and not store.is_file():
            raise ConfigError(f"no store at {store}; run a sweep first (make sweep EXP=smoke) or set "
                              "MLFLOW_TRACKING_URI")
        why = None if uri.startswith("http") else why_not_served(host, port)
        if why:
            raise ConfigError(f"--host {host} --port {port}: {why}")
        check_store(uri, runtime_value({}, "tracking", "timeout_s"))
        sweeps = {sweep: (exp_id, view) for sweep, exp_id, view in sweep_experiments(uri)}
        if name is not None and name not in sweeps:
            raise ConfigError(f"no sweep {name!r} in {uri}; sweeps there: {', '.join(sweeps) or 'none'}")
    except (ConfigError, StoreError) as exc:
        raise fail_input(str(exc))
    chosen = name or next(iter(sweeps), None)
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = uri if uri.startswith("http") else f"http://{local}:{port}"
    url = experiment_url(base, *sweeps[chosen]) if chosen else base
    report = report_url(uri, base, sweeps[chosen][0]) if chosen else None
    report_line = f"\n{chosen}'s report (figures, summary): {report}" if report else ""
    if uri.startswith("http"):  # a tracking server is running already
        out.print(f"{chosen or 'sgdlab'} on the MLflow server {uri}: {url}{report_line}", highlight=False,
                  soft_wrap=True)
        return
    from sgdlab.tracking.dashboard_auth import basic_auth
    from sgdlab.tracking.server import is_loopback

    if not is_loopback(host) and auth == "none":
        err.print(f"warning: --host {host} serves the dashboard, which has no authentication, to every machine "
                  f"that reaches this one: anyone there can read and change the records in {uri}",
                  markup=False, highlight=False)
    err.print(f"MLflow dashboard for {uri}; {chosen or 'the store'}'s runs: {url}{report_line}", highlight=False,
              soft_wrap=True)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1"]
    if auth == "basic":
        env, line = basic_auth(store.parent if store is not None else Path.cwd())
        os.environ.update(env)
        argv += ["--app-name", "basic-auth"]
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    elif is_loopback(host):
        err.print("note: no authentication: every user of this machine can read and change these records through "
                  "the dashboard; `sgdlab ui --auth basic` asks for a password", markup=False, highlight=False)
    if open_browser:  # a helper that waits for the server, then asks the desktop for a browser
        opener = ("import sys, webbrowser; from sgdlab.tracking.server import wait_ready; "
                  "wait_ready(sys.argv[1], 60); webbrowser.open(sys.argv[2])")
        subprocess.Popen([sys.executable, "-c", opener, base, url],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.execv(sys.executable, argv)  # an argument vector, never a shell
