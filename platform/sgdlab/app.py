"""sgdlab-run: sgdlab as a Hydra app (`@hydra.main` on conf/), for researchers who drive their runs with Hydra.

    sgdlab-run optim.temperature=1e-3                       one trial
    sgdlab-run -m optim.temperature=1e-4,1e-3 seed=0,1      a grid (Hydra's basic sweeper)
    sgdlab-run -m hydra/sweeper=optuna ...                  Optuna's batches (pip install 'sgdlab[optuna]')
    sgdlab-run --cfg job optim.temperature=1e-3             one trial's config, as Hydra composes it

Trials run as `sgdlab sweep` runs them: composed by the same Composer (so with the same trial ids), finished ones
skipped, the rest packed and scheduled on Ray, and recorded in MLflow in the sweep named by `app.sweep`, which
`sgdlab status | resubmit | report NAME` then read. `--multirun` goes through the launcher plugin
`hydra/launcher=sgdlab` (hydra_plugins/sgdlab_launcher, conf/config.yaml's default), which hands each batch of
jobs to `launch` at once, so that a sweeper's batch is planned, packed and scheduled together. Each job returns
its trial's final `app.objective` metric, the value a sweeper such as Optuna optimizes.
"""

from __future__ import annotations

import itertools
import math
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sgdlab import paths
from sgdlab.config.compose import Composer, parse_override
from sgdlab.config.schema import APP_GROUP, ConfigError
from sgdlab.config.validation import app_settings, validate


class TrialFailed(RuntimeError):
    """A job's trial has no finished run after its launch: it failed (the message says why) or is held elsewhere."""


def launch(override_lists: list[list[str]], report: bool) -> list[float | TrialFailed]:
    """Run the trials of these jobs (one override list each) in the sweep app.sweep, as `sgdlab sweep` would,
    and return each job's final app.objective, or TrialFailed for a job whose trial did not finish. A job whose
    trial another job of the batch (or an earlier run) already has shares its trial. report: write the sweep's
    report afterwards (when report.auto). ConfigError or StoreError for bad input, before anything runs."""
    from sgdlab.cli.main import auto_report, err, plan_summary, run_and_summarize, swept_params
    from sgdlab.orchestration.plan import plan_sweep
    from sgdlab.tracking.location import check_store, resolve_uri
    from sgdlab.tracking.query import by_trial, sweep_runs

    sweep, objective, trials = job_trials(override_lists)
    unique = list({t.trial_id: t for t in trials}.values())
    first = unique[0].config
    uri = resolve_uri(first["tracking"]["uri"])
    check_store(uri, first["tracking"]["timeout_s"])
    plan = plan_sweep(unique, sweep_runs(uri, sweep, kind=None), first["tracking"]["stale_after_s"], time.time())
    summary = plan_summary(sweep, unique, plan, uri)
    if plan.jobs:
        run_and_summarize(sweep, plan.jobs, first, uri, summary, view_params=swept_params(unique),
                          after=(lambda: auto_report(sweep, uri, first)) if report else None,
                          again="sgdlab-run -m with the same overrides")
    else:
        err.print(f"{summary}\nnothing to run.")
    runs = by_trial(sweep_runs(uri, sweep))
    return [objective_value(runs.get(t.trial_id, []), objective, sweep) for t in trials]


def job_trials(override_lists: list[list[str]]):
    """(sweep, objective, one Trial per job) from the jobs' override lists; ConfigError for bad input."""
    from sgdlab.sweep.criterion import METRICS
    from sgdlab.sweep.expand import Trial, swept_values
    from sgdlab.sweep.identity import trial_id
    from sgdlab.sweep.spec import check_name

    raws = Composer().raw_many(override_lists)
    settings = {(s["sweep"], s["objective"]) for s in map(app_settings, raws)}
    if len(settings) > 1:
        raise ConfigError(f"app.sweep, app.objective: the jobs of one launch must share them, got {sorted(settings)}")
    ((sweep, objective),) = settings
    check_name(sweep)
    if objective not in METRICS:
        raise ConfigError(f"app.objective: {objective!r} is not a final metric of a trial; allowed: "
                          f"{', '.join(METRICS)}")
    by_key = [{parse_override(line).get_key_element().lstrip("+~"): line for line in overrides}
              for overrides in override_lists]
    # a run is named by the overrides that differ between the jobs (all of them for a job launched alone)
    varied = {k for keys in by_key for k in keys if len({keys.get(k) for keys in by_key}) > 1 or len(by_key) == 1}
    trials = []
    for overrides, keys, raw in zip(override_lists, by_key, raws):
        config = validate(raw)
        named = {k: line for k, line in keys.items() if k in varied and k.split(".")[0] != APP_GROUP}
        trials.append(Trial(trial_id(config), config, tuple(overrides), swept_values(config, named)))
    return sweep, objective, trials


def objective_value(runs: list, objective: str, sweep: str) -> float | TrialFailed:
    """The final `objective` of a trial's finished run (NaN if it never logged it: a diverged trial's loss),
    else TrialFailed with the newest run's error."""
    from sgdlab.tracking.query import finished_run, newest_run

    finished = finished_run(runs)
    if finished is not None:
        return finished.metrics.get(objective, math.nan)
    if not runs:
        return TrialFailed("the trial has no run")
    newest = newest_run(runs)
    return TrialFailed(f"trial {newest.trial_id}: {newest.error or newest.status}; rerun it with: sgdlab resubmit "
                       f"{sweep}")


def bad_input(exc: Exception) -> SystemExit:
    """One line on stderr; exit code 2 (as `sgdlab`'s bad input)."""
    from sgdlab.cli.main import err

    err.print(f"sgdlab-run: error: {exc}", markup=False, highlight=False)
    return SystemExit(2)


def launch_or_exit(override_lists: list[list[str]], report: bool) -> list[float | TrialFailed]:
    """launch, with bad input as one line and exit code 2, and Ctrl-C as exit code 130 (as `sgdlab sweep`)."""
    from sgdlab.cli.main import err
    from sgdlab.tracking.location import StoreError

    try:
        return launch(override_lists, report)
    except (ConfigError, StoreError) as exc:
        raise bad_input(exc) from None
    except KeyboardInterrupt:
        err.print("Stopped. Run what is left with the same sgdlab-run command.")
        raise SystemExit(130) from None


def check_sweeper_settings(sweeper: DictConfig) -> None:
    """The sweeper's batch settings, checked as Hydra hands them to the launcher, before anything runs: n_trials and
    n_jobs (Optuna's) below 1 would ask for no trial and fail on an empty study. Bad ones are one line, exit 2."""
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise bad_input(ConfigError(f"hydra.sweeper.{key}: must be a whole number >= 1, got {value!r}"))


def run_trial(cfg: DictConfig) -> float:
    """Hydra's task function: this job's trial (its overrides, from HydraConfig) through `launch`; returns its
    app.objective. The sgdlab launcher runs whole batches instead (it recognizes this function)."""
    (value,) = launch_or_exit([list(HydraConfig.get().overrides.task)], report=True)
    if isinstance(value, TrialFailed):
        raise SystemExit(1)  # the summary above named the failure and how to rerun it
    return value


run_trial.sgdlab_app = True  # what hydra/launcher=sgdlab checks: it launches this app only

hydra_main = hydra.main(config_path=str(paths.conf_dir()), config_name="config", version_base="1.3")(run_trial)


def checked_jobs(overrides: list[str], grid: bool) -> list[list[str]]:
    """The jobs to check before Hydra starts: every job of a grid (grid: the basic sweeper, or one run), or one
    corner of a sampler's search space, each sweep at its first value and an interval at its start."""
    from sgdlab.sweep.expand import parse_axes

    if grid:  # parse_axes refuses an interval: a grid needs values
        return [list(job) for job in itertools.product(*parse_axes(overrides).values())]
    corner = []
    for line in overrides:
        override = parse_override(line)
        if override.is_interval_sweep():
            interval = override.value()
            if not interval.start <= interval.end:
                raise ConfigError(f"{line}: an empty interval (its start must not exceed its end)")
            corner.append(f"{override.get_key_element()}={interval.start}")
        else:
            corner.append(next(iter(parse_axes([line]).values()))[0])
    return [corner]


def main() -> None:
    """The console script: the command line's trial overrides are checked first (checked_jobs), so that an
    unknown key or an impossible value is one line and exit code 2 before anything runs, as for `sgdlab sweep`;
    then Hydra."""
    from hydra._internal.utils import get_args_parser  # Hydra's own command line (hydra-core pinned)

    args = get_args_parser().parse_args()
    runs_trials = not (args.help or args.hydra_help or args.info or args.shell_completion or args.cfg)
    if runs_trials and not (args.config_name or args.config_path or args.config_dir):  # conf/config.yaml's trials
        try:
            parsed = [parse_override(o) for o in args.overrides]
            trial = [o.input_line for o in parsed if not o.is_hydra_override()]
            swept = next((o for o in parsed if o.is_sweep_override() and not o.is_hydra_override()), None)
            if swept is not None and not args.multirun:
                raise ConfigError(f"{swept.input_line}: several values run several trials: add -m (--multirun)")
            sweepers = [o.value() for o in parsed if o.get_key_element() == "hydra/sweeper"]
            grid = not args.multirun or sweepers in ([], ["basic"])
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]  # what the sweeper's config has
            params = Composer().sweeper_params(fixed) if args.multirun else []
            job_trials(checked_jobs([*params, *trial], grid))
        except ConfigError as exc:
            raise bad_input(exc) from None
    hydra_main()


if __name__ == "__main__":
    main()
