"""System metrics (tracking.system_metrics), read back from a real sqlite store: every run
that asks for them has a sample however short it is and whatever its status, a resumed run
goes on with its own steps, and a bad setting is one line."""

from __future__ import annotations

import pytest

from transferlab.errors import UserError
from transferlab.tracking.mlflow_run import Tracker
from transferlab.tracking.system_metrics import check_system_metrics, system_metrics_wanted

CPU = "system/cpu_utilization_percentage"
MEMORY = "system/system_memory_usage_megabytes"


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def test_a_run_shorter_than_the_interval_has_a_sample(client, tracking_uri, experiment, tmp_path):
    tracker = Tracker(tracking_uri, experiment, system_metrics=True)
    with tracker.start_run("short", {}, local_dir=tmp_path) as run:
        assert run.system.interval == 10  # MLflow's default: far longer than this run
        run.log_metrics({"val/acc": 0.5})

    metrics = client.get_run(run.run_id).data.metrics
    assert steps(client, run.run_id, CPU) == [0]  # the sample taken as the run ended
    assert 0 <= metrics[CPU] <= 100 and metrics[MEMORY] > 0
    assert {"system/disk_usage_megabytes", "system/network_receive_megabytes"} <= set(metrics)
    assert metrics["val/acc"] == 0.5
    assert not run.system.thread.is_alive()


def test_a_failed_run_stops_sampling_and_keeps_its_sample(
    client, tracking_uri, experiment, tmp_path
):
    tracker = Tracker(tracking_uri, experiment, system_metrics=True)
    with pytest.raises(RuntimeError), tracker.start_run("fails", {}, local_dir=tmp_path) as run:
        raise RuntimeError("disk on fire")

    assert client.get_run(run.run_id).info.status == "FAILED"
    assert steps(client, run.run_id, MEMORY) == [0]
    assert not run.system.thread.is_alive()


def test_a_resumed_run_goes_on_with_its_own_steps(client, tracking_uri, experiment, tmp_path):
    tracker = Tracker(tracking_uri, experiment, system_metrics=True)
    with tracker.start_run("first", {}, local_dir=tmp_path) as run:
        pass
    with tracker.start_run("first", {}, run_id=run.run_id, local_dir=tmp_path):
        pass
    assert steps(client, run.run_id, CPU) == [0, 1]


def test_runs_log_none_unless_asked(client, tracking_uri, experiment, tmp_path):
    with Tracker(tracking_uri, experiment).start_run("off", {}, local_dir=tmp_path) as run:
        run.log_metrics({"val/acc": 0.5})
    assert list(client.get_run(run.run_id).data.metrics) == ["val/acc"]


@pytest.mark.parametrize(
    ("setting", "accelerator", "wanted"),
    [(True, "cpu", True), (False, "gpu", False), ("auto", "gpu", True), ("auto", "cpu", False)],
)
def test_auto_is_on_for_a_gpu_trainer(setting, accelerator, wanted):
    assert system_metrics_wanted(setting, accelerator) is wanted


@pytest.mark.parametrize("setting", ["maybe", 1, None])
def test_a_bad_setting_is_one_line_naming_what_is_accepted(setting):
    with pytest.raises(UserError) as error:
        check_system_metrics(setting)
    assert str(error.value) == (
        f"tracking.system_metrics={setting!r} is unknown; use true, false or auto "
        "(auto: on where the trainer runs on a GPU, e.g. trainer=gpu)"
    )


def test_a_training_run_asked_for_them_logs_them_and_auto_on_the_cpu_does_not(train, runs, client):
    """Through the real app: the switch reaches every run of the job (scratch included)."""
    train("tracking.system_metrics=true", "compare_scratch=true", "freeze=linear_probe")
    asked = runs()
    assert len(asked) == 2
    for run in asked:
        assert 0 <= run.data.metrics[CPU] <= 100 and run.data.metrics[MEMORY] > 0
    train("freeze=linear_probe")  # tracking.system_metrics=auto, trainer=cpu
    newest = runs()[-1]
    assert not any(key.startswith("system/") for key in newest.data.metrics)
