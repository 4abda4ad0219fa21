"""Data: the task carved out of a dataset the same way for every dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from tests.helpers import write_image_folder
from transferlab.config import validate
from transferlab.data.datasets import Cifar, Digits, ImageFolderDataset
from transferlab.data.module import ShuffledBatches, TransferDataModule
from transferlab.data.splits import TaskSpec, carve_task
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

NATIVE = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=None)


def digits_task(**task) -> object:
    return carve_task(Digits().load(NATIVE), TaskSpec(**task))


def labels(part) -> np.ndarray:
    return part.dataset.tensors[1].numpy()


def test_digits_are_real_images_normalised_for_the_backbone():
    part = Digits().load(NATIVE).parts["train"]
    images, targets = part.dataset.tensors
    assert images.shape == (1797, 3, 8, 8)
    assert images.min() == -1 and images.max() == 1
    assert sorted(set(targets.tolist())) == list(range(10))
    resized = Digits().load(Preprocessing(input_size=32)).parts["train"].dataset.tensors[0]
    assert resized.shape == (1797, 3, 32, 32)


def test_split_is_stratified_disjoint_and_fixed_by_its_own_seed():
    splits = digits_task(val_fraction=0.2, test_fraction=0.3, split_seed=0)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert abs(len(splits.test) / 1797 - 0.3) < 0.01 and abs(len(splits.val) / 1797 - 0.2) < 0.01
    for part in (splits.train, splits.val, splits.test):
        share = np.bincount(labels(part)) / len(part)
        assert np.all(np.abs(share - 0.1) < 0.02)
    rows = {
        p: {tuple(x.flatten().tolist()) for x in getattr(splits, p).dataset.tensors[0][:200]}
        for p in ("val", "test")
    }
    assert not rows["val"] & rows["test"]
    again = digits_task(val_fraction=0.2, test_fraction=0.3, split_seed=0)
    other = digits_task(val_fraction=0.2, test_fraction=0.3, split_seed=1)
    assert torch.equal(again.test.dataset.tensors[0], splits.test.dataset.tensors[0])
    assert not torch.equal(other.test.dataset.tensors[0], splits.test.dataset.tensors[0])


def test_class_subset_is_relabelled_in_the_given_order_and_few_shot_train():
    splits = digits_task(classes=[7, 5], train_per_class=3, split_seed=0)
    assert splits.class_names == ["7", "5"]
    assert sorted(labels(splits.train).tolist()) == [0, 0, 0, 1, 1, 1]
    full = digits_task(split_seed=0)
    # the held-out splits of the kept classes do not depend on train_per_class
    assert len(splits.test) == int((labels(full.test) == 7).sum() + (labels(full.test) == 5).sum())


def test_label_noise_moves_that_share_of_train_labels_to_another_class_and_no_other_split(
    make_config,
):
    clean = digits_task(classes=[0, 1, 2, 3, 4], split_seed=1)
    noisy = digits_task(classes=[0, 1, 2, 3, 4], split_seed=1, label_noise=0.3)
    moved = labels(noisy.train) != labels(clean.train)
    assert moved.sum() == round(0.3 * len(moved))
    assert set(labels(noisy.train)[moved]) <= {0, 1, 2, 3, 4}
    assert torch.equal(noisy.train.dataset.tensors[0], clean.train.dataset.tensors[0])
    for split in ("val", "test"):
        assert np.array_equal(labels(getattr(noisy, split)), labels(getattr(clean, split)))
    again = digits_task(classes=[0, 1, 2, 3, 4], split_seed=1, label_noise=0.3)
    assert np.array_equal(labels(again.train), labels(noisy.train))  # seeded by split_seed
    with pytest.raises(UserError, match=r"dataset.task.label_noise=1.5 must be in \[0, 1\)"):
        validate(make_config("dataset.task.label_noise=1.5"))


def test_unknown_class_and_too_few_images_are_clear_errors():
    with pytest.raises(
        UserError, match=r"dataset.task.classes has 12, which is not a class; use indices 0 to 9"
    ):
        digits_task(classes=[1, 12])
    with pytest.raises(
        UserError,
        match=r"dataset.task.train_per_class=500 but class 0 has only \d+ training images",
    ):
        digits_task(train_per_class=500)


def test_image_folder_without_splits_is_split_with_a_seed(tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"cat": 10, "dog": 10, "owl": 10})
    parts = ImageFolderDataset(str(root)).load(Preprocessing(input_size=16))
    splits = carve_task(parts, TaskSpec(val_fraction=0.2, test_fraction=0.2, split_seed=0))
    assert splits.class_names == ["cat", "dog", "owl"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)
    image, label = splits.test.dataset[0]
    assert image.shape == (3, 16, 16) and label in (0, 1, 2)


def test_image_folder_uses_its_own_train_val_test_folders(tmp_path):
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        write_image_folder(tmp_path / "imgs" / split, {"a": count, "b": count})
    parts = ImageFolderDataset(str(tmp_path / "imgs")).load(Preprocessing(input_size=12))
    assert set(parts.parts) == {"train", "val", "test"}
    splits = carve_task(parts, TaskSpec())
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("missing", "is not a directory"),
        ("empty", "has 0 class folder(s) with images; it needs at least 2"),
        ("one_class", "has 1 class folder(s) with images; it needs at least 2"),
    ],
)
def test_image_folder_root_problems(tmp_path, layout, expected):
    root = tmp_path / "root"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        write_image_folder(root, {"only": 3})
    with pytest.raises(UserError) as error:
        ImageFolderDataset(str(root)).load(Preprocessing(input_size=8))
    assert expected in str(error.value)


def test_cifar_absent_offline_is_a_clear_error(tmp_path):
    with pytest.raises(
        UserError, match=r"cifar10 was not found under dataset.root=.*dataset.download=true"
    ):
        Cifar("cifar10", str(tmp_path)).load(Preprocessing(input_size=32))


def test_epoch_samples_cycles_a_small_train_set():
    loader_cfg = OmegaConf.create({"batch_size": 8, "num_workers": 0, "epoch_samples": 40})
    dataset_cfg = OmegaConf.create(
        {
            "_target_": "transferlab.data.datasets.Digits",
            "task": {"classes": [0, 1], "train_per_class": 5},
        }
    )
    data = TransferDataModule(dataset_cfg, NATIVE, loader_cfg)
    data.setup()
    batches = list(data.train_dataloader())
    assert sum(len(b[1]) for b in batches) == 40
    assert len(batches) == 5


def test_in_memory_batches_are_gathered_whole_and_match_per_image_loading():
    loader_cfg = OmegaConf.create({"batch_size": 16, "num_workers": "auto"})
    dataset_cfg = OmegaConf.create({"_target_": "transferlab.data.datasets.Digits"})
    data = TransferDataModule(dataset_cfg, NATIVE, loader_cfg, seed=3)
    data.setup()
    ours = list(data.train_dataloader())
    train = data.splits.train.dataset
    order = ShuffledBatches(len(train), 16, seed=3)
    by_image = list(DataLoader(train, batch_sampler=order))
    assert data.train_dataloader().batch_size is None  # one fetch per batch, no collate
    assert len(ours) == len(by_image)
    for (images, targets), (expected_images, expected_targets) in zip(ours, by_image, strict=True):
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    assert [len(t) for _, t in data.test_dataloader()] == [16] * (len(data.splits.test) // 16) + [
        len(data.splits.test) % 16
    ]


def test_the_training_order_depends_on_seed_and_epoch_alone():
    """What lets a resumed run train on exactly the batches the interrupted one had left:
    any epoch's order can be made again, and the global RNG (dropout, MixUp) is untouched."""
    rng = torch.get_rng_state()

    def epoch(seed: int, number: int, skip: int = 0) -> list[list[int]]:
        batches = ShuffledBatches(100, 16, seed)
        batches.set_epoch(number)
        batches.skip_once(skip)
        return list(batches)

    first = epoch(seed=0, number=1)
    assert first == epoch(seed=0, number=1)
    assert first != epoch(seed=0, number=2) and first != epoch(seed=1, number=1)
    assert sorted(i for batch in first for i in batch) == list(range(100))  # a permutation
    assert [len(b) for b in first] == [16] * 6 + [4]
    assert epoch(seed=0, number=1, skip=4) == first[4:]
    assert torch.equal(torch.get_rng_state(), rng)
    resumed = ShuffledBatches(100, 16, seed=0)
    resumed.skip_once(5)
    assert len(list(resumed)) == 2 and len(list(resumed)) == 7  # skipped once, then whole
    assert [len(b) for b in ShuffledBatches(97, 16, seed=0)] == [16] * 6  # no batch of one
    cycled = list(ShuffledBatches(10, 4, seed=0, num_samples=25))
    assert [len(b) for b in cycled] == [4] * 6  # 25 = 6 x 4 + 1: the one is dropped


def test_image_files_load_in_auto_workers(tmp_path):
    write_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    loader_cfg = OmegaConf.create({"batch_size": 4, "num_workers": "auto"})
    dataset_cfg = OmegaConf.create(
        {
            "_target_": "transferlab.data.datasets.ImageFolderDataset",
            "root": str(tmp_path / "images"),
            "task": {"val_fraction": 0.2, "test_fraction": 0.2},
        }
    )
    data = TransferDataModule(dataset_cfg, Preprocessing(input_size=16), loader_cfg)
    data.setup()
    loader = data.train_dataloader()
    assert loader.num_workers == min(8, torch.get_num_threads()) > 0
    assert loader.persistent_workers
    assert sum(len(targets) for _, targets in loader) == len(data.splits.train)
