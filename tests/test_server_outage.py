"""A real `mlflow server` that goes away mid-run: logging never blocks, metrics logged
while it is down arrive once it is back; where it never comes back within the run's wait,
they are kept in a local file that the import command puts into the same run."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from transferlab.tracking import unsent
from transferlab.tracking.mlflow_run import (
    IMPORT_COMMAND,
    UNSENT_DIR,
    UNSENT_GLOB,
    RunKeptLocally,
    TrackedRun,
    Tracker,
)
from transferlab.tracking.store import FAIL_FAST_HTTP, server_outage


class Server:
    """`mlflow server` on one port and store, stopped and started again like a real one."""

    def __init__(self, store: str, folder: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        self.folder = folder
        self.command = [
            *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store),
            *("--artifacts-destination", str(folder / "artifacts"), "--workers", "1"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.folder / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: its workers stop with it
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )

    def is_up(self) -> bool:
        assert self.process.poll() is None, (self.folder / "server.log").read_text()[-3000:]
        try:
            return requests.get(f"{self.uri}/health", timeout=1).ok
        except requests.RequestException:
            return False

    def wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_up():
            assert time.monotonic() < deadline, f"mlflow server not up in {timeout} s"
            time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        with socket.socket() as probe:  # its workers gone too: nothing answers
            assert probe.connect_ex(("127.0.0.1", int(self.uri.rpartition(":")[2]))) != 0


@pytest.fixture(scope="module")
def server(tracking_uri, tmp_path_factory):
    """Up at the start of each test; its store is the session's sqlite one (schema made)."""
    server = Server(tracking_uri, tmp_path_factory.mktemp("server"))
    server.start()
    server.wait_until_up()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def process_settings(monkeypatch):
    """What a Tracker sets for the whole process, put back after each test."""
    for name, value in FAIL_FAST_HTTP.items():
        monkeypatch.setenv(name, value)
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


def log_for(run: TrackedRun, seconds: float, step: int) -> int:
    """Logs like training does, every 50 ms, for about `seconds`; returns the next step."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run.log_metrics({"loss": 1 / (step + 1), "acc": step / 1000}, step=step)
        step += 1
        time.sleep(0.05)
    return step


def assert_every_metric_arrived(client: MlflowClient, run_id: str, steps: int) -> None:
    for key, value in {"loss": lambda s: 1 / (s + 1), "acc": lambda s: s / 1000}.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(step, value(step)) for step in range(steps)], key


@pytest.mark.slow  # each server start costs ~15 s here
def test_metrics_logged_while_the_server_is_down_arrive_once_it_is_back(
    server, experiment, tmp_path
):
    tracker = Tracker(server.uri, experiment, server_wait=30)
    client = MlflowClient(server.uri)
    with tracker.start_run("outage", {}, local_dir=tmp_path) as run:
        step = log_for(run, 1.5, 0)
        server.stop()
        step = down_until = log_for(run, 2, step)
        server.start()
        while not server.is_up():  # training goes on while it restarts
            step = log_for(run, 0.3, step)
        deadline = time.monotonic() + 30
        while len(client.get_metric_history(run.run_id, "loss")) < down_until:
            assert time.monotonic() < deadline, "the writer did not try the server again"
            step = log_for(run, 0.3, step)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert_every_metric_arrived(client, run.run_id, step)
    assert not list(tmp_path.rglob(UNSENT_GLOB))


@pytest.mark.slow
def test_what_a_server_that_never_returns_missed_is_kept_and_imported(
    server, experiment, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no local_dir: kept under ./mlflow-unsent/<run id>/
    tracker = Tracker(server.uri, experiment, server_wait=2)
    with pytest.raises(RunKeptLocally) as error, tracker.start_run("gone", {}) as run:
        report = tmp_path / UNSENT_DIR / run.run_id / "report.txt"  # uploaded: in its folder
        report.parent.mkdir(parents=True)
        report.write_text("per-class report")
        step = log_for(run, 1.5, 0)
        server.stop()
        step = log_for(run, 1, step)
        run.log_artifact(report, "test")  # waits 2 s, then kept: the end waits no more
    (kept,) = (tmp_path / UNSENT_DIR / run.run_id).glob(UNSENT_GLOB)
    assert str(error.value).startswith(f"run {run.run_id} (gone): the tracking server ")
    assert f"kept in {kept}" in str(error.value)
    assert f"{IMPORT_COMMAND} {shlex.quote(str(kept))}" in str(error.value)
    assert capsys.readouterr().err.count("waiting up to 2 s for the tracking server") == 1

    server.start()
    server.wait_until_up()
    client = MlflowClient(server.uri)
    assert client.get_run(run.run_id).info.status == "RUNNING"
    assert unsent.main([str(tmp_path), "--tracking-uri", server.uri]) == 0

    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert_every_metric_arrived(client, run.run_id, step)
    assert [a.path for a in client.list_artifacts(run.run_id, "test")] == ["test/report.txt"]
    assert not kept.exists()
    assert kept.with_name(kept.name + ".imported").exists()


class Answers503(BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        """Quiet."""


def test_a_server_that_answers_5xx_or_not_at_all_is_an_outage_not_a_refusal():
    with HTTPServer(("127.0.0.1", 0), Answers503) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{proxy.server_address[1]}"
        with pytest.raises(Exception) as answered:
            MlflowClient(uri).log_batch("run", metrics=[Metric("loss", 1.0, 0, 0)])
        proxy.shutdown()
    with pytest.raises(Exception) as refused:  # the proxy's port, closed now
        MlflowClient(uri).log_batch("run", metrics=[Metric("loss", 1.0, 0, 0)])
    assert server_outage(answered.value) == "HTTP 503"
    assert server_outage(refused.value) == "connection refused"
