"""The unsent importer against a real sqlite store: a planted unsent file (its header naming
another store, its records a credentials file outside its folder) sends nothing anywhere;
a run's own file, imported into the store the user names, is sent whole."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from transferlab.tracking import unsent
from transferlab.tracking.mlflow_run import UNSENT_GLOB, write_unsent

SECRET = "aws_secret_access_key=planted-0123456789"


class Recording(BaseHTTPRequestHandler):
    """Another team's tracking server: records every request it gets, answers each."""

    def do_GET(self):
        self._record()

    def do_POST(self):
        self._record()

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append(f"{self.command} {self.path} {self.rfile.read(length)!r}")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        """Quiet."""


@pytest.fixture
def other_store() -> Iterator[HTTPServer]:
    with HTTPServer(("127.0.0.1", 0), Recording) as server:
        server.seen = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server
        server.shutdown()


@pytest.fixture
def run_id(client, experiment, tmp_path) -> str:
    """A run left RUNNING in the user's store, as one whose server went away is."""
    experiment_id = client.create_experiment(
        experiment, artifact_location=str(tmp_path / "artifacts")
    )
    return client.create_run(experiment_id, run_name="kept").info.run_id


def records(artifact: Path, folder: str = "test") -> list[dict]:
    return [
        {"metric": {"key": "val/acc", "value": 0.75, "timestamp": 1, "step": 3}},
        {"params": {"lr": "0.01"}},
        {"artifact": {"path": str(artifact), "folder": folder}},
        {"end": "FINISHED"},
    ]


def assert_untouched(client, run_id: str, tmp_path: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {} and run.data.metrics == {}
    assert client.list_artifacts(run_id) == []
    stored = [path for path in (tmp_path / "artifacts").rglob("*") if path.is_file()]
    assert not any(SECRET in path.read_text(errors="ignore") for path in stored)


@pytest.mark.slow  # one real CLI process
def test_a_planted_unsent_file_sends_nothing_anywhere(
    client, tracking_uri, run_id, tmp_path, other_store, capsys
):
    credentials = tmp_path / "credentials"
    credentials.write_text(SECRET)
    other = f"http://127.0.0.1:{other_store.server_address[1]}"
    stage = tmp_path / "outputs" / "transfer"
    planted = write_unsent(stage, {"run": run_id, "tracking_uri": other}, records(credentials))

    imported = subprocess.run(
        [PYTHON, "-m", "transferlab.tracking.unsent", str(tmp_path / "outputs")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        timeout=120,
    )

    assert imported.returncode == 1, imported.stderr
    assert imported.stderr.startswith(
        f"error: {planted}: its header names the tracking store {other!r}, not {tracking_uri!r}"
    )
    assert "Traceback" not in imported.stderr
    assert other_store.seen == []  # not even asked whether it is up
    assert_untouched(client, run_id, tmp_path)
    assert planted.is_file()  # not marked imported

    # Forced into the user's store, a record naming a file outside the folder (here through
    # a symlink in it) is refused whole, before anything is sent.
    (stage / "report.txt").symlink_to(credentials)
    planted.unlink()
    planted = write_unsent(
        stage, {"run": run_id, "tracking_uri": other}, records(stage / "report.txt")
    )
    with pytest.raises(SystemExit):
        unsent.main([str(stage), "--tracking-uri", tracking_uri, "--force"])
    assert f"line 4: artifact {stage / 'report.txt'} is outside" in capsys.readouterr().err
    assert_untouched(client, run_id, tmp_path)
    assert other_store.seen == []


def test_a_runs_own_file_is_listed_then_sent_to_the_store_named(
    client, tracking_uri, run_id, tmp_path, capsys
):
    stage = tmp_path / "outputs" / "source"
    report = stage / "test" / "report.txt"
    report.parent.mkdir(parents=True)
    report.write_text("per-class report")
    kept = write_unsent(stage, {"run": run_id, "tracking_uri": tracking_uri}, records(report))
    deeper = write_unsent(tmp_path / "outputs" / "a" / "b" / "c", {"run": run_id}, [])

    assert unsent.unsent_files(tmp_path / "outputs") == [kept]  # as deep as written, no more
    assert unsent.main([str(tmp_path / "outputs"), "--tracking-uri", tracking_uri]) == 0

    listed = capsys.readouterr().out
    sent = "metrics: 1, params: 1, tags: 0, final status FINISHED"
    assert f"{kept}: into run {run_id} at {tracking_uri}: {sent}" in listed
    assert f"  artifact {report} -> test" in listed
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01"} and run.data.metrics == {"val/acc": 0.75}
    assert [a.path for a in client.list_artifacts(run_id, "test")] == ["test/report.txt"]
    assert not kept.exists() and kept.with_name(kept.name + ".imported").is_file()
    assert deeper.is_file()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 3: not JSON \("),
        ('{"metric": {"key": "loss"}}', r"line 3: a malformed metric record"),
        ('{"upload": "/etc/passwd"}', r"line 3: not a record; expected one object"),
        ('{"end": "RUNNING"}', r"line 3: a malformed end record"),
    ],
)
def test_a_malformed_line_is_one_error_naming_file_and_line(
    client, tracking_uri, run_id, tmp_path, capsys, line, message
):
    kept = write_unsent(tmp_path, {"run": run_id, "tracking_uri": tracking_uri}, [])
    with kept.open("a") as file:
        file.write(json.dumps({"params": {"lr": "0.01"}}) + "\n" + line + "\n")
    with pytest.raises(SystemExit):
        unsent.main([str(kept), "--tracking-uri", tracking_uri])
    error = capsys.readouterr().err
    assert error.startswith(f"error: {kept} ") and error.count("\n") == 1
    assert re.search(message, error)
    assert client.get_run(run_id).data.params == {}  # line 2 was fine: nothing was sent
    assert list(tmp_path.glob(UNSENT_GLOB)) == [kept]
