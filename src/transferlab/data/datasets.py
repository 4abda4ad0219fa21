"""Datasets: where images come from. Each returns the splits it has of its own.

A dataset is any class with `load(preprocessing) -> DatasetParts`; point `dataset._target_`
at your own to use it. Carving out the task (held-out splits, a subset of classes, a few
labels per class) is done for every dataset alike in `transferlab.data.splits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets as tv_datasets

from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class LabelledImages:
    """`dataset[i]` is (image tensor, label); `targets` holds every label, for splitting."""

    dataset: Dataset
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class DatasetParts:
    parts: dict[str, LabelledImages]  # "train" always; "val" / "test" when the dataset has them
    class_names: list[str]


class Digits:
    """scikit-learn's 8x8 digits: real images that ship with the package, so runs work offline."""

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        labels = torch.tensor(digits.target, dtype=torch.long)
        tensors = TensorDataset(preprocessing.tensor_transform(images), labels)
        names = [str(n) for n in digits.target_names]
        return DatasetParts({"train": LabelledImages(tensors, digits.target)}, names)


class Synthetic:
    """Random images from a fixed seed, made in memory: benchmarks at any input size with no
    download and no decoding. Each class adds its own fixed random pattern to uniform noise
    (`signal` is its share), so a model has something to learn."""

    def __init__(
        self,
        num_classes: int = 10,
        num_images: int = 1000,
        image_size: int = 32,
        signal: float = 0.5,
        seed: int = 0,
    ):
        for key, value in (
            ("num_classes", num_classes),
            ("num_images", num_images),
            ("image_size", image_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"dataset.{key}={value!r} must be a whole number >= 1")
        if num_classes < 2:
            raise UserError(f"dataset.num_classes={num_classes} must be a whole number >= 2")
        if num_images < num_classes:
            raise UserError(
                f"dataset.num_images={num_images} must be >= dataset.num_classes={num_classes}"
            )
        if not isinstance(signal, (int, float)) or not 0 <= signal <= 1:
            raise UserError(f"dataset.signal={signal!r} must be in [0, 1]")
        self.num_classes, self.num_images, self.image_size = num_classes, num_images, image_size
        self.signal, self.seed = float(signal), seed

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        size = preprocessing.input_size or self.image_size  # made at the size the net takes
        generator = torch.Generator().manual_seed(self.seed)
        shape = (3, size, size)
        patterns = torch.rand((self.num_classes, *shape), generator=generator)
        images = torch.rand((self.num_images, *shape), generator=generator)
        labels = torch.arange(self.num_images) % self.num_classes  # balanced classes
        for c in range(self.num_classes):  # in place, a class at a time: no second copy
            images[c :: self.num_classes].mul_(1 - self.signal).add_(patterns[c], alpha=self.signal)
        tensors = TensorDataset(preprocessing.tensor_transform(images), labels)
        names = [str(c) for c in range(self.num_classes)]
        return DatasetParts({"train": LabelledImages(tensors, labels.numpy())}, names)


class ImageFolderDataset:
    """Any root/<class>/<image> tree; root/{train,val,test}/<class>/<image> gives the splits."""

    def __init__(self, root: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(
                f"dataset.root={root} is not a directory; pass a folder of class folders"
            )

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        transform = preprocessing.image_transform()
        split_dirs = [s for s in SPLIT_NAMES if (self.root / s).is_dir()]
        if "train" in split_dirs:
            parts = {s: self._folder(self.root / s, transform) for s in split_dirs}
            names = {s: p.dataset.classes for s, p in parts.items()}
            if any(n != names["train"] for n in names.values()):
                raise UserError(
                    f"dataset.root={self.root}: the splits have different classes: {names}"
                )
            return DatasetParts(parts, names["train"])
        whole = self._folder(self.root, transform)
        return DatasetParts({"train": whole}, whole.dataset.classes)

    def _folder(self, path: Path, transform) -> LabelledImages:
        classes = [d for d in sorted(path.iterdir()) if d.is_dir() and _has_images(d)]
        if len(classes) < 2:
            raise UserError(
                f"dataset.root={path} has {len(classes)} class folder(s) with images; "
                "it needs at least 2 (root/<class>/<image>)"
            )
        folder = tv_datasets.ImageFolder(str(path), transform=transform, allow_empty=True)
        return LabelledImages(folder, np.asarray(folder.targets))


class Cifar:
    """torchvision's CIFAR-10 / CIFAR-100 with their official train / test split."""

    VARIANTS: ClassVar[dict[str, type]] = {
        "cifar10": tv_datasets.CIFAR10,
        "cifar100": tv_datasets.CIFAR100,
    }

    def __init__(self, variant: str, root: str, download: bool = False):
        if variant not in self.VARIANTS:
            raise UserError(f"dataset.variant={variant!r} is unknown; use cifar10 or cifar100")
        self.variant, self.root, self.download = variant, root, download

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        transform = preprocessing.image_transform()
        cls = self.VARIANTS[self.variant]
        try:
            train, test = (
                cls(self.root, train=is_train, download=self.download, transform=transform)
                for is_train in (True, False)
            )
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise UserError(
                f"{self.variant} was not found under dataset.root={self.root}; pass "
                "dataset.download=true (needs internet) or dataset.root=DIR that holds it"
            ) from err
        parts = {
            n: LabelledImages(d, np.asarray(d.targets))
            for n, d in (("train", train), ("test", test))
        }
        return DatasetParts(parts, list(train.classes))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())
