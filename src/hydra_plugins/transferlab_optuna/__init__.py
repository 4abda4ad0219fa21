"""A Hydra sweeper on current Optuna (`hydra/sweeper=optuna`), with pruning in training.

Each trial is one Hydra job; the job's return value is the objective. A job that raises
`optuna.TrialPruned` is recorded PRUNED, one that fails (or returns NaN) FAIL, and the study
goes on. Jobs get `+optuna.study_name` and `+optuna.trial_number`, from which
`transferlab.pruning` rebuilds the trial inside the training loop, in any process.

This module stays light (no optuna import): Hydra imports it when it scans for plugins,
also for `--help`. The work is in the private modules, imported when a sweep starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from transferlab.compat import instantiate_launcher, register_plugin

if TYPE_CHECKING:
    import optuna


class OptunaSweeper(Sweeper):
    """Hydra's handle on the sweep; settings are checked in `setup`, where a bad value
    reaches the user as one line (errors in `__init__` come wrapped by instantiate)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra_plugins.transferlab_optuna._sweeper import OptunaSweep

        launcher = instantiate_launcher(hydra_context, task_function, config)
        self.sweep_run = OptunaSweep(self.settings, config, hydra_context, launcher)

    def sweep(self, arguments: list[str]) -> None:
        self.sweep_run.run(arguments)


def register_optuna_sweeper() -> None:
    """Hydra only instantiates registered plugins, and its scan misses editable installs."""
    register_plugin(OptunaSweeper)


def job_trial(study_name: str, trial_number: int) -> optuna.trial.Trial | None:
    """The running trial of this sweep job, to report to and ask whether to prune (None
    when the sweep's pruner is `none`)."""
    from hydra_plugins.transferlab_optuna._study import job_trial as find_trial

    return find_trial(study_name, trial_number)
