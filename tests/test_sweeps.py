"""Sweeps as one MLflow study: a real multirun in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient


def multirun(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRANSFERLAB_"))}
    return subprocess.run(
        [sys.executable, "-m", "transferlab.train", "-m", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
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
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"multirun.yaml", "report"}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/figure.png"} <= report
    best = max(finished, key=lambda r: r.data.metrics["val/acc_best"])
    assert parent.data.tags["transferlab.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/acc"] == best.data.metrics["val/acc_best"]


@pytest.mark.slow
@pytest.mark.parametrize("repetition", [1, 2, 3])
def test_parallel_workers_on_one_sqlite_store_lose_nothing(tmp_path, repetition):
    """4 joblib workers x 8 jobs writing to one sqlite file, three times over: every run,
    every metric, every time (sqlite's lock contention is what would lose them)."""
    epochs = 2
    result = multirun(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "optimizer.lr=1e-3,2e-3,3e-3,4e-3",
        "seed=1,2",
        f"trainer.max_epochs={epochs}",
        "~callbacks.progress_bar",
        "~callbacks.early_stopping",
        "experiment_name=parallel",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 jobs (8 finished)" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 8
    assert {(r.data.params["optimizer.lr"], r.data.params["seed"]) for r in children} == {
        (lr, seed) for lr in ("0.001", "0.002", "0.003", "0.004") for seed in ("1", "2")
    }
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(epochs)), (key, steps)
        assert {"test/acc", "test/loss", "val/acc_best"} <= set(run.data.metrics)


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_module

    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert cfg.trainer.accelerator == "gpu"
