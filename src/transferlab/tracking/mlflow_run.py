"""The MLflow run life cycle: created before any work, always ended with a final status.

A run is FINISHED on success, FAILED (with the error as a tag) on any exception, KILLED on
Ctrl-C; never left RUNNING. Metrics are written by a background thread, in batches, so that
training never waits on the store; every one is written before the run ends.
"""

from __future__ import annotations

import functools
import os
import queue
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from transferlab.errors import RunStopped

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_VALUE = 6000  # MLflow's limit
BATCH = 100  # MLflow accepts at most 100 params per log_batch


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class RetryingClient:
    """An MlflowClient whose calls wait and retry while the store is locked: sqlite lets
    one process write at a time, and parallel sweep workers share one file."""

    ATTEMPTS = 10

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str):
        if name == "_client":  # not set yet while unpickling (joblib workers)
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args, **kwargs):
            for attempt in range(self.ATTEMPTS - 1):
                try:
                    return attribute(*args, **kwargs)
                except Exception as err:
                    if "database is locked" not in str(err):
                        raise
                    time.sleep(0.05 * 2**attempt * (1 + random.random()))
            return attribute(*args, **kwargs)

        return call


class Tracker:
    """One experiment in one store; hands out runs. `experiment` is the config that every
    run of this invocation records, so that any of them can be rerun."""

    def __init__(self, uri: str, experiment_name: str, experiment: Any = None):
        self.uri = uri
        self.experiment = experiment
        mlflow.set_tracking_uri(uri)  # also for `runs:/` / `models:/` weights resolved later
        self.client = RetryingClient(MlflowClient(tracking_uri=uri))
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                experiment_name, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        else:
            self.experiment_id = experiment.experiment_id

    def start_run(self, name: str, tags: Mapping[str, str]) -> TrackedRun:
        return TrackedRun(self.client, self.experiment_id, name, tags)

    def find_finished_run(self, tag: str, value: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def runs_page_url(self, host: str = "http://127.0.0.1:5000") -> str:
        return f"{host}/#/experiments/{self.experiment_id}/runs"


class TrackedRun:
    """A context manager around one MLflow run; its exit sets the final status."""

    def __init__(
        self, client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, str]
    ):
        self.client = client
        run = client.create_run(experiment_id, run_name=name, tags=dict(tags))
        self.run_id = run.info.run_id
        self.name = name
        self.in_sweep = "mlflow.parentRunId" in tags
        self.metrics = MetricWriter(client, self.run_id)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        lost = self.metrics.close()
        if exc_type is None and lost:  # nothing is lost silently: the run fails, saying what
            error = MetricsNotWritten(f"run {self.run_id}: " + "; ".join(lost))
            self._end(MetricsNotWritten, error)
            raise error
        self._end(exc_type, exc)
        return False

    def _end(self, exc_type, exc) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, RunStopped):
            status = exc.status
            self.set_tags({**exc.tags, "transferlab.stopped": str(exc)[:MAX_PARAM_VALUE]})
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            status = "KILLED"
        else:
            status = "FAILED"
            self.set_tags({"error": f"{exc_type.__name__}: {exc}"[:MAX_PARAM_VALUE]})
            if self.in_sweep:
                exc.recorded_in_sweep = True  # the sweep need not record this job again
        self.client.set_terminated(self.run_id, status)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)[:MAX_PARAM_VALUE]) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.metrics.put([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)


class MetricsNotWritten(RuntimeError):
    """The store refused some of a run's metrics (named in the message)."""


class MetricWriter:
    """Writes one run's metrics from a background thread, at most once per `interval`
    seconds (and when the run ends). A write to a sqlite store costs ~8 ms of Python here
    and Lightning logs three times an epoch: done in line, or on every log call, that was
    ~8 % of a small model's training (bench/tracking_overhead.py)."""

    MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
    _CLOSE = object()

    def __init__(self, client: MlflowClient, run_id: str, interval: float = 1.0):
        self.client, self.run_id, self.interval = client, run_id, interval
        self.queue: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name=f"metrics-{run_id}", daemon=True)
        self.thread.start()

    def put(self, metrics: list[Metric]) -> None:
        self.queue.put(metrics)

    def close(self) -> list[str]:
        """Waits until every queued metric is written; returns what the store refused."""
        if self.thread.is_alive():
            self.queue.put(self._CLOSE)
            self.thread.join()
        return self.errors

    def _run(self) -> None:
        pending: list[Metric] = []
        due = None  # when the oldest pending metric must be written
        while True:
            wait = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None  # the interval is over
            if item is self._CLOSE:
                self._write(pending)
                return
            if item:
                pending += item
                due = due or time.monotonic() + self.interval
            if item is None or len(pending) >= self.MAX_BATCH:
                self._write(pending)
                pending, due = [], None

    def _write(self, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), self.MAX_BATCH):
            batch = metrics[start : start + self.MAX_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception:  # one bad metric fails the batch: the others still go in
                for metric in batch:
                    self._write_one(metric)

    def _write_one(self, metric: Metric) -> None:
        try:
            self.client.log_batch(self.run_id, metrics=[metric])
        except Exception as error:  # kept for close(): nothing is dropped silently
            reason = str(error).partition("\n")[0]
            self.errors.append(f"{metric.key} (step {metric.step}): {reason}")
