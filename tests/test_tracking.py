"""The MLflow run life cycle against a real sqlite store: every metric arrives, and a
metric the store refuses fails the run by name instead of vanishing."""

from __future__ import annotations

import pytest

from transferlab.tracking.mlflow_run import MetricsNotWritten, Tracker


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
