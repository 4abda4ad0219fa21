"""The MLflow run life cycle against a real sqlite store: every metric arrives, a metric
the store refuses fails the run by name instead of vanishing, a run whose process was killed
is failed by the next start, and a tracking server that does not answer stops a run at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from tests.conftest import PYTHON
from transferlab.errors import UserError
from transferlab.tracking.environment import BOOT_TAG, MACHINE_TAG
from transferlab.tracking.mlflow_run import MetricsNotWritten, Tracker
from transferlab.tracking.orphans import (
    PID_NAMESPACE_TAG,
    PID_START_TAG,
    PID_TAG,
    process_tags,
)
from transferlab.tracking.recorded import CHECKPOINT_TAG
from transferlab.tracking.store import check_reachable


def test_every_metric_arrives_with_its_step(tracking_uri, client, experiment):
    tracker = Tracker(tracking_uri, experiment)
    with tracker.start_run("many-metrics", {}) as run:
        for step in range(60):  # 60 log calls, 1,800 values: more than one batch
            run.log_metrics({f"m{i}": step + i / 100 for i in range(30)}, step=step)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    history = client.get_metric_history(run.run_id, "m7")
    assert [(m.step, m.value) for m in history] == [(s, s + 0.07) for s in range(60)]
    assert len(client.get_run(run.run_id).data.metrics) == 30


def test_a_refused_metric_fails_the_run_and_the_others_still_arrive(
    tracking_uri, client, experiment
):
    tracker = Tracker(tracking_uri, experiment)
    with pytest.raises(MetricsNotWritten) as error, tracker.start_run("refused", {}) as run:
        run.log_metrics({"val/acc": 0.5, "../escape": 1.0}, step=3)
    assert "../escape (step 3)" in str(error.value)
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FAILED"
    assert "../escape" in finished.data.tags["error"]
    assert finished.data.metrics == {"val/acc": 0.5}


# --- runs left RUNNING by a killed process; an unreachable tracking server ----------------

KILLED_INSIDE_A_RUN = """
import os, signal, sys
from transferlab.tracking.mlflow_run import Tracker

with Tracker(sys.argv[1], sys.argv[2]).start_run("killed", {}) as run:
    print(run.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_the_next_start_fails_a_run_whose_process_was_killed_and_offers_resume(
    train, client, tracking_uri, experiment, tmp_path, capsys
):
    killed = subprocess.run(
        [PYTHON, "-c", KILLED_INSIDE_A_RUN, tracking_uri, experiment],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_id = killed.stdout.strip()
    assert client.get_run(run_id).info.status == "RUNNING"
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"a checkpoint")
    client.set_tag(run_id, CHECKPOINT_TAG, str(checkpoint))
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    alive = client.create_run(experiment_id, run_name="alive", tags=process_tags()).info.run_id

    train()

    failed = client.get_run(run_id)
    pid = failed.data.tags[PID_TAG]
    assert failed.info.status == "FAILED"
    assert f"process {pid} on {socket.gethostname()} is gone" in failed.data.tags["error"]
    stderr = capsys.readouterr().err
    assert f"run {run_id} (killed) marked FAILED: its process {pid}" in stderr
    assert f"resume it with: transferlab-train resume={run_id}" in stderr
    assert client.get_run(alive).info.status == "RUNNING"
    client.set_terminated(alive)


def test_only_this_machine_judges_its_runs_and_an_earlier_boot_is_dead(
    tracking_uri, client, experiment, capsys
):
    """The store is shared: a run of another machine with this host name, pid namespace
    and a dead pid is never touched; one of this machine's earlier boot is failed even
    though its pid is alive now (another process of this boot)."""
    mine = process_tags()
    if not {PID_START_TAG, PID_NAMESPACE_TAG, MACHINE_TAG, BOOT_TAG} <= set(mine):
        pytest.skip("needs /proc and a machine id: start times, pid namespaces, boot ids")
    experiment_id = Tracker(tracking_uri, experiment).experiment_id
    dead, alive = "4194305", str(os.getpid())  # above Linux's largest pid; this process
    before_this_boot, now = 1_000, None  # ms since the epoch (in 1970); None: now
    runs = {
        "earlier-process-same-pid": ({PID_START_TAG: "1"}, now),
        "earlier-boot": ({BOOT_TAG: "an-earlier-boot", PID_TAG: alive}, before_this_boot),
        "another-machine": ({MACHINE_TAG: "another-machine", PID_TAG: dead}, before_this_boot),
        "no-machine-id": ({MACHINE_TAG: None, PID_TAG: dead}, before_this_boot),
        "machine-id-copied-to-another": ({BOOT_TAG: "another-boot", PID_TAG: dead}, now),
        "another-pid-namespace": ({PID_NAMESPACE_TAG: "pid:[1]", PID_TAG: dead}, now),
    }
    ids = {}
    for name, (tags, start_time) in runs.items():
        all_tags = {key: value for key, value in {**mine, **tags}.items() if value is not None}
        run = client.create_run(experiment_id, start_time, all_tags, run_name=name)
        ids[name] = run.info.run_id

    Tracker(tracking_uri, experiment)

    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "earlier-process-same-pid": "FAILED",
        "earlier-boot": "FAILED",
        "another-machine": "RUNNING",
        "no-machine-id": "RUNNING",
        "machine-id-copied-to-another": "RUNNING",
        "another-pid-namespace": "RUNNING",
    }
    untouched = client.get_run(ids["another-machine"]).data.tags
    assert "error" not in untouched and untouched[PID_TAG] == dead
    assert "restarted since" in client.get_run(ids["earlier-boot"]).data.tags["error"]
    assert "resume" not in capsys.readouterr().err  # no checkpoint recorded
    for run_id in ids.values():
        client.set_terminated(run_id)


def test_an_unreachable_tracking_server_is_one_clear_error_before_training(train, runs, tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(UserError) as error:
        train(f"tracking.uri={uri}")
    assert str(error.value).startswith(f"tracking.uri={uri}: ")
    assert "(connection refused)" in str(error.value)
    assert f"mlflow server --host 127.0.0.1 --port {port}" in str(error.value)
    assert "tracking.uri=sqlite:///mlflow.db" in str(error.value)
    assert runs() == []
    assert not (tmp_path / "outputs").exists()


def test_a_tracking_server_that_does_not_answer_is_refused_after_the_timeout():
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(UserError, match=r"does not answer \(no answer within 0.5 s\)"):
            check_reachable(uri, timeout=0.5)
