"""Draws a report's figures (report_figures computes what they show): each as a 150 dpi PNG
and an SVG, the legend outside the axes, the Okabe-Ito colour-blind-safe palette with one
colour per choice across every figure of a report, the baseline grey and dashed or hatched.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.errors import UserError
from transferlab.report_figures import (
    FigureData,
    FigureSpec,
    Series,
    study_figure,
    study_spec,
    val_curves,
)
from transferlab.report_study import Study

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# Okabe & Ito (2008): told apart under every common colour-vision deficiency; yellow last,
# the faintest on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
BASELINE_COLOUR = "#7f7f7f"
DPI = 150
PNG_COLOURS = 128
LEGEND_COLUMN_CHARS = 40  # longer legend labels: one column
DODGE = 0.012  # a curve's series drawn this share of the x axis apart
SEED_ALPHA = 0.35  # single seeds: faint beside their mean


@dataclass(frozen=True)
class DrawnFigure:
    """A figure as drawn: its numbers, and its files (PNG first)."""

    data: FigureData
    files: tuple[Path, ...]


class Palette:
    """One colour per choice across a report's figures, in the order first drawn; past
    eight choices the colours repeat (a bar's label still names its setting)."""

    def __init__(self) -> None:
        self._colours: dict[str, str] = {}

    def colour(self, series: Series) -> str:
        if series.baseline:
            return BASELINE_COLOUR
        key = series.colour_key or series.label
        if key not in self._colours:
            self._colours[key] = PALETTE[len(self._colours) % len(PALETTE)]
        return self._colours[key]


def write_plots(
    client: MlflowClient,
    study: Study,
    folder: Path,
    spec: FigureSpec | None = None,
    strict: bool = True,
) -> list[DrawnFigure]:
    """The study's figure (as its runs declare it, or `spec`) and its validation curves.
    A figure the runs cannot give (its baseline's runs all failed) is an error, or with
    `strict=False` (a sweep's own report, after hours of jobs) a warning and no figure."""
    palette = Palette()
    figures = []
    try:
        figures.append(study_figure(study, spec or study_spec(study)))
    except UserError as error:
        if strict:
            raise
        logging.getLogger(__name__).warning("the study's figure is not drawn: %s", error)
    histories = {
        row.run_id: [(m.step, m.value) for m in client.get_metric_history(row.run_id, "val/acc")]
        for row in study.rows
        if row.status == "FINISHED"
    }
    epochs = val_curves(study, histories)
    if epochs.series:
        figures.append(epochs)
    return [DrawnFigure(figure, draw(figure, folder, palette)) for figure in figures]


def draw(figure: FigureData, folder: Path, palette: Palette) -> tuple[Path, ...]:
    drawn = _draw_bars if figure.kind == "bars" else _draw_lines
    fig = drawn(figure, palette)
    return save_png_and_svg(fig, folder / figure.name)


def _draw_lines(figure: FigureData, palette: Palette):
    """A curve (error bars at each x) or the validation curves (a ± std band)."""
    labels = [_legend_label(series) for series in figure.series]
    columns = 1 if max(len(label) for label in labels) > LEGEND_COLUMN_CHARS else 2
    legend_rows = math.ceil(len(labels) / columns)  # under the axes: the title keeps its width
    size = (6.4, 4.0 + 0.2 * legend_rows)
    fig, ax = pyplot().subplots(figsize=size, layout="constrained")
    for index, (series, label) in enumerate(zip(figure.series, labels, strict=True)):
        colour = palette.colour(series)
        xs = [p.x for p in series.points]
        if figure.kind == "curve":
            xs = _dodged(xs, index, figure)
        means = [p.mean for p in series.points]
        stds = [p.std for p in series.points]
        style = "--" if series.baseline else "-"
        if figure.kind == "curve":
            ax.errorbar(xs, means, yerr=stds, fmt="o" + style, color=colour, capsize=4, label=label)
            for x, point in zip(xs, series.points, strict=True):
                ax.scatter(
                    [x] * point.n,
                    point.values,
                    s=12,
                    color=colour,
                    alpha=SEED_ALPHA,
                    linewidths=0,
                )
        else:
            ax.plot(xs, means, style, color=colour, label=label)
            lows = [m - s for m, s in zip(means, stds, strict=True)]
            highs = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.15, linewidth=0)
    if figure.kind == "curve":  # ticks at the values swept
        if figure.log_x:
            ax.set_xscale("log")
        ticks = sorted({p.x for s in figure.series for p in s.points})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel=figure.x_label, ylabel=figure.y_label)
    ax.set_title(figure.title)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=columns, frameon=False, fontsize="small")
    return fig


def _legend_label(series: Series) -> str:
    n = max(p.n for p in series.points)
    return f"{series.label}{' (baseline)' * series.baseline} (n={n})"


def _dodged(xs: list, index: int, figure: FigureData) -> list[float]:
    """A curve's x values drawn a little aside per series (DODGE of the axis per step), so
    that error bars at the same x do not hide each other; the data keep the true x."""
    shift = DODGE * (index - (len(figure.series) - 1) / 2)
    if figure.log_x:
        return [x * 10 ** (shift * _decades(figure)) for x in xs]
    every = [p.x for s in figure.series for p in s.points]
    return [x + shift * (max(every) - min(every) or 1.0) for x in xs]


def _decades(figure: FigureData) -> float:
    every = [p.x for s in figure.series for p in s.points]
    return math.log10(max(every) / min(every)) or 1.0


def _draw_bars(figure: FigureData, palette: Palette):
    """Horizontal bars, best at the top, with error bars and the seeds as dots; the cost
    of each setting in a second panel on the same rows."""
    count = len(figure.series)
    panels = 2 if figure.cost else 1
    fig, axes = pyplot().subplots(
        1,
        panels,
        figsize=(_label_inches(figure.series) + 4.5 + 2.5 * (panels - 1), 1.3 + 0.26 * count),
        layout="constrained",
        sharey=True,
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 1.4][:panels]},
    )
    rows = {series.label: count - 1 - i for i, series in enumerate(figure.series)}
    _bar_panel(axes[0][0], figure.series, rows, palette)
    baseline = next((s for s in figure.series if s.baseline), None)
    if baseline is not None:  # the best baseline's mean, across every bar
        line = axes[0][0].axvline(
            baseline.points[0].mean,
            color=BASELINE_COLOUR,
            linestyle="--",
            linewidth=1,
            label=f"baseline: {baseline.label}",
        )
        fig.legend(handles=[line], loc="outside lower center", frameon=False, fontsize="small")
    axes[0][0].set_yticks(
        list(rows.values()), [f"{s.label} (n={s.points[0].n})" for s in figure.series]
    )
    axes[0][0].set(
        xlabel=figure.x_label, ylabel=figure.y_label, title=figure.title if panels == 1 else None
    )
    if panels == 2:
        _bar_panel(axes[0][1], figure.cost, rows, palette)
        axes[0][1].set(xlabel=figure.cost_label)
        fig.suptitle(figure.title)
    return fig


def _label_inches(bars: tuple[Series, ...]) -> float:
    """Room for the longest bar label at the default 10 pt (about 0.075 in a character)."""
    return 0.075 * max(len(f"{s.label} (n=0)") for s in bars)


def _bar_panel(ax, bars: tuple[Series, ...], rows: dict[str, int], palette: Palette) -> None:
    for series in bars:
        point = series.points[0]
        row = rows[series.label]
        colour = palette.colour(series)
        ax.barh(
            row,
            point.mean,
            xerr=point.std,
            color=colour,
            alpha=0.85,
            capsize=3,
            hatch="//" if series.baseline else None,
            edgecolor="white",
        )
        ax.scatter(
            point.values,
            [row] * point.n,
            s=10,
            color="black",
            alpha=SEED_ALPHA,
            linewidths=0,
            zorder=3,
        )
    ax.grid(axis="x", alpha=0.3)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "transferlab"  # the same SVG for the same figure
    return plt


def save_figure(fig, path: Path) -> Path:
    """One file (a PNG at 150 dpi; what `path` ends in), the legend outside the axes kept
    in it; closes the figure."""
    _write(fig, path)
    pyplot().close(fig)
    return path


def save_png_and_svg(fig, stem: Path) -> tuple[Path, ...]:
    """`stem`.png and `stem`.svg (for a page that scales it); closes the figure."""
    paths = (stem.with_suffix(".png"), stem.with_suffix(".svg"))
    for path in paths:
        _write(fig, path)
    pyplot().close(fig)
    return paths


def _write(fig, path: Path) -> None:
    if path.suffix != ".png":
        fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Date": None})  # reproducible
        return
    from PIL import Image

    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=DPI, bbox_inches="tight")
    # a chart's few flat colours in a palette of PNG_COLOURS: a third of the bytes, the same look
    image = Image.open(drawn).convert("RGB").quantize(PNG_COLOURS, Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True, dpi=(DPI, DPI))
