"""The report's PNG plots: the objective against each swept number, validation curves,
and the objective per value of each categorical choice. matplotlib is imported only when
a plot is drawn.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.objective import GROUPS
from transferlab.report_study import RunRow, Study

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


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
    fig, ax = pyplot().subplots(figsize=(5, 4))
    by_value = _by_value(points)
    xs = list(by_value)
    ax.scatter(*zip(*points, strict=True), alpha=0.7, label="runs")
    ax.plot(xs, [statistics.mean(v) for v in by_value.values()], "o-", label="mean")
    if min(xs) > 0 and max(xs) / min(xs) > 100:  # over 2 decades
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=study.metric, title=f"{study.metric} vs {key}")
    ax.legend()
    return save_figure(fig, folder / f"objective_vs_{key}.png")


def plot_val_curves(client: MlflowClient, study: Study, folder: Path) -> Path | None:
    curves = {row.run_id: client.get_metric_history(row.run_id, "val/acc") for row in study.rows}
    if not any(curves.values()):
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for row in study.rows:
        history = sorted(curves[row.run_id], key=lambda m: m.step)
        if history:
            steps, values = [m.step for m in history], [m.value for m in history]
            ax.plot(steps, values, marker=".", label=_label(row, study.columns))
    ax.set(xlabel="epoch", ylabel="val/acc", title="Validation accuracy per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(ax.lines) <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize="small")
    return save_figure(fig, folder / "val_curves.png")


def plot_choices(study: Study, key: str, folder: Path) -> Path | None:
    """Mean ± std of the objective per value: written when at least two values scored."""
    by_value = _by_value(_scored(study, key))
    if len(by_value) < 2:
        return None
    means = [statistics.mean(v) for v in by_value.values()]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in by_value.values()]
    fig, ax = pyplot().subplots(figsize=(max(4.0, 0.8 * len(by_value) + 2), 4))
    ax.bar([str(v) for v in by_value], means, yerr=stds, capsize=4)
    ax.set(xlabel=key, ylabel=study.metric, title=f"{study.metric} by {key} (mean ± std)")
    ax.tick_params(axis="x", labelrotation=30 if len(by_value) > 4 else 0)
    return save_figure(fig, folder / f"choices_{key}.png")


def _by_value(points: list[tuple]) -> dict:
    """Objectives grouped by value, values in order."""
    grouped: dict = {}
    for value, score in sorted(points):
        grouped.setdefault(value, []).append(score)
    return grouped


def _label(row: RunRow, columns: list[str]) -> str:
    return " ".join(f"{c}={row.params.get(c, '')}" for c in columns) or row.name


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
