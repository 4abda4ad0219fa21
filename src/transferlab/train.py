"""Entry point: `python -m transferlab.train [overrides]` (console script `transferlab-train`).

Kept thin and light: `--help`, `--cfg job` and config errors answer without importing
torch, Lightning or MLflow (~10 s here); the pipeline is imported only to train.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.studies import register_studies

register_studies()


def run(cfg: DictConfig) -> float:
    """The task: check the config, then train, test and record; returns the objective."""
    validate(cfg)
    from transferlab.pipeline import run_experiment

    return run_experiment(cfg)


@hydra.main(version_base="1.3", config_path="pkg://transferlab.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except UserError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed and goes on
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
