"""A Lightning logger that writes into a TrackedRun the pipeline already created.

Lightning's own MLFlowLogger creates and ends runs itself; ours must outlive the Trainer
(testing with the best checkpoint, artifacts, the final status), so the run is owned here.
"""

from __future__ import annotations

import re
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from transferlab.tracking.mlflow_run import TrackedRun


class TrackedRunLogger(Logger):
    def __init__(self, run: TrackedRun):
        super().__init__()
        self.run = run

    @property
    def name(self) -> str:
        """A folder's name (Lightning keeps the best checkpoint under <stage>/<name>/<run
        id>/): the run's name without its spaces and `=`."""
        return re.sub(r"[^\w.-]+", "_", self.run.name)

    @property
    def version(self) -> str:
        return self.run.run_id

    @property
    def experiment(self) -> TrackedRun:
        return self.run

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Params are logged by the pipeline from the resolved config, not from Lightning."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # Every metric is logged per epoch; the epoch is a clearer x-axis than the step.
        epoch = metrics.pop("epoch", None)
        self.run.log_metrics(metrics, step=int(epoch) if epoch is not None else step or 0)
