"""Carving a task out of a dataset: held-out splits, a subset of classes, few labels.

Done the same way for every dataset, with its own seed, so the split never moves when the
training seed does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from transferlab.data.datasets import DatasetParts, LabelledImages
from transferlab.errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """`dataset.task`, typed: what carves the task out of the data source (its fields are
    the node's keys; validation accepts these and no others)."""

    classes: list | None = None
    train_per_class: int | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    label_noise: float = 0.0


@dataclass
class TaskSplits:
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages
    class_names: list[str]


@dataclass(frozen=True)
class Fold:
    """One fold of k-fold cross-validation over train+val (the test split is untouched)."""

    index: int
    count: int


def carve_task(data: DatasetParts, task: TaskSpec, fold: Fold | None = None) -> TaskSplits:
    parts = _hold_out(data.parts, task)
    keep = _class_indices(task.classes, data.class_names)
    relabel = {old: new for new, old in enumerate(keep)}
    splits = {name: _select_classes(part, relabel) for name, part in parts.items()}
    if fold is not None:
        pool = _concat(splits["train"], splits["val"])
        splits["train"], splits["val"] = _fold_of(pool, fold, task.split_seed)
    if task.train_per_class is not None:
        splits["train"] = _few_per_class(splits["train"], task.train_per_class, task.split_seed)
    if task.label_noise:
        splits["train"] = _noisy(splits["train"], task.label_noise, len(keep), task.split_seed)
    return TaskSplits(**splits, class_names=[data.class_names[i] for i in keep])


def _fold_of(pool: LabelledImages, fold: Fold, seed: int):
    smallest = int(np.bincount(pool.targets).min())
    if fold.count > smallest:
        raise UserError(
            f"cv.folds={fold.count} is more than the smallest class has images in train+val "
            f"({smallest}); use at most {smallest}"
        )
    folds = StratifiedKFold(n_splits=fold.count, shuffle=True, random_state=seed)
    train, val = list(folds.split(np.zeros(len(pool)), pool.targets))[fold.index]
    return _subset(pool, train), _subset(pool, val)


def _concat(a: LabelledImages, b: LabelledImages) -> LabelledImages:
    targets = np.concatenate([a.targets, b.targets])
    if isinstance(a.dataset, TensorDataset) and isinstance(b.dataset, TensorDataset):
        images = torch.cat([a.dataset.tensors[0], b.dataset.tensors[0]])
        return LabelledImages(TensorDataset(images, torch.as_tensor(targets)), targets)
    return LabelledImages(_Relabelled(ConcatDataset([a.dataset, b.dataset]), targets), targets)


def _hold_out(parts: dict[str, LabelledImages], task: TaskSpec) -> dict[str, LabelledImages]:
    """Adds the test and val splits a dataset lacks, stratified, from its train split."""
    parts = dict(parts)
    remaining = 1.0  # fractions are of the whole dataset; each split is taken from what is left
    for name, fraction in (("test", task.test_fraction), ("val", task.val_fraction)):
        if name in parts:
            continue
        if fraction <= 0:
            raise UserError(
                f"dataset.task.{name}_fraction=0 but the dataset has no {name} split of its own"
            )
        share = fraction / remaining
        parts["train"], parts[name] = _stratified_split(parts["train"], share, task.split_seed)
        remaining -= fraction
    return parts


def _stratified_split(part: LabelledImages, share: float, seed: int):
    indices = np.arange(len(part))
    try:
        keep, held = train_test_split(
            indices, test_size=share, stratify=part.targets, random_state=seed
        )
    except ValueError as err:
        raise UserError(f"cannot split the dataset ({err}); use more images per class") from err
    return _subset(part, np.sort(keep)), _subset(part, np.sort(held))


def _class_indices(classes: list | None, names: list[str]) -> list[int]:
    if classes is None:
        return list(range(len(names)))
    indices = []
    for c in classes:
        if isinstance(c, int) and 0 <= c < len(names):
            indices.append(c)
        elif str(c) in names and not isinstance(c, int):
            indices.append(names.index(str(c)))
        else:
            raise UserError(
                f"dataset.task.classes has {c!r}, which is not a class; use indices 0 to "
                f"{len(names) - 1} or names from {names[:10]}"
            )
    return indices


def _select_classes(part: LabelledImages, relabel: dict[int, int]) -> LabelledImages:
    mask = np.isin(part.targets, list(relabel))
    if mask.all() and all(old == new for old, new in relabel.items()):
        return part  # every class kept under its own label: nothing to copy
    return _subset(part, np.flatnonzero(mask), relabel)


def _few_per_class(part: LabelledImages, per_class: int, seed: int) -> LabelledImages:
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(part.targets):
        members = np.flatnonzero(part.targets == label)
        if len(members) < per_class:
            raise UserError(
                f"dataset.task.train_per_class={per_class} but class {label} has only "
                f"{len(members)} training images; use at most {len(members)}"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return _subset(part, np.sort(np.concatenate(chosen)))


def _noisy(part: LabelledImages, share: float, classes: int, seed: int) -> LabelledImages:
    """That share of the train labels (rounded) each moved to another class drawn at random:
    a noisy-label source task. Val and test keep their true labels."""
    rng = np.random.default_rng(seed)
    targets = part.targets.copy()
    flipped = rng.choice(len(targets), round(share * len(targets)), replace=False)
    targets[flipped] = (targets[flipped] + rng.integers(1, classes, len(flipped))) % classes
    if isinstance(part.dataset, TensorDataset):
        return LabelledImages(
            TensorDataset(part.dataset.tensors[0], torch.as_tensor(targets)), targets
        )
    return LabelledImages(_Relabelled(part.dataset, targets), targets)


def _subset(part: LabelledImages, indices: np.ndarray, relabel: dict[int, int] | None = None):
    targets = part.targets[indices]
    if relabel is not None:
        targets = np.array([relabel[t] for t in targets], dtype=np.int64)
    if isinstance(part.dataset, TensorDataset):  # in memory: index once, stay a fast tensor set
        images = part.dataset.tensors[0][torch.as_tensor(indices)]
        return LabelledImages(TensorDataset(images, torch.as_tensor(targets)), targets)
    return LabelledImages(_Relabelled(Subset(part.dataset, indices), targets), targets)


class _Relabelled(Dataset):
    """A dataset whose labels are replaced by `targets` (after relabelling)."""

    def __init__(self, base: Dataset, targets: np.ndarray):
        self.base, self.targets = base, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image, _ = self.base[i]
        return image, int(self.targets[i])
