"""The MLflow run life cycle: created before any work, always ended with a final status.

A run is FINISHED on success, FAILED (with the error as a tag) on any exception, KILLED on
Ctrl-C; never left RUNNING. A run whose process was killed outright (SIGKILL, power loss) is
failed by the next start on its host, which finds its process gone. Metrics are written by a
background thread, in batches, so that training never waits on the store; every one is
written before the run ends (tracking.metric_writer).

A tracking server that goes away mid-run (down, unreachable, or answering 5xx/429):
- Metrics stay queued in memory, in order, and the writer tries again after a growing pause
  (1 s to MAX_PAUSE); training never waits. Once the server answers they are written.
- Everything else (params, tags, dataset inputs, artifact uploads, the final status, and the
  metrics still queued when the run ends) waits for it: at most SERVER_WAIT s per outage,
  counted from the first call that found it down, so that a run ending in an outage waits
  once ("waiting up to 60 s for the tracking server..."), not once per call or per artifact.
- Past that wait, what the run still has to send (metrics, params, tags, dataset inputs,
  artifact paths, the final status) is kept, in order (every later record too), in
  `mlflow-unsent-<time>.jsonl` in the run's local folder (the stage folder; by default
  ./mlflow-unsent/<run id>/), and the run's end fails naming it and the command that imports
  it into the same run once the server is back: `python -m transferlab.tracking.unsent
  <file-or-folder>`. Artifacts are kept as paths: their files must stay until then. The run
  stays RUNNING on the server (or the next start on this host fails it as left RUNNING)
  until the import sets its status.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from transferlab.errors import RunStopped, UserError
from transferlab.scrub import scrubbed, without_url_credentials
from transferlab.tracking.datasets import DIGEST_TAG, dataset_records
from transferlab.tracking.metric_writer import MetricWriter
from transferlab.tracking.orphans import fail_orphaned_runs, process_tags
from transferlab.tracking.store import SERVER_WAIT, RetryingClient, connect, server_outage
from transferlab.tracking.system_metrics import SystemMetrics, next_step

if TYPE_CHECKING:
    from transferlab.data.module import TransferDataModule

MAX_PARAM_VALUE = 6000  # MLflow's limit
BATCH = 100  # MLflow accepts at most 100 params per log_batch
UNSENT_DIR = "mlflow-unsent"  # under the working directory, where a run names no folder
UNSENT_GLOB = "mlflow-unsent-*.jsonl"
IMPORT_COMMAND = "python -m transferlab.tracking.unsent"
FINDABLE = 20  # runs find_finished_run checks: planted runs cost a retrain, never a reuse
DATASET_FIELDS = ("name", "digest", "source_type", "source", "profile", "context")  # an input
DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value")  # sqlite, PostgreSQL


class Tracker:
    """One experiment in one store; hands out runs. `experiment` is the config that every
    run of this invocation records, so that any of them can be rerun; with `system_metrics`
    each run logs the machine's (tracking.system_metrics)."""

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        experiment: Any = None,
        server_wait: float = SERVER_WAIT,
        system_metrics: bool = False,
    ):
        self.uri = uri
        self.experiment = experiment
        self.system_metrics = system_metrics
        self.client = connect(uri, server_wait)
        mlflow.set_tracking_uri(uri)  # also for `runs:/` / `models:/` weights resolved later
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                experiment_name, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        else:
            self.experiment_id = experiment.experiment_id
        fail_orphaned_runs(self.client)

    def start_run(
        self,
        name: str,
        tags: Mapping[str, str],
        run_id: str | None = None,
        local_dir: Path | None = None,
    ) -> TrackedRun:
        """A new run, or with `run_id` that run again (a resumed one), RUNNING once more.
        `local_dir` keeps what a tracking server that went away did not take."""
        return TrackedRun(
            self.client, self.experiment_id, name, tags, run_id, local_dir, self.system_metrics
        )

    def find_finished_run(self, tag: str, value: str, accept: Callable[[Run], bool]) -> str | None:
        """The newest FINISHED run of this experiment tagged `tag`=`value` that `accept`
        takes. A tag is anyone's to set who can write to the store: `accept` checks the run
        itself (the newest FINDABLE runs are looked at; past them, none is found)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=FINDABLE,
        )
        return next((run.info.run_id for run in runs if accept(run)), None)

    def runs_page_url(self, host: str = "http://127.0.0.1:5000") -> str:
        """MLflow 3.17's UI opens an experiment in GenAI mode unless the link names the
        workflow: the experimentKind tag alone does not choose it."""
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        return f"{host.rstrip('/')}/{page}"


class TrackedRun:
    """A context manager around one MLflow run; its exit sets the final status. What a
    tracking server that went away did not take is kept in `local_dir` (module docstring).
    With `system_metrics`, the machine is sampled from the start to the exit, whatever the
    status (tracking.system_metrics)."""

    def __init__(
        self,
        client: RetryingClient,
        experiment_id: str,
        name: str,
        tags: Mapping[str, str],
        run_id: str | None = None,
        local_dir: Path | None = None,
        system_metrics: bool = False,
    ):
        self.client = client
        self.unsent: list[dict[str, Any]] = []  # records the server did not take, in order
        tags = {**tags, **process_tags()}  # a resumed run names its new process
        if run_id is None:
            self.run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        else:
            self.run_id = run_id
            self.set_tags(tags)  # this process's pid first: a start in between sees it alive
            client.update_run(run_id, status="RUNNING")
        self.name = name
        self.in_sweep = "mlflow.parentRunId" in tags
        self.local_dir = Path(local_dir) if local_dir else Path.cwd() / UNSENT_DIR / self.run_id
        self.metrics = MetricWriter(client, self.run_id)
        self.system = None
        if system_metrics:
            first = next_step(client, run_id) if run_id else 0  # resumed: its steps go on
            self.system = SystemMetrics(self.log_metrics, first)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.system is not None:
            self.system.stop()  # its last sample goes with the run's other metrics
        refused = self.metrics.close()
        self.unsent += [{"metric": _metric_record(metric)} for metric in self.metrics.unsent]
        failure = None
        if exc_type is None and refused:  # nothing is lost silently: the run fails, saying what
            failure = MetricsNotWritten(f"run {self.run_id}: " + "; ".join(refused))
            self._end(MetricsNotWritten, failure)
        else:
            self._end(exc_type, exc)
        if self.unsent:
            failure = self._keep_unsent(failure, exc)
        if failure is not None:
            raise failure
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
            self.set_tags({"error": scrubbed(f"{exc_type.__name__}: {exc}")[:MAX_PARAM_VALUE]})
            if self.in_sweep:
                exc.recorded_in_sweep = True  # the sweep need not record this job again
        self._send("end", status)

    def _keep_unsent(
        self, failure: Exception | None, exc: BaseException | None
    ) -> Exception | None:
        """Writes what the server did not take to a file, for `unsent` to import. Returns
        the error that says so; where the run fails with an error of its own, prints it."""
        uri = without_url_credentials(self.client.tracking_uri)  # a file, a console line
        path = write_unsent(self.local_dir, {"run": self.run_id, "tracking_uri": uri}, self.unsent)
        message = (
            f"run {self.run_id} ({self.name}): the tracking server {uri} did not answer "
            f"within {self.client.server_wait:g} s; what it did not take of the run "
            f"({_kinds(self.unsent)}) is kept in {path}. Once it answers, import that into "
            f"the run with: {IMPORT_COMMAND} {shlex.quote(str(path))} "
            f"--tracking-uri {shlex.quote(uri)}"
        )
        if any("artifact" in record for record in self.unsent):
            message += " (it uploads the artifacts from where they are: keep them until then)"
        if failure is not None:
            message += f". Also, {failure}"
        if exc is None:
            return RunKeptLocally(message)
        print(message, file=sys.stderr)
        return None

    def _send(self, kind: str, body: Any) -> None:
        """Sends a record now; or, once the tracking server has not answered within its
        wait, keeps it for the unsent file, and every later record too, in their order."""
        if not self.unsent:
            try:
                send_record(self.client, self.run_id, kind, body)
                return
            except Exception as error:
                if server_outage(error) is None:
                    raise
        self.unsent.append({kind: body})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send("params", _strings(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._send("tags", _strings(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.metrics.put([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._send("artifact", {"path": str(Path(path).resolve()), "folder": folder})

    def log_datasets(self, data: TransferDataModule) -> None:
        """What the run trains and is tested on, set up: its digest as a tag, each split as
        an MLflow dataset input (see tracking.datasets)."""
        self.set_tags({DIGEST_TAG: data.dataset_digest})
        self._send("inputs", dataset_records(data))


def send_record(client: RetryingClient, run_id: str, kind: str, body: Any) -> None:
    """Sends one record of a run, as TrackedRun makes them and an unsent file keeps them
    (metrics aside: those go through a MetricWriter)."""
    if kind == "params":
        items = [Param(key, value) for key, value in body.items()]
        for start in range(0, len(items), BATCH):
            client.log_batch(run_id, params=items[start : start + BATCH])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in body.items()])
    elif kind == "artifact":
        client.log_artifact(run_id, body["path"], body["folder"])
    elif kind == "inputs":
        _log_inputs(client, run_id, [_dataset_input(dataset) for dataset in body])
    elif kind == "end":
        client.set_terminated(run_id, body)
    else:
        raise ValueError(f"unknown record {kind!r}")


def _log_inputs(client: RetryingClient, run_id: str, datasets: list) -> None:
    """Two runs that log the same new dataset at once (parallel sweep workers, one store)
    both find it missing and both insert it: the store refuses the second insert and rolls
    its call back. Tried again, that call finds the dataset and links it to its run."""
    try:
        client.log_inputs(run_id, datasets=datasets)
    except Exception as error:
        if not any(words in str(error) for words in DUPLICATE_ROW):
            raise
        client.log_inputs(run_id, datasets=datasets)


def write_unsent(folder: Path, header: dict[str, str], records: list[dict[str, Any]]) -> Path:
    """One JSON object a line: the header (run id, tracking URI), then each record,
    `{kind: body}`, in the order the run made them; read by transferlab.tracking.unsent."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / UNSENT_GLOB.replace("*", time.strftime("%Y%m%d-%H%M%S"))
    path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    return path


def _kinds(records: Iterable[dict[str, Any]]) -> str:
    """'metrics, artifacts and final status: 42 records'"""
    names = {"params": "params", "tags": "tags", "metric": "metrics", "artifact": "artifacts"}
    names |= {"inputs": "datasets", "end": "final status"}
    kinds = [next(iter(record)) for record in records]
    found = [name for kind, name in names.items() if kind in kinds]
    listed = ", ".join(found[:-1]) + " and " + found[-1] if len(found) > 1 else found[0]
    return f"{listed}: {len(kinds)} records"


def _strings(values: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value)[:MAX_PARAM_VALUE] for key, value in values.items()}


def _dataset_input(record: dict[str, str]) -> DatasetInput:
    """A dataset record (DATASET_FIELDS) as MLflow's input: its context an input tag."""
    dataset = Dataset(**{key: record[key] for key in DATASET_FIELDS if key != "context"})
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, record["context"])])


def _metric_record(metric: Metric) -> dict[str, Any]:
    return {
        "key": metric.key,
        "value": metric.value,
        "timestamp": metric.timestamp,
        "step": metric.step,
    }


class MetricsNotWritten(RuntimeError):
    """The store refused some of a run's metrics (named in the message)."""


class RunKeptLocally(UserError):
    """The tracking server did not come back before the run ended: what it did not take is
    in a local file, to import (named in the message, with the command)."""
