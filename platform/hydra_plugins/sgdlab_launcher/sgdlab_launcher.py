"""`hydra/launcher=sgdlab`: Hydra's --multirun through sgdlab's planner, packing, Ray scheduler and MLflow records.

A Hydra sweeper (the basic grid sweeper, Optuna's, ...) hands a launcher batches of jobs, each a list of override
strings. Hydra's own launchers call the task function once per job; this one gives the whole batch to
`sgdlab.app.launch`, so a batch is planned, packed and scheduled as one `sgdlab sweep`, and returns one JobReturn
per job whose value is the trial's final `app.objective`. It launches sgdlab's own app (sgdlab-run) only. It makes
the sweep's folder (hydra.sweep.dir), where sweepers save their results, but no folder per job: a trial's config
and outputs are in its MLflow run.

Hydra imports every module under hydra_plugins whenever it starts (sgdlab composes trial configs with Hydra): this
one imports Hydra alone, and sgdlab's scheduler only once a batch is launched.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SgdlabLauncherConf:
    _target_: str = "hydra_plugins.sgdlab_launcher.sgdlab_launcher.SgdlabLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="sgdlab", node=SgdlabLauncherConf, provider="sgdlab")


class SgdlabLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if not getattr(task_function, "sgdlab_app", False):
            raise HydraException("hydra/launcher=sgdlab launches sgdlab's own app (sgdlab-run) only; for another "
                                 "app use hydra/launcher=basic")
        from sgdlab.app import check_sweeper_settings

        check_sweeper_settings(config.hydra.sweeper)
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the batch's trials through sgdlab; with Hydra's grid sweeper, which stops at the first failed job
        anyway, a failed trial ends the command with exit code 1 after the summary (as `sgdlab sweep` does)."""
        from sgdlab.app import TrialFailed, launch_or_exit

        grid = str(self.config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper")
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # sweepers write their results there
        values = launch_or_exit([list(o) for o in job_overrides], report=grid)
        if grid and any(isinstance(v, TrialFailed) for v in values):
            raise SystemExit(1)
        return [JobReturn(overrides=list(overrides), hydra_cfg=self.config, working_dir=os.getcwd(),
                          task_name=self.config.hydra.job.name,
                          status=JobStatus.FAILED if isinstance(value, TrialFailed) else JobStatus.COMPLETED,
                          _return_value=value)
                for overrides, value in zip(job_overrides, values)]
