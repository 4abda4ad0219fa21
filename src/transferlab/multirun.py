"""The Hydra callbacks of conf/train.yaml: `sweep_tracking` makes a multirun one MLflow
study (the parent run opened before the first job, and at the end the jobs' outcomes, the
best run and the report, table and plots, on it); `redacted_hydra_files` keeps secrets out
of the files Hydra writes itself.

Above both tracking (what the parent records) and the report (which reads the runs back).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab.objective import run_metric
from transferlab.report import write_report
from transferlab.scrub import scrub_log_records
from transferlab.tracking.redaction import (
    redact_hydra_files,
    redact_saved_sweep_config,
    remember_secrets,
)
from transferlab.tracking.sweep import SWEEP_CONFIG, SweepRun, print_summary


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.sweep: SweepRun | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep = SweepRun(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep, metric = self.sweep, run_metric(config)
        counts, summary = sweep.summarise(metric)
        try:
            if summary:  # the report's table and plots, as artifacts of the parent
                folder = Path(config.hydra.sweep.dir) / "report"
                write_report(sweep.run_id, folder, sweep.tracker.uri, metric, strict=False)
        finally:  # a report that fails leaves no parent run RUNNING
            sweep.finish()
        print_summary(counts, summary, metric, sweep.run_id)
        if counts["failed"]:
            sys.exit(1)  # the multirun's exit code says that jobs failed


class RedactedHydraFiles(Callback):
    """Hydra writes each job's `.hydra/` (config.yaml, hydra.yaml, overrides.yaml) before the
    job starts, and its basic sweeper `multirun.yaml` before the first job, with every value
    as given. Both are saved again here, redacted as a run's records are, readable by the
    user only; `hydra.output_subdir=null` (Hydra's own switch) writes no `.hydra/` at all.
    Every secret of the config is also registered for transferlab.scrub, so that the job's
    error, console lines and log records lose them too."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        remember_secrets(config)
        scrub_log_records()  # before the launcher logs the jobs' overrides

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        remember_secrets(config)
        scrub_log_records()
        hydra = config.hydra
        if hydra.output_subdir is not None:
            redact_hydra_files(Path(hydra.runtime.output_dir) / hydra.output_subdir)
        if hydra.mode == RunMode.MULTIRUN:  # also in other processes: a launcher's workers
            redact_saved_sweep_config(Path(hydra.sweep.dir) / SWEEP_CONFIG)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        redact_saved_sweep_config(Path(config.hydra.sweep.dir) / SWEEP_CONFIG)
