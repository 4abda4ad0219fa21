"""Reading back what a run recorded (see tracking.run_info): the run itself and its config
files, for rerun (the invocation's config), resume and export (the stage's); the tag that
names its last checkpoint, for resume and for failing orphaned runs. Light to import:
mlflow is loaded only when a run is read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import UserError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

STAGE_CONFIG = "config.yaml"  # the stage's own config, resolved
EXPERIMENT_CONFIG = "experiment.yaml"  # the whole invocation's: what a rerun runs
CHECKPOINT_TAG = "transferlab.last_checkpoint"  # a run's last.ckpt, set when it trains


def recorded_run(client: MlflowClient, run_id: str, refusal: str) -> Run:
    """The run `run_id` names; one that the store lacks is one line: `refusal`, then why."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise UserError(f"{refusal}: {str(err).partition(chr(10))[0]}") from err


def recorded_file(client: MlflowClient, run: Run, path: str, folder: str, missing: str) -> str:
    """Downloads the run's artifact `path` into `folder`; an absent one is one line naming
    it, then `missing` (what its absence says about the run)."""
    parent, _, name = path.rpartition("/")
    listed = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, parent or None)}
    if name not in listed:
        raise UserError(f"run {run.info.run_id} has no {path}: {missing}")
    return client.download_artifacts(run.info.run_id, path, folder)


def recorded_config(client: MlflowClient, run: Run, name: str, missing: str) -> DictConfig:
    """A config file the run recorded (STAGE_CONFIG, EXPERIMENT_CONFIG), as it was saved."""
    with tempfile.TemporaryDirectory() as folder:
        return OmegaConf.load(recorded_file(client, run, name, folder, missing))
