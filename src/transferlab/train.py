"""Entry point: `python -m transferlab.train [overrides]` (console script `transferlab-train`).

Kept thin and light: `--help`, `--cfg job` and config errors answer without importing
torch, Lightning or MLflow (~10 s here); the pipeline is imported only to train.
"""

import hydra
from omegaconf import DictConfig

from transferlab.config import validate
from transferlab.studies import register_studies

register_studies()


@hydra.main(version_base="1.3", config_path="pkg://transferlab.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    validate(cfg)
    from transferlab.pipeline import run_experiment

    return run_experiment(cfg)


if __name__ == "__main__":
    main()
