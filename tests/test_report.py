"""transferlab.report on runs the pipeline made: a real multirun (2 learning rates x 2 seeds,
failed jobs of both kinds), an experiment of every run role, errors, and a `--help` without
heavy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from transferlab import report
from transferlab.errors import RunStopped

LRS = ("0.003", "0.03")
DIVERGES = "1e30"  # AdamW's first step throws the weights to ~1e30: the loss turns NaN
INVALID = "-1"  # refused by validation, before the job's run exists
SEEDS = ("0", "1")
THREE_CLASSES = "dataset.task.classes=[0,1,2]"
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


@pytest.fixture
def sweep(multirun, runs) -> str:
    """A real multirun: 2 learning rates x 2 seeds that train, 2 jobs that diverge (FAILED
    runs with their params) and 2 that fail validation before their run exists (recorded by
    the sweep as role failed-job). Returns the parent run's id."""
    lrs = ",".join([*LRS, DIVERGES, INVALID])
    swept = [f"optimizer.lr={lrs}", f"seed={','.join(SEEDS)}"]
    assert multirun(*swept, THREE_CLASSES, "freeze=linear_probe") == 1  # jobs failed: exit 1
    (parent,) = [r for r in runs() if r.data.tags["transferlab.role"] == "sweep"]
    return parent.info.run_id


def test_a_sweep_report_holds_each_run_best_first_and_the_mean_over_seeds(
    sweep, client, tracking_uri, experiment, tmp_path
):
    path = report.write_report(sweep, tmp_path / "report", tracking_uri)
    assert path == tmp_path / "report" / "report.md"
    for name in ("val_curves.png", "figure.png", "figure.svg", "report.html"):
        assert (path.parent / name).stat().st_size > 0, name
    text = path.read_text()
    assert "![How does test/acc change with optimizer.lr?](figure.png)" in text  # seeds: no x
    assert text.startswith(
        f"# Report: sweep sweep (run {sweep})\n\n8 runs: 4 finished, 4 failed, 0 pruned"
    )

    rows = tables(text)[RUNS]
    assert list(rows[0]) == [
        "run",
        "run id",
        "status",
        "optimizer.lr",
        "seed",
        "val/acc (objective)",
        "test/acc",
        "test/loss",
    ]
    assert [r["status"] for r in rows] == ["FINISHED"] * 4 + ["FAILED"] * 4
    early = [row for row in rows if row["run"].startswith("failed-job")]
    assert sorted((r["optimizer.lr"], r["seed"]) for r in early) == [(INVALID, s) for s in SEEDS]
    # each run is named by what the sweep varies: lr in 3 significant digits
    named = {"0.003": "0.003", "0.03": "0.03", DIVERGES: "1e+30"}
    assert sorted(r["run"] for r in rows) == sorted(
        [f"failed-job lr={INVALID} seed={s}" for s in SEEDS]
        + [f"small_cnn-linear_probe-adamw lr={named[lr]} seed={s}" for lr in named for s in SEEDS]
    )
    for row in rows:
        if row in early:
            assert row["val/acc (objective)"] == row["test/acc"] == row["test/loss"] == ""
            continue
        run = client.get_run(row["run id"])
        assert row["status"] == run.info.status
        assert (row["optimizer.lr"], row["seed"]) == (
            run.data.params["optimizer.lr"],
            run.data.params["seed"],
        )
        metrics = run.data.metrics
        for column, key in [
            ("val/acc (objective)", "val/acc_best"),
            ("test/acc", "test/acc"),
            ("test/loss", "test/loss"),
        ]:
            assert row[column] == (f"{metrics[key]:.4f}" if key in metrics else ""), column
    assert {r["optimizer.lr"] for r in rows if r["status"] == "FAILED"} == {"1e+30", INVALID}
    objectives = [float(r["val/acc (objective)"]) for r in rows[:4]]
    assert objectives == sorted(objectives, reverse=True)

    means = tables(text)[SEEDS_TABLE]
    assert sorted((r["optimizer.lr"], r["n"]) for r in means) == [(lr, "2") for lr in LRS]
    finished = [client.get_run(r["run id"]).data for r in rows[:4]]
    for row in means:
        seeds = [r.metrics for r in finished if r.params["optimizer.lr"] == row["optimizer.lr"]]
        for column, key in [("val/acc (objective)", "val/acc_best"), ("test/loss", "test/loss")]:
            values = np.array([m[key] for m in seeds])
            assert row[column] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    first, second = (float(r["val/acc (objective)"].split(" ± ")[0]) for r in means)
    summary = client.get_run(sweep).data.metrics  # the same table on the sweep's parent run
    for row in means:
        for column, metric in [("val/acc (objective)", "val/acc"), ("test/loss", "test/loss")]:
            mean, std = (float(x) for x in row[column].split(" ± "))
            setting = f"lr:{row['optimizer.lr']}"
            assert summary[f"{metric} mean {setting}"] == pytest.approx(mean, abs=5e-5)
            assert summary[f"{metric} std {setting}"] == pytest.approx(std, abs=5e-5)
    assert first >= second

    logged = {a.path for a in client.list_artifacts(sweep, "report")}
    assert {"report/report.md", "report/report.html", "report/val_curves.png"} <= logged

    by_name = report.write_report(experiment, tmp_path / "by_name", tracking_uri)
    named = tables(by_name.read_text())[RUNS]
    assert by_name.read_text().startswith(f"# Report: experiment {experiment}\n")
    assert [r["run id"] for r in named] == [r["run id"] for r in rows]  # not the sweep itself


def test_an_experiment_report_keeps_main_runs_and_ranks_by_the_chosen_metric(
    train, runs, client, experiment, tracking_uri, tmp_path
):
    train(THREE_CLASSES, "compare_scratch=true")  # + scratch
    train(THREE_CLASSES, "cv.folds=2", "dataset.task.val_fraction=0.3")  # finetune-cv + 2 folds
    train(
        "source.trainer.max_epochs=1", "compare_scratch=false", config_name="digits_transfer"
    )  # source + transfer
    with pytest.raises(RunStopped):
        train(THREE_CLASSES, "+callbacks.prune._target_=tests.helpers.PrunedAfterFirstEpoch")
    by_role: dict[str, list] = {}
    for run in runs():
        by_role.setdefault(run.data.tags["transferlab.role"], []).append(run)
    assert sorted((role, len(found)) for role, found in by_role.items()) == [
        ("finetune", 4),  # the plain run, 2 folds, the pruned run
        ("finetune-cv", 1),
        ("scratch", 1),
        ("source", 1),
        ("transfer", 1),
    ]
    pruned = next(r for r in by_role["finetune"] if r.info.status == "KILLED")
    assert pruned.data.tags["transferlab.pruned"] == "true"
    main = [*by_role["finetune-cv"], *by_role["transfer"]]
    main += [r for r in by_role["finetune"] if "mlflow.parentRunId" not in r.data.tags]
    finished = sorted(
        (r for r in main if r is not pruned), key=lambda r: r.data.metrics["test/loss"]
    )

    path = report.write_report(experiment, tmp_path, tracking_uri, metric="test/loss")
    text = path.read_text()
    assert "4 runs: 3 finished, 0 failed, 1 pruned" in text
    rows = tables(text)[RUNS]
    assert [r["run id"] for r in rows] == [r.info.run_id for r in [*finished, pruned]]
    assert [r["test/loss (objective)"] for r in rows] == [
        *(f"{r.data.metrics['test/loss']:.4f}" for r in finished),
        "",
    ]
    assert rows[3]["status"] == "PRUNED"
    assert SEEDS_TABLE not in text  # one seed: nothing to average
    assert (tmp_path / "val_curves.png").stat().st_size > 0


def test_bad_arguments_stop_with_one_clear_line(
    make_config, train, runs, experiment, tracking_uri, tmp_path, capsys
):
    def error(*args: str, uri: str = tracking_uri) -> str:
        with pytest.raises(SystemExit) as stopped:
            report.main([*args, "--out", str(tmp_path), "--tracking-uri", uri])
        assert stopped.value.code == 1
        (line,) = capsys.readouterr().err.splitlines()
        return line

    assert error("nope").startswith(f"error: 'nope' is no experiment or run id in {tracking_uri}")
    assert error("0" * 32).startswith("error: '00000000000000000000000000000000' is no experiment")
    missing = f"sqlite:///{tmp_path}/missing.db"
    assert error(experiment, uri=missing) == (
        f"error: no MLflow store at {missing}; pass --tracking-uri or set MLFLOW_TRACKING_URI"
    )
    assert not (tmp_path / "missing.db").exists()
    make_config()  # creates the experiment, with no run yet
    assert error(experiment) == (
        f"error: experiment {experiment!r} has no "
        "finetune, transfer, finetune-cv or transfer-cv runs"
    )
    train(THREE_CLASSES, "trainer.max_epochs=1")
    (run,) = runs()
    assert error(run.info.run_id) == (  # a run id, but no sweep's
        f"error: run {run.info.run_id} has no finetune, transfer, finetune-cv or transfer-cv "
        "child runs"
    )
    line = error(experiment, "--metric", "val/f1")
    assert line.startswith("error: no run logged 'val/f1'; use --metric with ")
    assert {"val/acc", "test/loss"} <= set(line.split("with ")[1].replace(" or", ",").split(", "))


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


def test_cost_columns_appear_where_runs_differ_in_what_they_train():
    """A PEFT study shows each method's trainable share and stored size; a sweep whose runs
    all train the same parameters does not repeat two constant columns."""
    from transferlab.report_study import RunRow, Study, metric_columns

    def study(shares: list[float | None]) -> Study:
        costs = ("model/params_trainable_pct", "model/adapter_size_mb")
        rows = [
            RunRow(
                str(i),
                "run",
                "FINISHED",
                {},
                {"test/acc": 0.5, **({} if share is None else dict.fromkeys(costs, share))},
                0.5,
            )
            for i, share in enumerate(shares)
        ]
        return Study("a study", "val/acc", False, rows, [])

    varying = ["test/acc", "model/params_trainable_pct", "model/adapter_size_mb"]
    assert metric_columns(study([100.0, 5.2, None])) == varying  # a run without them: skipped
    assert metric_columns(study([100.0, 100.0, None])) == ["test/acc"]
