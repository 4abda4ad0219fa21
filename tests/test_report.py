"""transferlab.report: a real sweep (2 learning rates x 2 seeds, one failed job) read back
from a real MLflow store, run selection, errors, and a `--help` without heavy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from transferlab import report
from transferlab.errors import UserError

LRS = ("0.003", "0.03")
SEEDS = ("0", "1")
RUNS = "Runs (best first)"
SEEDS_TABLE = "Mean ± std over seeds (best first)"


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each `## heading` of report.md -> its table's rows as {column: cell}."""
    found = {}
    for section in markdown.split("\n## ")[1:]:
        heading, *lines = section.splitlines()
        cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines if line[:1] == "|"]
        found[heading] = [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]
    return found


def logged_run(client, experiment_id: str, role: str, status: str = "FINISHED", **values) -> str:
    """A run made with MlflowClient alone; `values`: metrics, params, tags."""
    tags = {"transferlab.role": role, **values.get("tags", {})}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    for key, value in values.get("metrics", {}).items():
        client.log_metric(run_id, key, value)
    for key, value in values.get("params", {}).items():
        client.log_param(run_id, key, value)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture
def sweep(train, make_config, client, experiment, tmp_path, monkeypatch) -> str:
    """A sweep's parent run and its jobs, trained for real; returns the parent's id."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id  # by make_config
    parent = client.create_run(
        experiment_id, run_name="lr-sweep", tags={"transferlab.role": "sweep"}
    )
    monkeypatch.setenv("TRANSFERLAB_PARENT_RUN_ID", parent.info.run_id)
    for lr in LRS:
        for seed in SEEDS:
            train(f"optimizer.lr={lr}", f"seed={seed}", "dataset.classes=[0,1,2]")
    with pytest.raises(UserError):  # fails after logging its params: a FAILED run
        train(f"optimizer.lr={LRS[0]}", "dataset=image_folder", f"dataset.root={tmp_path}/none")
    # A job that failed before its run existed: the sweep records it, with no role or params.
    tags = {
        "mlflow.parentRunId": parent.info.run_id,
        "transferlab.overrides": "optimizer.lr=0.3",
        "transferlab.role": "failed-job",
    }
    early = client.create_run(experiment_id, run_name="failed-job", tags=tags).info.run_id
    client.set_terminated(early, "FAILED")
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def test_a_sweep_report_holds_each_run_best_first_and_the_mean_over_seeds(
    sweep, client, tracking_uri, experiment, tmp_path
):
    path = report.write_report(sweep, tmp_path / "report", tracking_uri)
    assert path == tmp_path / "report" / "report.md"
    for name in ("val_curves.png", "objective_vs_optimizer.lr.png"):
        assert (path.parent / name).stat().st_size > 0, name
    assert not (path.parent / "objective_vs_seed.png").exists()  # seeds are not a setting
    assert not (path.parent / "choices_dataset.png").exists()  # one dataset scored: no bars
    text = path.read_text()
    assert text.startswith(
        f"# Report: lr-sweep (run {sweep})\n\n6 runs: 4 finished, 2 failed, 0 pruned"
    )

    rows = tables(text)[RUNS]
    assert list(rows[0]) == [
        "run",
        "run id",
        "status",
        "dataset",
        "optimizer.lr",
        "seed",
        "val/acc (objective)",
        "test/acc",
        "test/loss",
    ]
    early = next(row for row in rows if row["run"] == "failed-job")
    assert (early["status"], early["optimizer.lr"], early["seed"]) == ("FAILED", "0.3", "")
    for row in rows:
        if row is early:
            continue
        run = client.get_run(row["run id"])
        assert row["status"] == run.info.status
        assert row["optimizer.lr"] == run.data.params["optimizer.lr"]
        metrics = run.data.metrics
        for column, key in [("val/acc (objective)", "val/acc_best"), ("test/acc", "test/acc")]:
            assert row[column] == (f"{metrics[key]:.4f}" if key in metrics else "")
        assert row["test/loss"] == (f"{metrics['test/loss']:.4f}" if metrics else "")
    assert [r["status"] for r in rows] == ["FINISHED"] * 4 + ["FAILED"] * 2
    objectives = [float(r["val/acc (objective)"]) for r in rows[:4]]
    assert objectives == sorted(objectives, reverse=True)

    means = tables(text)[SEEDS_TABLE]
    assert [(r["dataset"], r["n"]) for r in means] == [("digits", "2")] * 2
    finished = [client.get_run(r["run id"]).data for r in rows[:4]]
    for row in means:
        seeds = [r.metrics for r in finished if r.params["optimizer.lr"] == row["optimizer.lr"]]
        for column, key in [("val/acc (objective)", "val/acc_best"), ("test/loss", "test/loss")]:
            values = np.array([m[key] for m in seeds])
            assert row[column] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    first, second = (float(r["val/acc (objective)"].split(" ± ")[0]) for r in means)
    assert first >= second

    logged = {a.path for a in client.list_artifacts(sweep, "report")}
    assert {"report/report.md", "report/val_curves.png"} <= logged

    by_name = report.write_report(experiment, tmp_path / "by_name", tracking_uri)
    named = tables(by_name.read_text())[RUNS]
    assert by_name.read_text().startswith(f"# Report: experiment {experiment}\n")
    assert [r["run id"] for r in named] == [r["run id"] for r in rows]  # not the sweep itself


def test_an_experiment_report_keeps_main_runs_and_ranks_by_the_chosen_metric(
    client, experiment, tracking_uri, tmp_path
):
    experiment_id = client.create_experiment(experiment)
    worst = logged_run(client, experiment_id, "finetune", metrics={"test/loss": 0.3})
    best = logged_run(client, experiment_id, "transfer", metrics={"test/loss": 0.1})
    cv = logged_run(client, experiment_id, "finetune-cv", metrics={"test/loss": 0.2})
    logged_run(client, experiment_id, "finetune", tags={"mlflow.parentRunId": cv})  # a fold
    for role in ("source", "scratch", "sweep"):
        logged_run(client, experiment_id, role, metrics={"test/loss": 0.0})
    pruned = logged_run(
        client, experiment_id, "finetune", "KILLED", tags={"transferlab.pruned": "true"}
    )

    path = report.write_report(experiment, tmp_path, tracking_uri, metric="test/loss")
    text = path.read_text()
    assert "4 runs: 3 finished, 0 failed, 1 pruned" in text
    rows = tables(text)[RUNS]
    assert [r["run id"] for r in rows] == [best, cv, worst, pruned]
    assert [r["test/loss (objective)"] for r in rows] == ["0.1000", "0.2000", "0.3000", ""]
    assert rows[3]["status"] == "PRUNED"
    assert SEEDS_TABLE not in text  # one seed: nothing to average
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no curves logged


def test_bad_arguments_stop_with_one_clear_line(client, experiment, tracking_uri, tmp_path, capsys):
    experiment_id = client.create_experiment(experiment)
    lonely = logged_run(client, experiment_id, "sweep")
    logged_run(client, experiment_id, "source")

    def error(*args: str, uri: str = tracking_uri) -> str:
        with pytest.raises(SystemExit) as stopped:
            report.main([*args, "--out", str(tmp_path), "--tracking-uri", uri])
        assert stopped.value.code == 1
        (line,) = capsys.readouterr().err.splitlines()
        return line

    assert error("nope").startswith(f"error: 'nope' is no experiment or run id in {tracking_uri}")
    assert error("0" * 32).startswith("error: '00000000000000000000000000000000' is no experiment")
    logged_run(client, experiment_id, "scratch", tags={"mlflow.parentRunId": lonely})
    assert error(lonely) == (
        f"error: run {lonely} has no finetune, transfer, finetune-cv or transfer-cv child runs"
    )
    missing = f"sqlite:///{tmp_path}/missing.db"
    assert error(experiment, uri=missing) == (
        f"error: no MLflow store at {missing}; pass --tracking-uri or set MLFLOW_TRACKING_URI"
    )
    assert not (tmp_path / "missing.db").exists()
    assert error(experiment) == (
        f"error: experiment {experiment!r} has no "
        "finetune, transfer, finetune-cv or transfer-cv runs"
    )
    logged_run(client, experiment_id, "finetune", metrics={"val/acc": 0.5})
    assert (
        error(experiment, "--metric", "val/f1")
        == "error: no run logged 'val/f1'; use --metric with val/acc"
    )


def test_help_answers_without_importing_torch_or_mlflow():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "transferlab.report", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--out" in result.stdout and "--metric" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {"torch", "mlflow", "matplotlib"} & imported
