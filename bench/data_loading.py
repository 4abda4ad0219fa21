"""Data loading: how fast batches arrive, with transferlab's loaders against the DataLoader
one would write by hand, for the two kinds of data we serve.

- In memory (digits, CIFAR, synthetic: tensors already preprocessed): ours slices a whole
  batch per fetch; the hand-written loader indexes and collates image by image.
- On disk (an ImageFolder of PNGs, decoded and transformed per image): worker processes
  against the main process alone.

Only the loading is timed (a pass over the batches, nothing trained), images/s.

    python bench/data_loading.py [--passes 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from transferlab.data.module import TransferDataModule
from transferlab.data.transforms import Preprocessing

BATCH = 64
SIZE = 64  # resnet18-style input, digits upsampled


def images_per_s(loader: DataLoader, passes: int) -> float:
    next(iter(loader))  # workers started, first batch out of the way
    images, start = 0, time.perf_counter()
    for _ in range(passes):
        for batch, _targets in loader:
            images += len(batch)
    return images / (time.perf_counter() - start)


def data_module(dataset: dict, num_workers: int) -> TransferDataModule:
    loader = OmegaConf.create({"batch_size": BATCH, "num_workers": num_workers})
    task = {"val_fraction": 0.1, "test_fraction": 0.1}
    data = TransferDataModule(
        OmegaConf.create({**dataset, "task": task}), Preprocessing(input_size=SIZE), loader
    )
    data.setup()
    return data


def in_memory_records(passes: int) -> list[dict]:
    data = data_module({"_target_": "transferlab.data.datasets.Digits"}, num_workers=0)
    train = data.splits.train.dataset
    by_hand = images_per_s(DataLoader(train, batch_size=BATCH, shuffle=True), passes)
    by_hand_workers = images_per_s(
        DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True),
        passes,
    )
    ours = images_per_s(data.train_dataloader(), passes)
    case = f"data loading, in-memory digits {SIZE}px, batch {BATCH}"
    return [
        _record(f"{case}: batch slicing vs per-image DataLoader", ours, by_hand),
        _record(f"{case}: batch slicing vs per-image DataLoader, 2 workers", ours, by_hand_workers),
    ]


def on_disk_records(passes: int, root: Path) -> list[dict]:
    _write_image_folder(root)
    dataset = {"_target_": "transferlab.data.datasets.ImageFolderDataset", "root": str(root)}
    main_only = images_per_s(data_module(dataset, 0).train_dataloader(), passes)
    case = f"data loading, ImageFolder of PNGs to {SIZE}px, batch {BATCH}"
    return [
        _record(
            f"{case}: {n} workers vs main process only",
            images_per_s(data_module(dataset, n).train_dataloader(), passes),
            main_only,
        )
        for n in (1, 2)
    ]


def _write_image_folder(root: Path) -> None:
    """Digits as 32 px PNG files, a folder per class: real decoding and resizing work."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32)).save(folder / f"{i}.png")


def _record(case: str, ours: float, baseline: float) -> dict:
    return {
        "case": case,
        "metric": "images/s (higher is better)",
        "transferlab": round(ours, 1),
        "baseline": round(baseline, 1),
        "ratio": round(ours / baseline, 3),
    }


def records(passes: int = 3) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return [*in_memory_records(passes), *on_disk_records(passes, Path(tmp) / "pngs")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    for record in records(args.passes):
        print(record)


if __name__ == "__main__":
    main()
