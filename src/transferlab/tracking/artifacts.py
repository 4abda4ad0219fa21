"""Test-set artifacts: a confusion-matrix plot and a per-class report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import classification_report, confusion_matrix


def write_test_artifacts(
    predictions: np.ndarray, targets: np.ndarray, class_names: list[str], folder: Path
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(range(len(class_names)))
    matrix = confusion_matrix(targets, predictions, labels=labels)
    plot = folder / "confusion_matrix.png"
    _plot_confusion_matrix(matrix, class_names, plot)
    report = folder / "per_class_report.txt"
    report.write_text(
        classification_report(
            targets, predictions, labels=labels, target_names=class_names, zero_division=0, digits=4
        )
    )
    return [plot, report]


def _plot_confusion_matrix(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """Drawn on a bare Figure (no pyplot state, safe in threads) with margins sized from the
    longest class name: tight_layout would cost as much again as the drawing, after every
    sweep trial."""
    size = max(4.0, 0.5 * len(names) + 2)
    longest = max(len(n) for n in names)
    margin_inches = 0.7 + 0.08 * longest
    margin = min(0.45, margin_inches / size)
    fig = Figure(figsize=(size, size))
    fig.subplots_adjust(left=margin, bottom=margin, right=0.97, top=0.92)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(names))
    ax.set(
        xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="Test confusion matrix"
    )
    ax.set_xticklabels(names, rotation=90 if len(names) > 10 or longest > 3 else 0)
    ax.set_yticklabels(names)
    if len(names) <= 20:
        threshold = matrix.max() / 2
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > threshold else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.savefig(path, dpi=100)
