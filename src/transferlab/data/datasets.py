"""Datasets: where images come from. Each returns the splits it has of its own.

A dataset is any class with `load(preprocessing) -> DatasetParts`; point `dataset._target_`
at your own to use it. An optional `identity()` returns plain JSON data that says which data
it is (the built-ins: their name and options; image folders: the absolute root and a digest
of the files): it keys the feature cache and names the run's data. Carving out the task
(held-out splits, a subset of classes, a few labels per class) is done for every dataset
alike in `transferlab.data.splits`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets as tv_datasets
from torchvision.datasets.folder import default_loader

from transferlab.data.image_index import (
    IMAGE_SUFFIXES,
    FolderIndex,
    ImageFile,
    first_few,
    index_images,
)
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

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

    def identity(self) -> dict[str, Any]:
        return {"name": "digits"}

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        from sklearn.datasets import load_digits

        digits = load_digits()
        names = [str(n) for n in digits.target_names]
        return sixteen_level_parts(digits.images, digits.target, names, preprocessing)


def sixteen_level_parts(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], preprocessing: Preprocessing
) -> DatasetParts:
    """One train part of 8x8 images in sklearn's digits format (values 0..16: on pixels per
    4x4 block of a 32x32 bitmap), scaled to [0, 1] as one grey channel."""
    grey = torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)
    tensors = TensorDataset(preprocessing.tensor_transform(grey), torch.as_tensor(labels).long())
    return DatasetParts({"train": LabelledImages(tensors, np.asarray(labels))}, class_names)


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

    def identity(self) -> dict[str, Any]:
        options = ("num_classes", "num_images", "image_size", "signal", "seed")
        return {"name": "synthetic", **{key: getattr(self, key) for key in options}}

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
    """Any root/<class>/<image> tree; root/{train,val,test}/<class>/<image> gives the splits.

    The images are indexed when the dataset is loaded (see `index_images`): a file reached
    twice counts once, so no image sits in two splits; symlinks are never followed out of
    the root; an empty class folder is refused; each image's header is read, so a file that
    is not an image is found now rather than mid-epoch, and refused, or skipped with one
    warning when `skip_corrupt`. Entries whose name starts with '.' are ignored.
    """

    def __init__(self, root: str, skip_corrupt: bool = False):
        if not Path(root).is_dir():
            raise UserError(
                f"dataset.root={root} is not a directory; pass a folder of class folders"
            )
        self.root = Path(root).resolve()
        self.skip_corrupt = skip_corrupt
        self._index: FolderIndex | None = None

    def identity(self) -> dict[str, Any]:
        """The absolute root and a digest of every image's relative path, size and mtime:
        the same relative root elsewhere, or an edited image, is other data."""
        return {"name": "image_folder", "root": str(self.root), "manifest": self.index().digest}

    def index(self) -> FolderIndex:
        """The files, listed once per dataset object: `load` and `identity` agree."""
        if self._index is None:
            self._index = index_images(self.root, self._part_folders())
        return self._index

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        index = self.index()
        files = self._readable(index.files)
        transform = preprocessing.image_transform()
        parts = {
            part: self._part(part, folders, files, transform)
            for part, folders in index.class_folders.items()
        }
        names = {part: images.dataset.classes for part, images in parts.items()}
        if any(n != names["train"] for n in names.values()):
            raise UserError(f"dataset.root={self.root}: the splits have different classes: {names}")
        return DatasetParts(parts, names["train"])

    def _part_folders(self) -> dict[str, Path]:
        """root/{train,val,test} when there is a train folder; the whole root otherwise."""
        if (self.root / "train").is_dir():
            return {s: self.root / s for s in SPLIT_NAMES if (self.root / s).is_dir()}
        return {"train": self.root}

    def _readable(self, files: list[ImageFile]) -> list[ImageFile]:
        corrupt = [f.relative for f in files if not f.readable]
        if not corrupt:
            return files
        what = f"{len(corrupt)} file(s) that cannot be read as images: {first_few(corrupt)}"
        if not self.skip_corrupt:
            raise UserError(
                f"dataset.root={self.root} has {what}; fix or remove them, or pass "
                "dataset.skip_corrupt=true to train without them"
            )
        warnings.warn(f"dataset.root={self.root}: skipping {what}", stacklevel=2)
        return [f for f in files if f.readable]

    def _part(
        self, part: str, folders: list[str], files: list[ImageFile], transform: Callable
    ) -> LabelledImages:
        counts = Counter(f.folder for f in files if f.part == part)
        empty = [folder for folder in folders if not counts[folder]]
        if empty:
            raise UserError(
                f"dataset.root={self.root}: class folder(s) without readable images: "
                f"{first_few(empty)}; add images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                "or remove the folder(s)"
            )
        if len(folders) < 2:
            where = self._part_folders()[part]
            raise UserError(
                f"dataset.root={where} has {len(folders)} class folder(s) with images; "
                "it needs at least 2 (root/<class>/<image>)"
            )
        label = {folder: i for i, folder in enumerate(folders)}
        samples = [(f.real, label[f.folder]) for f in files if f.part == part]
        images = ImageFiles(samples, [Path(folder).name for folder in folders], transform)
        return LabelledImages(images, np.asarray(images.targets, dtype=np.int64))


class ImageFiles(Dataset):
    """(image, label) for each (file, label) of `samples`, read by torchvision's loader."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(default_loader(path)), label


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

    def identity(self) -> dict[str, Any]:
        """Absolute: the same relative root in two working directories is two datasets."""
        return {"name": self.variant, "root": str(Path(self.root).resolve())}

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
