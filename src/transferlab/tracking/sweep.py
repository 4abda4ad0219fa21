"""A Hydra multirun as one MLflow study: a parent run, created once when the multirun
starts, and each job's run as its child (tag `mlflow.parentRunId`, which works across
processes, unlike MLflow's `nested=True`).

The parent's id reaches the jobs through an environment variable: set before the launcher
starts, it is inherited by in-process jobs, joblib workers and submitted cluster jobs alike.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from transferlab.objective import lower_is_better, objective_value, overrides_as_params
from transferlab.report import write_report
from transferlab.tracking.redaction import recorded_value, redacted_command, redacted_sweep_config

PARENT_RUN_ENV = "TRANSFERLAB_PARENT_RUN_ID"


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from transferlab.tracking.mlflow_run import Tracker
        from transferlab.tracking.orphans import process_tags
        from transferlab.tracking.store import tracking_uri

        self.tracker = Tracker(tracking_uri(config.tracking.uri), config.experiment_name)
        run = self.tracker.client.create_run(
            self.tracker.experiment_id,
            run_name=f"sweep-{Path(config.hydra.sweep.dir).name}",
            tags={
                "transferlab.role": "sweep",
                "transferlab.sweeper": config.hydra.sweeper.get("_target_", ""),
                "command": redacted_command(sys.argv),
                **process_tags(),  # a sweeper killed outright leaves it to the next start
            },
        )
        self.parent_run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        self._log_definition(config)
        atexit.register(self._fail_if_unfinished)  # a crashed sweeper leaves nothing RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        children = self.tracker.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=10000,
        )
        counts = Counter(_outcome(r) for r in children)
        summary = sweep_summary(children, config.optimize_metric)
        client, parent = self.tracker.client, self.parent_run_id
        client.set_tag(parent, "transferlab.outcomes", dict(sorted(counts.items())))
        if summary:
            client.set_tag(parent, "transferlab.best_run_id", summary["run_id"])
            client.log_metric(parent, f"best/{config.optimize_metric}", summary["objective"])
        if summary:  # the report's table and plots, as artifacts of the parent
            write_report(parent, Path(config.hydra.sweep.dir) / "report", self.tracker.uri)
        client.set_terminated(parent, "FINISHED")
        atexit.unregister(self._fail_if_unfinished)
        os.environ.pop(PARENT_RUN_ENV, None)
        _print_summary(counts, summary, config.optimize_metric, parent)
        if counts["failed"]:
            sys.exit(1)  # the multirun's exit code says that jobs failed

    def _log_definition(self, config: DictConfig) -> None:
        """The sweep definition (multirun.yaml) and the swept parameters as params, as they
        may be recorded (see tracking.redaction)."""
        folder = Path(config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        definition = folder / "multirun.yaml"
        OmegaConf.save(redacted_sweep_config(config), definition)
        self.tracker.client.log_artifact(self.parent_run_id, str(definition))
        space = config.hydra.sweeper.get("params")
        swept = OmegaConf.to_container(space, resolve=False) if space else {}
        overrides = OmegaConf.to_container(config.hydra.overrides.task)  # as typed, unresolved
        for key, values in overrides_as_params(overrides).items():
            swept.setdefault(key, values)
        from mlflow.entities import Param

        params = [
            Param(f"sweep.{key}", str(recorded_value(key, values))[:6000])
            for key, values in swept.items()
        ]
        self.tracker.client.log_batch(self.parent_run_id, params=params[:100])

    def _fail_if_unfinished(self) -> None:
        run = self.tracker.client.get_run(self.parent_run_id)
        if run.info.status == "RUNNING":
            self.tracker.client.set_terminated(self.parent_run_id, "FAILED")


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """A job that failed before its run existed (or outside it) still leaves a FAILED child."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent or getattr(error, "recorded_in_sweep", False):
        return
    from transferlab.tracking.mlflow_run import Tracker
    from transferlab.tracking.run_info import sweep_tags
    from transferlab.tracking.store import tracking_uri

    tracker = Tracker(tracking_uri(cfg.tracking.uri), cfg.experiment_name)
    tags = {
        **sweep_tags(),  # its parent and overrides
        "error": f"{type(error).__name__}: {error}"[:6000],
        "transferlab.role": "failed-job",
    }
    run = tracker.client.create_run(tracker.experiment_id, run_name="failed-job", tags=tags)
    tracker.client.set_terminated(run.info.run_id, "FAILED")


def _outcome(run) -> str:
    if run.data.tags.get("transferlab.pruned") == "true":
        return "pruned"
    return {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}.get(
        run.info.status, run.info.status.lower()
    )


def sweep_summary(children: list, metric: str) -> dict[str, Any] | None:
    """The best finished child by `metric` (its checkpointed best when logged)."""
    scored = []
    for run in children:
        value = objective_value(run.data.metrics, metric)
        if run.info.status == "FINISHED" and value is not None and not math.isnan(value):
            scored.append((value, run))
    if not scored:
        return None
    value, best = (min if lower_is_better(metric) else max)(scored, key=lambda pair: pair[0])
    return {
        "run_id": best.info.run_id,
        "run_name": best.info.run_name,
        "objective": value,
        "overrides": best.data.tags.get("transferlab.overrides", ""),
    }


def _print_summary(counts: Counter, summary: dict | None, metric: str, parent: str) -> None:
    total = sum(counts.values())
    parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    print(f"\nSweep {parent}: {total} jobs ({parts or 'none recorded'})")
    if summary:
        print(
            f"best: {summary['run_name']} ({summary['run_id']}) {metric}={summary['objective']:.4f}"
            f" [{summary['overrides']}]"
        )
