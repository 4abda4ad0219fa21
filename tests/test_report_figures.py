"""The study's figure (issue 18) on runs the pipeline made: a real multirun, 2 label budgets
x 2 freeze strategies x 2 seeds, each with its scratch baseline. The numbers each figure
plots (the series the plotting function returns, not pixels) are checked against means and
stds computed here from the runs MLflow holds; the page opens in headless Chromium."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from transferlab import report
from transferlab.errors import UserError
from transferlab.report_figures import FigureSpec, Series, label_columns
from transferlab.report_plots import write_plots
from transferlab.report_study import build_study, select_runs

TPC = "dataset.task.train_per_class"
BUDGETS = (2, 4)
FREEZES = ("none", "linear_probe")
SWEPT = [
    f"{TPC}={','.join(map(str, BUDGETS))}",
    f"freeze={','.join(FREEZES)}",
    "seed=0,1",
    "compare_scratch=true",
    "dataset.task.classes=[0,1,2]",
    # enough steps to learn something (2 epochs of 8 images stay at chance): results differ
    "trainer.max_epochs=4",
    "scratch.trainer.max_epochs=4",
    "loader.epoch_samples=48",
    "loader.batch_size=8",
]


@pytest.fixture
def study_parent(multirun, runs) -> str:
    assert multirun(*SWEPT) == 0
    (parent,) = [r for r in runs() if r.data.tags["transferlab.role"] == "sweep"]
    return parent.info.run_id


def jobs(client: MlflowClient, parent: str) -> list:
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    return [r for r in children if r.data.tags["transferlab.role"] == "finetune"]


def expected(runs: list, metric: str, *keys: str) -> dict[tuple[str, ...], tuple]:
    """(values of `keys`) -> (mean, sample std, n) of `metric` over the runs' seeds."""
    grouped: dict[tuple[str, ...], list[float]] = {}
    for run in runs:
        setting = tuple(run.data.params[k] for k in keys)
        grouped.setdefault(setting, []).append(run.data.metrics[metric])
    return {k: (np.mean(v), np.std(v, ddof=1), len(v)) for k, v in grouped.items()}


def plotted(series: Series) -> dict:
    return {p.x: (p.mean, p.std, p.n) for p in series.points}


def test_a_real_study_s_figures_hold_its_means_stds_and_baselines(
    study_parent, client, tracking_uri, tmp_path
):
    """One sweep for both kinds of figure: each job trains twice (with its scratch model)."""
    check_the_learning_curve(study_parent, client, tracking_uri, tmp_path / "curve")
    check_the_bars(study_parent, client, tracking_uri, tmp_path / "bars")


def check_the_learning_curve(study_parent, client, tracking_uri, folder) -> None:
    """Method and scratch along the swept budget, each point the mean ± std of its seeds."""
    folder.mkdir()
    finished = jobs(client, study_parent)
    assert len(finished) == 8 and {r.info.status for r in finished} == {"FINISHED"}
    title, selected, _ = select_runs(client, study_parent)
    study = build_study(title, selected)
    drawn = write_plots(client, study, folder)  # the declaration the runs logged: defaults
    curve, epochs = (figure.data for figure in drawn)
    assert curve.kind == "curve" and curve.x_label == TPC and curve.log_x is False  # 2..4
    assert curve.y_label == "test/acc (fraction correct)"
    assert curve.title == f"Does transfer beat training from scratch as {TPC} grows?"
    by_label = {s.label: s for s in curve.series}
    assert sorted(by_label) == sorted(
        [f"fine-tune {f}" for f in FREEZES] + [f"scratch {f}" for f in FREEZES]
    )
    for metric, method in (("test/acc", "fine-tune"), ("scratch/test/acc", "scratch")):
        want = expected(finished, metric, "freeze", TPC)
        for freeze in FREEZES:
            series = by_label[f"{method} {freeze}"]
            assert series.baseline is (method == "scratch")
            got = plotted(series)
            assert list(got) == [float(b) for b in BUDGETS]  # in order along x
            for budget in BUDGETS:
                mean, std, n = want[(freeze, str(budget))]
                assert got[float(budget)] == pytest.approx((mean, std, n)), (metric, freeze)
    assert "n = 2" in curve.caption

    # validation accuracy per epoch: one line per setting (freeze, budget), seeds averaged
    assert len(epochs.series) == 4
    for series in epochs.series:
        rows = [
            r
            for r in finished
            if series.label == f"freeze={r.data.params['freeze']} tpc={r.data.params[TPC]}"
        ]
        assert len(rows) == 2, series.label
        histories = [client.get_metric_history(r.info.run_id, "val/acc") for r in rows]
        first = [h for h in (sorted(h, key=lambda m: m.step)[0] for h in histories)]
        assert first[0].step == first[1].step == series.points[0].x
        assert series.points[0].mean == pytest.approx(np.mean([m.value for m in first]))

    for figure in drawn:
        png, svg = figure.files
        assert png.suffix == ".png" and svg.suffix == ".svg"
        assert 0 < png.stat().st_size < 200_000 and svg.read_text().lstrip().startswith("<?xml")

    # the sweep's own report, at its end, on its parent run: page, figures, tables
    logged = {a.path for a in client.list_artifacts(study_parent, "report")}
    assert {
        "report/report.md",
        "report/report.html",
        "report/figure.png",
        "report/figure.svg",
        "report/val_curves.png",
    } <= logged
    text = report.write_report(study_parent, folder / "again", tracking_uri).read_text()
    assert "![Does transfer beat training from scratch" in text and "(figure.png)" in text


def check_the_bars(study_parent, client, tracking_uri, folder) -> None:
    """A bar per setting, best first, the declared baseline marked, its cost beside it."""
    folder.mkdir()
    finished = jobs(client, study_parent)
    title, selected, _ = select_runs(client, study_parent)
    study = build_study(title, selected)
    spec = FigureSpec(kind="bars", compare={"freeze": "linear_probe"})
    bars, _ = (figure.data for figure in write_plots(client, study, folder, spec))
    assert bars.kind == "bars" and bars.cost_label.startswith("model/params_trainable_pct")
    means = [s.points[0].mean for s in bars.series]
    assert means == sorted(means, reverse=True)  # best at the top
    want = expected(finished, "test/acc", TPC, "freeze")
    cost = expected(finished, "model/params_trainable_pct", TPC, "freeze")
    assert sorted(s.label for s in bars.series) == sorted(
        f"freeze={f} tpc={b}" for b in BUDGETS for f in FREEZES
    )
    costs = {s.label: s.points[0] for s in bars.cost}
    for series in bars.series:
        freeze, budget = (part.split("=")[1] for part in series.label.split())
        assert plotted(series)[series.label] == pytest.approx(want[(budget, freeze)])
        assert series.baseline is (freeze == "linear_probe")
        assert series.colour_key == f"freeze={freeze}"  # one colour per choice, across bars
        mean, _, n = cost[(budget, freeze)]
        assert (costs[series.label].mean, costs[series.label].n) == pytest.approx((mean, n))
    probe = next(s for s in bars.series if s.baseline)
    assert costs[probe.label].mean < 50 < costs["freeze=none tpc=2"].mean  # frozen backbone

    with pytest.raises(UserError, match=r"report.compare=\{'freeze': 'lora'\} matches no"):
        write_plots(client, study, folder, FigureSpec(kind="bars", compare={"freeze": "lora"}))
    # a sweep's own report (strict=False): the rest of the report, without that figure
    lenient = folder / "lenient"
    report.write_report(
        study_parent, lenient, tracking_uri, None, {"compare": "freeze=lora"}, False
    )
    assert (lenient / "val_curves.png").exists() and not (lenient / "figure.png").exists()
    with pytest.raises(UserError, match=r"report\.x=seed: not a number the runs vary in; they"):
        write_plots(client, study, folder, FigureSpec(x="seed"))


def test_a_label_names_a_setting_by_the_fewest_keys_that_tell_settings_apart():
    from transferlab.report_study import RunRow, Study

    def row(**params: str) -> RunRow:
        return RunRow("id", "run", "FINISHED", params, {}, 0.5)

    rows = [  # a domain-adaptation study: dataset and adapt follow from domain_method
        row(dataset="printed", adapt="none", domain_method="source_only", seed="1"),
        row(dataset="printed", adapt="dann", domain_method="dann", seed="1"),
        row(dataset="digits", adapt="none", domain_method="target_supervised", seed="1"),
    ]
    columns = ["dataset", "adapt", "domain_method", "seed"]
    assert label_columns(Study("s", "val/acc", False, rows, columns)) == ["domain_method"]


def test_the_html_report_opens_in_chromium_sorts_its_tables_and_shows_its_figures(
    chromium, train, experiment, tracking_uri, tmp_path
):
    from playwright.sync_api import sync_playwright

    from tests.helpers import CHROMIUM_ARGS

    for freeze in FREEZES:
        for seed in ("0", "1"):
            train("dataset.task.classes=[0,1,2]", f"freeze={freeze}", f"seed={seed}")
    page_path = report.write_report(experiment, tmp_path, tracking_uri).with_name("report.html")
    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requested.append(r.url))
        page.goto(page_path.as_uri())
        figures = page.locator("figure svg")
        assert figures.count() == 2
        for i in range(2):
            box = figures.nth(i).bounding_box()
            assert box["width"] > 300 and box["height"] > 150
        table = page.locator("table").first
        column = table.locator("th").all_inner_texts().index("test/acc")
        table.locator("th").nth(column).click()
        cells = table.locator(f"tbody tr td:nth-child({column + 1})").all_inner_texts()
        assert [float(c) for c in cells] == sorted(float(c) for c in cells)
        table.locator("th").nth(column).click()
        cells = table.locator(f"tbody tr td:nth-child({column + 1})").all_inner_texts()
        assert [float(c) for c in cells] == sorted((float(c) for c in cells), reverse=True)
        browser.close()
    assert errors == []
    assert requested == [page_path.as_uri()]  # self-contained: nothing else fetched
