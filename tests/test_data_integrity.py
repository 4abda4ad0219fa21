"""Results you can trust: the feature cache is keyed by the data itself, and an image folder
is read as it is: no image outside the root, none counted twice, no empty or corrupt class
passed over in silence."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import FAST
from tests.helpers import UserDigits, write_image_folder
from transferlab.data.datasets import DatasetParts, ImageFolderDataset
from transferlab.data.module import TransferDataModule
from transferlab.data.splits import TaskSpec, carve_task
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

NATIVE = Preprocessing(input_size=None)
LOADER = OmegaConf.create({"batch_size": 8, "num_workers": 0})


def linear_probe(root: str | Path, cache: Path) -> list[str]:
    """Overrides of a run whose features go through the cache."""
    return [*FAST, "freeze=linear_probe", "dataset=image_folder", f"dataset.root={root}",
            f"feature_cache.dir={cache}"]  # fmt: skip


def entries(cache: Path) -> list[dict]:
    """The keys of the cache's entries, as stored for humans next to them."""
    return [json.loads(p.with_suffix(".json").read_text())["key"] for p in cache.glob("*.pt")]


def files_of(parts: DatasetParts) -> list[str]:
    """Every image file a loaded dataset serves, over all its parts."""
    return [path for part in parts.parts.values() for path, _ in part.dataset.samples]


def load_noting_warnings(root: Path) -> tuple[DatasetParts, str]:
    """The dataset and what it warned about, one warning a line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = ImageFolderDataset(str(root)).load(NATIVE)
    return parts, "\n".join(str(w.message) for w in caught)


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG but the rest of it is gone")


def test_the_same_relative_root_in_two_places_shares_no_cache_entry(
    make_config, tmp_path, monkeypatch
):
    from transferlab.train import run

    cache = tmp_path / "cache"
    for place, seed in (("one", 0), ("two", 1)):
        write_image_folder(tmp_path / place / "images", {"cat": 6, "dog": 6}, seed=seed)
    for place in ("one", "two"):
        monkeypatch.chdir(tmp_path / place)
        run(make_config(*linear_probe("images", cache)))
    assert len(entries(cache)) == 6  # train, val, test of each folder
    roots = sorted({key["data"]["source"]["root"] for key in entries(cache)})
    assert roots == [str(tmp_path / "one" / "images"), str(tmp_path / "two" / "images")]


def test_an_edited_image_misses_the_cache(make_config, runs, tmp_path):
    from transferlab.train import run

    cache = tmp_path / "cache"
    root = write_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    run(make_config(*linear_probe(root, cache)))
    run(make_config(*linear_probe(root, cache)))
    assert len(entries(cache)) == 3  # unchanged files: the second run read the cache
    edited = root / "cat" / "0.png"
    before = edited.stat().st_mtime_ns
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(edited)
    os.utime(edited, ns=(before + 10**9, before + 10**9))  # a later edit, whatever the clock
    run(make_config(*linear_probe(root, cache)))
    assert len(entries(cache)) == 6
    assert len({key["data"]["source"]["manifest"] for key in entries(cache)}) == 2
    assert [r.info.status for r in runs()] == ["FINISHED"] * 3
    digests = [r.data.tags["transferlab.dataset_digest"] for r in runs()]
    assert digests[0] == digests[1] != digests[2]  # each run records the data it saw


def test_a_symlink_out_of_the_root_is_not_indexed(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    outside = write_image_folder(tmp_path / "elsewhere", {"cat": 1}) / "cat" / "0.png"
    (root / "cat" / "borrowed.png").symlink_to(outside)
    (root / "dog" / "more").symlink_to(outside.parent, target_is_directory=True)
    parts, warned = load_noting_warnings(root)
    assert len(files_of(parts)) == 8
    assert all(Path(path).is_relative_to(root) for path in files_of(parts))
    assert "2 symlink(s) not followed (to a folder, or out of the root): cat/borrowed.png" in warned


def test_a_symlink_loop_is_not_followed(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)
    (root / "dog" / "up").symlink_to(root, target_is_directory=True)
    parts, warned = load_noting_warnings(root)
    assert len(files_of(parts)) == 8
    assert "2 symlink(s) not followed" in warned


def test_a_file_reached_twice_counts_once_and_sits_in_one_split(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "val", "test"):
        write_image_folder(root / split, {"cat": 3, "dog": 3}, seed=len(split))
    os.link(root / "train" / "cat" / "0.png", root / "train" / "cat" / "hard.png")
    (root / "train" / "dog" / "soft.png").symlink_to(root / "train" / "dog" / "1.png")
    os.link(root / "train" / "cat" / "1.png", root / "test" / "cat" / "leaked.png")
    parts, warned = load_noting_warnings(root)
    files = files_of(parts)
    inodes = [os.stat(path).st_ino for path in files]
    assert len(files) == len(set(inodes)) == 18
    assert {len(part) for part in parts.parts.values()} == {6}
    assert "3 file(s) are a file listed before (a hard link or symlink), counted once" in warned


def test_an_empty_class_folder_is_refused_by_name(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    (root / "owl").mkdir()
    (root / "owl" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"class folder\(s\) without readable images: owl;"):
        ImageFolderDataset(str(root)).load(NATIVE)


def test_corrupt_images_are_refused_naming_five_and_the_count(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    for i in range(7):
        corrupt(root / "dog" / f"broken{i}.png")
    with pytest.raises(UserError) as error:
        ImageFolderDataset(str(root)).load(NATIVE)
    message = str(error.value)
    assert "7 file(s) that cannot be read as images: dog/broken0.png, dog/broken1.png" in message
    assert "dog/broken4.png and 2 more; fix or remove them" in message
    assert "dataset.skip_corrupt=true" in message and "\n" not in message


def test_skip_corrupt_trains_on_the_rest_with_one_warning(train, runs, tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    corrupt(root / "cat" / "broken.png")
    (root / "dog" / "gone.png").symlink_to(root / "dog" / "nothing-here.png")  # dangling
    config = OmegaConf.create(
        {"_target_": "transferlab.data.datasets.ImageFolderDataset", "root": str(root),
         "skip_corrupt": True, "task": {"val_fraction": 0.25, "test_fraction": 0.25}}
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"skipping 2 file\(s\).*cat/broken.png, dog/gone.png"):
        data = TransferDataModule(config, NATIVE, LOADER)
        data.setup()
    assert sum(len(getattr(data.splits, s)) for s in ("train", "val", "test")) == 12
    train("dataset=image_folder", f"dataset.root={root}", "dataset.skip_corrupt=true")
    assert [r.info.status for r in runs()] == ["FINISHED"]


def test_the_data_identity_names_the_data_the_task_and_the_fold(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    monkeypatch.chdir(tmp_path)
    config = OmegaConf.create(
        {"_target_": "transferlab.data.datasets.ImageFolderDataset", "root": "images",
         "task": {"train_per_class": 2, "split_seed": 3}}
    )  # fmt: skip
    data = TransferDataModule(config, NATIVE, LOADER)
    data.setup()
    source = data.identity["source"]
    assert source["root"] == str(tmp_path / "images")
    assert source["manifest"].startswith("sha256:")
    assert data.identity["task"]["train_per_class"] == 2
    assert data.identity["task"]["split_seed"] == 3
    assert data.identity["fold"] is None
    other = TransferDataModule(OmegaConf.merge(config, {"task": {"split_seed": 4}}), NATIVE, LOADER)
    other.setup()
    assert len(data.dataset_digest) == 16 and data.dataset_digest != other.dataset_digest


def test_a_dataset_without_identity_is_named_by_its_config():
    target = f"{UserDigits.__module__}.{UserDigits.__qualname__}"
    config = OmegaConf.create({"_target_": target, "scale": 2.0, "task": {"classes": [0, 1]}})
    data = TransferDataModule(config, NATIVE, LOADER)
    data.setup()
    assert data.identity["source"] == {"_target_": target, "scale": 2.0}
    assert data.identity["task"]["classes"] == [0, 1]


def test_the_split_of_a_folder_keeps_class_order_and_reads_its_images(tmp_path):
    root = write_image_folder(tmp_path / "images", {"owl": 5, "cat": 5, "dog": 5})
    splits = carve_task(ImageFolderDataset(str(root)).load(NATIVE), TaskSpec(split_seed=0))
    assert splits.class_names == ["cat", "dog", "owl"]
    image, label = splits.train.dataset[0]
    assert tuple(image.shape) == (3, 12, 12) and label in (0, 1, 2)
