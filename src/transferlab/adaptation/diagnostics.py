"""How far apart two domains' features are: the proxy A-distance as a number, and a 2-D
picture (PCA or t-SNE) of both domains before and after adaptation. Adaptation should move
both toward "indistinguishable"; these show whether it did, without any target label.

Also the pieces DEV (selection.py) shares: checked feature arrays and the domain classifier.
Light: numpy, torch and scikit-learn; matplotlib only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

Features = torch.Tensor | np.ndarray
METHODS = ("pca", "tsne")
MAX_POINTS = 1000  # per domain and panel: t-SNE of 2 x 1000 points takes ~20 s on 2 cores
COLOURS = {"source": "tab:blue", "target": "tab:orange"}


def as_values(name: str, values: Features, dims: int, min_rows: int = 2) -> np.ndarray:
    """`values` as float64 numpy, checked: `dims`-D, at least `min_rows` rows, all finite.
    The ValueError names the argument."""
    array = torch.as_tensor(values).detach().cpu().double().numpy()
    if array.ndim != dims:
        layout = "examples x features" if dims == 2 else "one value per example"
        raise ValueError(f"{name} must be {dims}-D ({layout}), got shape {tuple(array.shape)}")
    if len(array) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} examples, got {len(array)}")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf)")
    return array


def domain_pair(
    source_features: Features, target_features: Features, prefix: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Both domains' features checked (2-D, 2+ examples each, finite, equal widths)."""
    source = as_values(f"{prefix}source_features", source_features, 2)
    target = as_values(f"{prefix}target_features", target_features, 2)
    same_width(f"{prefix}target_features", target, f"{prefix}source_features", source)
    return source, target


def same_width(name: str, features: np.ndarray, reference: str, expected: np.ndarray) -> None:
    if features.shape[1] != expected.shape[1]:
        raise ValueError(
            f"{name} has {features.shape[1]} features per example but {reference} has "
            f"{expected.shape[1]}"
        )


def domain_classifier(source: np.ndarray, target: np.ndarray, seed: int) -> Pipeline:
    """A standardised logistic regression fitted to tell source (0) from target (1)."""
    features = np.concatenate([source, target])
    domains = np.r_[np.zeros(len(source)), np.ones(len(target))]
    # lbfgs's default 100 iterations stop short (with a warning) on well-separated domains
    regression = LogisticRegression(max_iter=1000, random_state=seed)
    classifier = make_pipeline(StandardScaler(), regression)
    return classifier.fit(features, domains)


def proxy_a_distance(source_features: Features, target_features: Features, seed: int = 0) -> float:
    """The proxy A-distance d_A = 2 (1 - 2 e) between two feature samples, in [0, 2].

    Ben-David, Blitzer, Crammer & Pereira 2007, "Analysis of Representations for Domain
    Adaptation" (NeurIPS); used by Ganin et al. 2016 (JMLR) to show DANN's features grow
    harder to tell apart. e is the held-out error of a linear classifier trained to tell the
    domains apart: 0 means it does no better than chance (the features are
    indistinguishable, which adaptation aims for), 2 that it never errs. The larger domain is
    subsampled to the smaller's size first, so that chance is an error of 0.5 (with unequal
    sizes, always guessing the larger domain would look like a distance); then each domain
    is split half to train, half to test. Seeded.
    """
    source, target = domain_pair(source_features, target_features)
    rng = np.random.default_rng(seed)
    size = min(len(source), len(target))
    source, target = (d[np.sort(rng.choice(len(d), size, replace=False))] for d in (source, target))
    features = np.concatenate([source, target])
    domains = np.r_[np.zeros(size), np.ones(size)]
    train_x, test_x, train_y, test_y = train_test_split(
        features, domains, test_size=0.5, stratify=domains, random_state=seed
    )
    classifier = domain_classifier(train_x[train_y == 0], train_x[train_y == 1], seed)
    error = 1 - classifier.score(test_x, test_y)
    return float(np.clip(2 * (1 - 2 * error), 0, 2))


def plot_domain_features(
    before: tuple[Features, Features],
    after: tuple[Features, Features],
    path: str | Path,
    method: str = "pca",
    seed: int = 0,
    labels: tuple[Sequence[int], Sequence[int]] | None = None,
) -> Path:
    """One PNG, two panels ("before adaptation", "after adaptation"): each a 2-D embedding
    (`method` "pca" or "tsne", fitted on that panel's source + target) of both domains, one
    colour per domain; with `labels` (source_labels, target_labels) each point is drawn as
    its class number, so one can see whether classes, not only domains, line up. At most
    1000 points per domain and panel (seeded; the same examples in both panels when the
    counts match)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    panels = {
        title: _panel(pair, title, seed, labels)
        for title, pair in (("before", before), ("after", after))
    }
    # report_plots reaches Hydra (through transferlab.errors): imported only to draw.
    from transferlab.report_plots import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 2, figsize=(11, 5))
    for ax, (title, domains) in zip(axes, panels.items(), strict=True):
        points = _embedding(np.concatenate([x for x, _ in domains.values()]), method, seed)
        start = 0
        for domain, (features, classes) in domains.items():
            _scatter(ax, points[start : start + len(features)], domain, classes)
            start += len(features)
        axis = "t-SNE" if method == "tsne" else "PC"
        ax.set(title=f"{title} adaptation", xlabel=f"{axis} 1", ylabel=f"{axis} 2")
        ax.legend(handles=[_legend_entry(pyplot(), d) for d in domains], loc="best")
    return save_figure(fig, Path(path))


def _panel(
    pair: tuple[Features, Features],
    title: str,
    seed: int,
    labels: tuple[Sequence[int], Sequence[int]] | None,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each domain's features (checked, at most MAX_POINTS kept, seeded) and their labels."""
    source, target = domain_pair(*pair, prefix=f"{title} ")
    domains = {"source": source, "target": target}
    classes = dict.fromkeys(domains) if labels is None else _checked_labels(labels, domains, title)
    rng = np.random.default_rng(seed)
    kept = {}
    for domain, features in domains.items():
        index = np.sort(rng.permutation(len(features))[:MAX_POINTS])
        kept[domain] = features[index], None if classes[domain] is None else classes[domain][index]
    return kept


def _checked_labels(
    labels: tuple[Sequence[int], Sequence[int]], domains: dict[str, np.ndarray], title: str
) -> dict[str, np.ndarray]:
    checked = {}
    for (domain, features), values in zip(domains.items(), labels, strict=True):
        array = np.asarray(values)
        if array.shape != (len(features),):
            raise ValueError(
                f"{domain} labels have shape {array.shape} but {title} {domain}_features has "
                f"{len(features)} examples"
            )
        checked[domain] = array
    return checked


def _embedding(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    perplexity = min(30.0, len(features) - 1.0)
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(features)


def _scatter(ax, points: np.ndarray, domain: str, labels: np.ndarray | None) -> None:
    """A domain's points in its colour: dots, or each point's class number."""
    colour = COLOURS[domain]
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.5, color=colour)
        return
    for label in np.unique(labels):
        mine = points[labels == label]
        ax.scatter(mine[:, 0], mine[:, 1], s=40, alpha=0.6, color=colour, marker=f"${label}$")


def _legend_entry(plt, domain: str):
    return plt.Line2D([], [], marker="o", linestyle="", color=COLOURS[domain], label=domain)
