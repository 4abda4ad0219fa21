"""Entry point: `python -m transferlab.train [overrides]` (console script `transferlab-train`).

Kept thin and light: `--help`, `--cfg job` and config errors answer without importing
torch, Lightning or MLflow (~10 s here); the pipeline is imported only to train.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hydra_plugins.transferlab_optuna import register_optuna_sweeper
from transferlab.config import validate
from transferlab.errors import RunStopped, UserError
from transferlab.studies import register_studies

register_studies()
register_optuna_sweeper()


def run(cfg: DictConfig) -> float:
    """The task: check the config, then train, test and record; returns the objective."""
    validate(cfg)
    from transferlab.pipeline import run_experiment

    return run_experiment(cfg)


@hydra.main(version_base="1.3", config_path="pkg://transferlab.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg)
    try:
        return run(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def run_sweep_job(cfg: DictConfig) -> float:
    """A failing job is recorded FAILED and the sweep goes on: its objective is NaN, which
    sweepers treat as a failed trial. A stopped run (a pruned trial) is left to the sweeper."""
    try:
        return run(cfg)
    except RunStopped:
        raise
    except Exception as error:
        from transferlab.tracking.sweep import record_failed_job

        print(f"error: job failed: {error}", file=sys.stderr)
        record_failed_job(cfg, error)
        return float("nan")


if __name__ == "__main__":
    main()
