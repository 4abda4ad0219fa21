"""Test-set artifacts: a confusion-matrix plot and a per-class report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
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
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(names))
    ax.set(
        xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="Test confusion matrix"
    )
    ax.set_xticklabels(names, rotation=90 if len(names) > 10 else 0)
    ax.set_yticklabels(names)
    if len(names) <= 20:
        threshold = matrix.max() / 2
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > threshold else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
