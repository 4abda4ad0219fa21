"""The Hydra callback (`hydra.callbacks.sweep_tracking` in conf/train.yaml) that makes a
multirun one MLflow study: the parent run opened before the first job, and at the end the
jobs' outcomes, the best run and the report (table and plots) on it.

Above both tracking (what the parent records) and the report (which reads the runs back).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from transferlab.report import write_report
from transferlab.tracking.sweep import SweepRun, print_summary


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.sweep: SweepRun | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep = SweepRun(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep, metric = self.sweep, config.optimize_metric
        counts, summary = sweep.summarise(metric)
        if summary:  # the report's table and plots, as artifacts of the parent
            write_report(sweep.run_id, Path(config.hydra.sweep.dir) / "report", sweep.tracker.uri)
        sweep.finish()
        print_summary(counts, summary, metric, sweep.run_id)
        if counts["failed"]:
            sys.exit(1)  # the multirun's exit code says that jobs failed
