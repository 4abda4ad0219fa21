"""Sweeps as one MLflow study: a real multirun in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def multirun(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRANSFERLAB_"))}
    return subprocess.run(
        [sys.executable, "-m", "transferlab.train", "-m", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_grid_multirun_is_one_study_and_survives_a_failing_job(tmp_path):
    result = multirun(
        tmp_path,
        "optimizer.lr=1e-3,-1",
        "freeze=none,linear_probe",
        "trainer.max_epochs=1",
        "~callbacks.progress_bar",
        "experiment_name=grid",
    )
    assert result.returncode == 1, result.stderr[-3000:]  # some jobs failed
    assert "4 jobs (2 failed, 2 finished)" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("transferlab.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 == len(runs) - 1
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED"
    failed = [r for r in children if r.info.status == "FAILED"]
    assert all("optimizer.lr=-1 must be > 0" in r.data.tags["error"] for r in failed)
    for child in children:
        assert "optimizer.lr=" in child.data.tags["transferlab.overrides"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert {r.data.params["freeze"] for r in finished} == {"none", "linear_probe"}
    assert {r.data.params["optimizer.lr"] for r in finished} == {"0.001"}
    assert parent.data.params["sweep.freeze"] == "none,linear_probe"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["multirun.yaml"]
    best = max(finished, key=lambda r: r.data.metrics["val/acc_best"])
    assert parent.data.tags["transferlab.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/acc"] == best.data.metrics["val/acc_best"]
