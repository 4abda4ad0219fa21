"""Optuna pruning inside the training loop.

A job of the Optuna sweeper (hydra/sweeper=optuna) carries `optuna.study_name` and
`optuna.trial_number`; its trainer then reports `optimize_metric` after each validation
(step = epoch) and stops the run when the study's pruner says so. The trial is rebuilt from
the study's storage, so this works in joblib workers and on other machines too.
"""

from __future__ import annotations

from collections import Counter

import optuna
import pytorch_lightning as pl
from omegaconf import DictConfig

from transferlab.errors import RunStopped
from transferlab.objective import run_metric

# Fits of each trial in this process: every fit (a cross-validation fold) reports on steps
# of its own, so trials compare fold k, epoch e with fold k, epoch e.
_fits: Counter[tuple[str, int]] = Counter()


class TrialPruned(optuna.TrialPruned, RunStopped):
    """The MLflow run ends KILLED and tagged pruned; the sweeper records the trial PRUNED."""

    status = "KILLED"
    tags = {"transferlab.pruned": "true"}  # noqa: RUF012 - class-level, as in RunStopped


def pruning_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The pruning callback for a trial of a pruning Optuna sweep; none for other runs."""
    job = cfg.get("optuna")
    if not job:
        return []
    from hydra_plugins.transferlab_optuna import job_trial

    trial = job_trial(job.study_name, job.trial_number)
    if trial is None:
        return []
    fit = _fits[job.study_name, job.trial_number]
    _fits[job.study_name, job.trial_number] += 1
    metric = run_metric(cfg)
    return [OptunaPruning(trial, metric, first_step=fit * cfg.trainer.max_epochs)]


class OptunaPruning(pl.Callback):
    def __init__(self, trial: optuna.trial.Trial, metric: str, first_step: int = 0) -> None:
        self.trial = trial
        self.metric = metric
        self.first_step = first_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return  # not logged in validation (e.g. a test metric): nothing to prune on
        prune = False
        if trainer.is_global_zero:  # one report per epoch; every rank then stops together
            self.trial.report(float(value), step=self.first_step + trainer.current_epoch)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            raise TrialPruned(
                f"Optuna trial {self.trial.number} pruned at epoch {trainer.current_epoch}: "
                f"{self.metric}={float(value):.4f}"
            )
