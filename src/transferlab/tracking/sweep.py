"""A Hydra multirun as one MLflow study: a parent run, created once when the multirun
starts, and each job's run as its child (tag `mlflow.parentRunId`, which works across
processes, unlike MLflow's `nested=True`). transferlab.multirun's Hydra callback opens and
closes the parent; this module is what it records.

The parent's id reaches the jobs through an environment variable, and so do the keys the
sweep varies (a job's run is named with its values of them): set before the launcher starts,
they are inherited by in-process jobs, joblib workers and submitted cluster jobs alike.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.objective import lower_is_better, objective_value, overrides_as_params
from transferlab.tracking.redaction import redacted_command, redacted_overrides, save_sweep_config

PARENT_RUN_ENV = "TRANSFERLAB_PARENT_RUN_ID"
SWEPT_KEYS_ENV = "TRANSFERLAB_SWEPT_KEYS"  # comma-separated: no override key holds a comma
LONG_KEY = 10  # characters: a longer snake_case key is shown by its initials
SWEEP_CONFIG = "multirun.yaml"  # the name Hydra's basic sweeper saves it under too


class SweepRun:
    """The sweep's parent run, RUNNING from the multirun's start to `finish`; a sweeper
    that crashes in between leaves it FAILED, not RUNNING."""

    def __init__(self, config: DictConfig) -> None:
        from transferlab.tracking.environment import source_tags
        from transferlab.tracking.mlflow_run import Tracker
        from transferlab.tracking.orphans import process_tags
        from transferlab.tracking.store import tracking_uri

        self.tracker = Tracker(tracking_uri(config.tracking.uri), config.experiment_name)
        self.client = self.tracker.client
        run = self.client.create_run(
            self.tracker.experiment_id,
            run_name=_sweep_name(config),
            tags={
                "transferlab.role": "sweep",
                "transferlab.sweeper": config.hydra.sweeper.get("_target_", ""),
                "command": redacted_command(sys.argv),
                **source_tags(),
                **process_tags(),  # a sweeper killed outright leaves it to the next start
            },
        )
        self.run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.run_id
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(config))
        self._log_definition(config)
        atexit.register(self._fail_if_unfinished)

    def summarise(self, metric: str) -> tuple[Counter, dict[str, Any] | None]:
        """How the jobs ended, and the best finished one by `metric`, recorded as tags and
        `best/<metric>` of the parent."""
        children = self.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
            max_results=10000,
        )
        counts = Counter(_outcome(r) for r in children)
        summary = sweep_summary(children, metric)
        self.client.set_tag(self.run_id, "transferlab.outcomes", dict(sorted(counts.items())))
        if summary:
            self.client.set_tag(self.run_id, "transferlab.best_run_id", summary["run_id"])
            self.client.log_metric(self.run_id, f"best/{metric}", summary["objective"])
        return counts, summary

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")
        atexit.unregister(self._fail_if_unfinished)
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEPT_KEYS_ENV, None)

    def _log_definition(self, config: DictConfig) -> None:
        """The sweep definition (multirun.yaml) and the swept parameters as params, as they
        may be recorded (see tracking.redaction)."""
        from mlflow.entities import Param

        from transferlab.tracking.mlflow_run import MAX_PARAM_VALUE

        folder = Path(config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        definition = folder / SWEEP_CONFIG
        save_sweep_config(definition, config)  # Hydra's basic sweeper saves its own after
        self.client.log_artifact(self.run_id, str(definition))
        params = [  # the sweeper's search space wins over the command line's
            Param(f"sweep.{key}", str(values)[:MAX_PARAM_VALUE])
            for key, values in overrides_as_params(
                redacted_overrides(sweep_overrides(config))
            ).items()
        ]
        self.client.log_batch(self.run_id, params=params[:100])

    def _fail_if_unfinished(self) -> None:
        if self.client.get_run(self.run_id).info.status == "RUNNING":
            self.client.set_terminated(self.run_id, "FAILED")


def sweep_overrides(config: DictConfig) -> list[str]:
    """The multirun's overrides as typed (unresolved): the command line's, then the
    sweeper's search space (`hydra.sweeper.params`) as `key=values`."""
    space = config.hydra.sweeper.get("params")
    space = OmegaConf.to_container(space, resolve=False) if space else {}
    typed = OmegaConf.to_container(config.hydra.overrides.task)
    return [*typed, *(f"{key}={values}" for key, values in space.items())]


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the multirun varies, in the order given: a command-line override that
    sweeps (`a,b`, `range()`, a glob, `interval()`), then the sweeper's search space
    (`hydra.sweeper.params`)."""
    from transferlab.compat import parse_override

    keys = []
    for text in sweep_overrides(config):
        override = parse_override(text)
        if override is not None and override.is_sweep_override():
            keys.append(override.key_or_group)
    return list(dict.fromkeys(keys))


def short_keys(keys: list[str]) -> dict[str, str]:
    """How a run's name and the parent's summary metrics show each swept key: its last
    dotted part, a long snake_case one by its initials (`dataset.task.train_per_class` ->
    `tpc`); where two keys would read the same, each in full."""
    short = {key: _short_key(key) for key in keys}
    counts = Counter(short.values())
    return {key: name if counts[name] == 1 else key for key, name in short.items()}


def _short_key(key: str) -> str:
    last = re.split(r"[./]", key)[-1]
    if len(last) > LONG_KEY and "_" in last:
        return "".join(part[0] for part in last.split("_") if part)
    return last


def short_value(text: str) -> str:
    """A swept value as a name shows it: a float in 3 significant digits (`0.000312`,
    `1e-05`), anything else (an integer, a choice) as given."""
    if re.fullmatch(r"[+-]?\d+", text):
        return text
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return text


def _sweep_name(config: DictConfig) -> str:
    """`digits_learning_curve sweep 12-30-05`: the study (a config other than the default
    one) and its folder, the time it started by default."""
    study = config.hydra.job.get("config_name") or "train"
    folder = Path(config.hydra.sweep.dir).name
    return f"{study} sweep {folder}" if study != "train" else f"sweep {folder}"


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


def print_summary(counts: Counter, summary: dict | None, metric: str, parent: str) -> None:
    total = sum(counts.values())
    parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    print(f"\nSweep {parent}: {total} jobs ({parts or 'none recorded'})")
    if summary:
        print(
            f"best: {summary['run_name']} ({summary['run_id']}) {metric}={summary['objective']:.4f}"
            f" [{summary['overrides']}]"
        )
