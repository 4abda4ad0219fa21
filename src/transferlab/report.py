"""`python -m transferlab.report NAME_OR_RUN_ID --out DIR` (console script
`transferlab-report`): a study's results on one page, read back from MLflow.

The argument is a sweep's parent run id (its child runs are reported) or an experiment name
(its finetune / transfer runs). DIR gets report.md (every run, best first, then mean ± std
over seeds) and PNG plots; a sweep's report is also logged to its parent run under report/,
so it stays with the runs it describes.

mlflow and matplotlib are imported only to write a report: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.errors import UserError, exits_on_user_error, one_of
from transferlab.objective import (
    GROUPS,
    changes_result,
    lower_is_better,
    objective_value,
    overrides_as_params,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

MAIN_ROLES = ("finetune", "transfer", "finetune-cv", "transfer-cv")
FAILED_JOB_ROLE = "failed-job"  # see transferlab.tracking.sweep.record_failed_job
# A param that follows from a group choice (`role` from `source`): never shown as swept.
# Neither are the keys that cannot change a result (objective.changes_result).
DERIVED_PARAMS = ("role",)
DEFAULT_METRIC = "val/acc"
FINAL_METRICS = ("test/acc", "test/loss", "scratch/test/acc")
MAIN_STATUSES = ("FINISHED", "FAILED", "PRUNED")
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class RunRow:
    """One selected run, reduced to what the report shows."""

    run_id: str
    name: str
    status: str  # an MLflow status, or PRUNED for a pruned Optuna trial
    params: dict[str, str]
    metrics: dict[str, float]
    objective: float | None


@dataclass
class Study:
    """The selected runs (best first) and what tells them apart."""

    title: str
    metric: str
    lower_is_better: bool
    rows: list[RunRow]
    columns: list[str]  # the group choices, then the params, that vary across the runs


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with exits_on_user_error():
        print(write_report(args.target, args.out, args.tracking_uri, args.metric))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab-report",
        description="Summarise a sweep (its parent run id) or an experiment (its name) "
        "from MLflow: report.md with tables of runs and PNG plots.",
    )
    parser.add_argument("target", metavar="NAME_OR_RUN_ID", help="experiment name or run id")
    parser.add_argument("--out", required=True, help="folder for report.md and the plots")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--metric", help="objective to rank by (default: the runs' optimize_metric)"
    )
    return parser


def write_report(
    target: str, out: str | Path, tracking_uri: str | None = None, metric: str | None = None
) -> Path:
    """Writes DIR/report.md and the plots; returns the path of report.md."""
    from mlflow.tracking import MlflowClient

    from transferlab.tracking.store import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    _check_store(uri)
    client = MlflowClient(uri)
    title, runs, parent_id = select_runs(client, target)
    study = build_study(title, runs, metric)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.md"
    report.write_text(render_markdown(study))
    written = [report, *write_plots(client, study, folder)]
    if parent_id is not None:
        for path in written:
            client.log_artifact(parent_id, str(path), "report")
    return report


# --- selecting runs --------------------------------------------------------------------


def select_runs(client: MlflowClient, target: str) -> tuple[str, list[Run], str | None]:
    """A parent run's children, else an experiment's main runs: (title, runs, parent id)."""
    parent = _existing_run(client, target)
    if parent is not None:
        children = f"tags.`mlflow.parentRunId` = '{target}'"
        runs = _main_runs(_search(client, parent.info.experiment_id, children))
        if not runs:
            raise UserError(f"run {target} has no {one_of(MAIN_ROLES)} child runs")
        return f"{parent.info.run_name} (run {target})", runs, target
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(
            f"{target!r} is no experiment or run id in {client.tracking_uri}; "
            f"experiments: {one_of(names)}"
        )
    runs = _main_runs(_search(client, experiment.experiment_id))
    if not runs:
        raise UserError(f"experiment {target!r} has no {one_of(MAIN_ROLES)} runs")
    return f"experiment {target}", runs, None


def _check_store(uri: str) -> None:
    """A report only reads: a missing sqlite file is a wrong folder or URI, not a new store."""
    path = uri.removeprefix("sqlite:///")
    if path != uri and not Path(path).is_file():
        raise UserError(f"no MLflow store at {uri}; pass --tracking-uri or set MLFLOW_TRACKING_URI")


def _existing_run(client: MlflowClient, target: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    if not RUN_ID.fullmatch(target):
        return None
    try:
        return client.get_run(target)
    except MlflowException:
        return None  # not a run: may still be an experiment's name


def _search(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every matching run: search_runs returns pages of at most 1000."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _main_runs(runs: list[Run]) -> list[Run]:
    """Finetune / transfer runs and k-fold parents, without the folds under those parents;
    also the record of a sweep job that failed before its run existed (role failed-job)."""
    roles = {r.info.run_id: r.data.tags.get("transferlab.role", "") for r in runs}
    folded = {run_id for run_id, role in roles.items() if role.endswith("-cv")}
    return [
        r
        for r in runs
        if roles[r.info.run_id] in (*MAIN_ROLES, FAILED_JOB_ROLE)
        and r.data.tags.get("mlflow.parentRunId") not in folded
    ]


# --- the study -------------------------------------------------------------------------


def build_study(title: str, runs: list[Run], metric: str | None = None) -> Study:
    metric = metric or _optimize_metric(runs)
    lower = lower_is_better(metric)
    rows = [_row(run, metric) for run in runs]
    if all(row.objective is None for row in rows):
        logged = sorted({key for row in rows for key in row.metrics})
        hint = f"; use --metric with {one_of(logged)}" if logged else ""
        raise UserError(f"no run logged {metric!r}{hint}")
    rows.sort(key=lambda row: _rank(row.status, row.objective, lower))
    return Study(title, metric, lower, rows, varying_columns(rows))


def _optimize_metric(runs: list[Run]) -> str:
    names = {r.data.params.get("optimize_metric", DEFAULT_METRIC) for r in runs}
    if len(names) > 1:
        raise UserError(f"the runs optimize {one_of(sorted(names))}; pick one with --metric")
    return names.pop()


def _row(run: Run, metric: str) -> RunRow:
    overrides = run.data.tags.get("transferlab.overrides", "").split()
    params = dict(run.data.params) or overrides_as_params(overrides)
    if "transferlab.source_run_id" in run.data.tags:
        # The pipeline points it at the source run's weights, downloaded anew for every run.
        params.pop("backbone.weights_path", None)
    pruned = run.data.tags.get("transferlab.pruned") == "true"
    metrics = dict(run.data.metrics)
    return RunRow(
        run.info.run_id,
        run.info.run_name,
        "PRUNED" if pruned else run.info.status,
        params,
        metrics,
        objective_value(metrics, metric),
    )


def _rank(status: str, value: float | None, lower: bool) -> tuple[bool, bool, float]:
    """Sort key: finished runs first, best objective first; runs without one last."""
    score = 0.0 if value is None else (value if lower else -value)
    return status != "FINISHED", value is None, score


def varying_columns(rows: list[RunRow]) -> list[str]:
    """The group choices that vary, then the params that were swept: those that vary and
    can change a result and are not fixed by their group's choice (`freeze.name` by `freeze`)."""
    choices = [group for group in GROUPS if _varies(rows, group)]
    keys = {key for row in rows for key in row.params} - set(GROUPS)
    swept = [
        key
        for key in sorted(keys)
        if key not in DERIVED_PARAMS
        and changes_result(key)
        and _varies(rows, key)
        and not _fixed_by_choice(rows, key)
    ]
    return choices + swept


def _varies(rows: list[RunRow], key: str) -> bool:
    return len({row.params[key] for row in rows if key in row.params}) > 1


def _fixed_by_choice(rows: list[RunRow], key: str) -> bool:
    group = key.split(".")[0]
    if group not in GROUPS:
        return False
    values: dict[str | None, set[str]] = {}
    for row in rows:
        if key in row.params:
            values.setdefault(row.params.get(group), set()).add(row.params[key])
    return all(len(v) == 1 for v in values.values())


def metric_columns(study: Study) -> list[str]:
    """The final metrics shown beside the objective, where any run logged them."""
    return [
        m
        for m in FINAL_METRICS
        if m != study.metric and any(m in row.metrics for row in study.rows)
    ]


def seed_groups(study: Study) -> list[tuple[tuple[str, ...], list[RunRow]]]:
    """Finished runs that differ only in `seed`, keyed by their other varying values;
    best mean objective first."""
    keys = [c for c in study.columns if c != "seed"]
    groups: dict[tuple[str, ...], list[RunRow]] = {}
    for row in study.rows:
        if row.status == "FINISHED":
            groups.setdefault(tuple(row.params.get(k, "") for k in keys), []).append(row)
    means = {key: _mean([r.objective for r in rows]) for key, rows in groups.items()}
    order = sorted(groups, key=lambda key: _rank("FINISHED", means[key], study.lower_is_better))
    return [(key, groups[key]) for key in order]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


# --- report.md -------------------------------------------------------------------------


def render_markdown(study: Study) -> str:
    lines = [
        f"# Report: {study.title}",
        "",
        _counts(study.rows),
        "",
        f"Objective: `{study.metric}` (its checkpointed best where logged; "
        f"{'lower' if study.lower_is_better else 'higher'} is better).",
        "",
        "## Runs (best first)",
        "",
        *_runs_table(study),
    ]
    if "seed" in study.columns:
        lines += ["", "## Mean ± std over seeds (best first)", "", *_seeds_table(study)]
    return "\n".join(lines) + "\n"


def _counts(rows: list[RunRow]) -> str:
    counts = Counter(row.status for row in rows)
    shown = [*MAIN_STATUSES, *sorted(set(counts) - set(MAIN_STATUSES))]
    return f"{len(rows)} runs: " + ", ".join(f"{counts[s]} {s.lower()}" for s in shown)


def _runs_table(study: Study) -> list[str]:
    metrics = metric_columns(study)
    header = ["run", "run id", "status", *study.columns, f"{study.metric} (objective)", *metrics]
    body = [
        [
            row.name,
            row.run_id,
            row.status,
            *(row.params.get(c, "") for c in study.columns),
            format_number(row.objective),
            *(format_number(row.metrics.get(m)) for m in metrics),
        ]
        for row in study.rows
    ]
    return markdown_table(header, body)


def _seeds_table(study: Study) -> list[str]:
    keys = [c for c in study.columns if c != "seed"]
    metrics = metric_columns(study)
    header = [*keys, "n", f"{study.metric} (objective)", *metrics]
    body = [
        [
            *values,
            str(len(rows)),
            format_mean_std([r.objective for r in rows]),
            *(format_mean_std([r.metrics.get(m) for r in rows]) for m in metrics),
        ]
        for values, rows in seed_groups(study)
    ]
    return markdown_table(header, body)


def format_number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def format_mean_std(values: list[float | None]) -> str:
    """Mean ± sample standard deviation (the mean alone for a single value)."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return format_number(_mean(present))
    return f"{statistics.mean(present):.4f} ± {statistics.stdev(present):.4f}"


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(cells) for cells in body)]


# --- plots -----------------------------------------------------------------------------


def write_plots(client: MlflowClient, study: Study, folder: Path) -> list[Path]:
    """Objective against each swept number, validation curves, and the objective per value
    of each categorical choice; a plot with nothing to show is not written."""
    numeric = [c for c in study.columns if c not in GROUPS and c != "seed" and _numeric(study, c)]
    categorical = [c for c in study.columns if c != "seed" and c not in numeric]
    plots = [plot_objective_vs(study, key, folder) for key in numeric]
    plots.append(plot_val_curves(client, study, folder))
    plots += [plot_choices(study, key, folder) for key in categorical]
    return [path for path in plots if path is not None]


def _numeric(study: Study, key: str) -> bool:
    return all(_as_float(row.params[key]) is not None for row in study.rows if key in row.params)


def _as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _scored(study: Study, key: str) -> list[tuple[str, float]]:
    """(value of `key`, objective) of each finished run that has both."""
    return [
        (row.params[key], row.objective)
        for row in study.rows
        if row.status == "FINISHED" and row.objective is not None and key in row.params
    ]


def plot_objective_vs(study: Study, key: str, folder: Path) -> Path | None:
    points = [(float(value), score) for value, score in _scored(study, key)]
    if not points:
        return None
    fig, ax = _pyplot().subplots(figsize=(5, 4))
    by_value = _by_value(points)
    xs = list(by_value)
    ax.scatter(*zip(*points, strict=True), alpha=0.7, label="runs")
    ax.plot(xs, [statistics.mean(v) for v in by_value.values()], "o-", label="mean")
    if min(xs) > 0 and max(xs) / min(xs) > 100:  # over 2 decades
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=study.metric, title=f"{study.metric} vs {key}")
    ax.legend()
    return _save(fig, folder / f"objective_vs_{key}.png")


def plot_val_curves(client: MlflowClient, study: Study, folder: Path) -> Path | None:
    curves = {row.run_id: client.get_metric_history(row.run_id, "val/acc") for row in study.rows}
    if not any(curves.values()):
        return None
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for row in study.rows:
        history = sorted(curves[row.run_id], key=lambda m: m.step)
        if history:
            steps, values = [m.step for m in history], [m.value for m in history]
            ax.plot(steps, values, marker=".", label=_label(row, study.columns))
    ax.set(xlabel="epoch", ylabel="val/acc", title="Validation accuracy per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(ax.lines) <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize="small")
    return _save(fig, folder / "val_curves.png")


def plot_choices(study: Study, key: str, folder: Path) -> Path | None:
    """Mean ± std of the objective per value: written when at least two values scored."""
    by_value = _by_value(_scored(study, key))
    if len(by_value) < 2:
        return None
    means = [statistics.mean(v) for v in by_value.values()]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in by_value.values()]
    fig, ax = _pyplot().subplots(figsize=(max(4.0, 0.8 * len(by_value) + 2), 4))
    ax.bar([str(v) for v in by_value], means, yerr=stds, capsize=4)
    ax.set(xlabel=key, ylabel=study.metric, title=f"{study.metric} by {key} (mean ± std)")
    ax.tick_params(axis="x", labelrotation=30 if len(by_value) > 4 else 0)
    return _save(fig, folder / f"choices_{key}.png")


def _by_value(points: list[tuple]) -> dict:
    """Objectives grouped by value, values in order."""
    grouped: dict = {}
    for value, score in sorted(points):
        grouped.setdefault(value, []).append(score)
    return grouped


def _label(row: RunRow, columns: list[str]) -> str:
    return " ".join(f"{c}={row.params.get(c, '')}" for c in columns) or row.name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


if __name__ == "__main__":
    main()
