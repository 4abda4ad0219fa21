"""How a study reads in the MLflow UI: every run a job makes nests under the job's run (and
the job under its sweep's parent), names say what varies, and the parent holds the mean and
std over seeds. Real runs in-process, read back from the sqlite store."""

from __future__ import annotations

import statistics

import pytest

THREE_CLASSES = "dataset.task.classes=[0,1,2]"
PARENT = "mlflow.parentRunId"


def children_of(runs: list, run_id: str) -> list:
    return [r for r in runs if r.data.tags.get(PARENT) == run_id]


def test_a_sweep_shows_its_parent_alone_with_named_jobs_their_baselines_and_the_summary(
    multirun, runs
):
    """2 train_per_class x 2 seeds, each with a scratch baseline."""
    swept = ["dataset.task.train_per_class=2,4", "seed=1,2"]
    assert multirun(*swept, "compare_scratch=true", THREE_CLASSES) == 0
    found = runs()
    (parent,) = [r for r in found if PARENT not in r.data.tags]  # the top level: the sweep
    assert parent.data.tags["transferlab.role"] == "sweep"
    jobs = children_of(found, parent.info.run_id)
    assert sorted(r.info.run_name for r in jobs) == [
        f"small_cnn-none-adamw tpc={tpc} seed={seed}" for tpc in (2, 4) for seed in (1, 2)
    ]
    for job in jobs:
        assert job.data.tags["transferlab.role"] == "finetune"
        (scratch,) = children_of(found, job.info.run_id)  # grandchildren of the sweep
        assert scratch.data.tags["transferlab.role"] == "scratch"
        assert scratch.info.run_name == f"scratch for {job.info.run_name}"
        assert job.data.tags["transferlab.baseline_run_id"] == scratch.info.run_id
        assert scratch.info.status == job.info.status == "FINISHED"
        assert job.data.metrics["scratch/test/acc"] == scratch.data.metrics["test/acc"]
    assert len(found) == 1 + 4 + 4

    assert parent.data.tags["transferlab.outcomes"] == "{'finished': 4}"  # jobs, not baselines
    assert parent.data.tags["transferlab.best_run_id"] in {r.info.run_id for r in jobs}
    summary = {k: v for k, v in parent.data.metrics.items() if " mean" in k or " std" in k}
    expected = {}
    for tpc in ("2", "4"):
        same = [j for j in jobs if j.data.params["dataset.task.train_per_class"] == tpc]
        for metric, key in [("test/acc", "test/acc"), ("val/acc", "val/acc_best")]:
            values = [j.data.metrics[key] for j in same]
            expected[f"{metric} mean tpc:{tpc}"] = statistics.mean(values)
            expected[f"{metric} std tpc:{tpc}"] = statistics.stdev(values)
    assert {k: summary[k] for k in expected} == pytest.approx(expected)
    assert {k.split(" ")[0] for k in summary} == {"val/acc", "test/acc", "test/loss"} | {
        "scratch/test/acc"
    }


def test_a_single_run_nests_its_source_and_scratch_runs_and_a_reused_source_stays_put(train, runs):
    transfer = ["source.trainer.max_epochs=1", "dataset.task.train_per_class=2"]
    train(*transfer, "compare_scratch=true", config_name="digits_transfer")
    found = runs()
    (main,) = [r for r in found if PARENT not in r.data.tags]
    assert (main.info.run_name, main.data.tags["transferlab.role"]) == (
        "small_cnn-none-adamw",
        "transfer",
    )
    by_role = {r.data.tags["transferlab.role"]: r for r in children_of(found, main.info.run_id)}
    assert sorted(by_role) == ["scratch", "source"]
    source, scratch = by_role["source"], by_role["scratch"]
    assert source.info.run_name == "small_cnn-source-digits_0_4"
    assert scratch.info.run_name == "scratch for small_cnn-none-adamw"
    assert main.data.tags["transferlab.source_run_id"] == source.info.run_id
    assert main.data.params["backbone.weights_path"] == f"runs:/{source.info.run_id}/backbone.pt"
    assert len(found) == 3

    train(*transfer, "compare_scratch=false", config_name="digits_transfer")  # reuses it
    again = runs()
    (second,) = [r for r in again if r.info.run_id not in {f.info.run_id for f in found}]
    assert PARENT not in second.data.tags
    assert second.data.tags["transferlab.source_run_id"] == source.info.run_id
    assert children_of(again, second.info.run_id) == []
    (kept,) = [r for r in again if r.info.run_id == source.info.run_id]
    assert kept.data.tags[PARENT] == main.info.run_id  # its first parent
