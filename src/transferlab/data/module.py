"""The LightningDataModule: a dataset from config, carved into the task, served in batches."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from transferlab.data.datasets import LabelledImages
from transferlab.data.splits import TASK_KEYS, Fold, TaskSpec, TaskSplits, carve_task
from transferlab.data.transforms import Preprocessing
from transferlab.errors import instantiate


class TransferDataModule(pl.LightningDataModule):
    """`pin_memory`: batches in page-locked host memory, so the copy to the GPU (which
    Lightning issues with non_blocking=True) overlaps with compute. None: pinned exactly when
    the trainer this module is attached to trains on a CUDA device, unpinned on the CPU."""

    def __init__(
        self,
        dataset: DictConfig,
        preprocessing: Preprocessing,
        loader: DictConfig,
        fold: Fold | None = None,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        config = OmegaConf.to_container(dataset, resolve=True)
        self.source_config = {k: v for k, v in config.items() if k not in TASK_KEYS}
        self.task = TaskSpec(**{k: v for k, v in config.items() if k in TASK_KEYS})
        self.preprocessing = preprocessing
        self.batch_size = loader.batch_size
        self.num_workers = worker_count(loader.num_workers)
        self.epoch_samples = loader.get("epoch_samples")
        self.fold = fold
        self.pin_memory = pin_memory
        self.splits: TaskSplits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:  # the model needs the class count before fit calls setup
            source = instantiate(self.source_config)
            self.splits = carve_task(source.load(self.preprocessing), self.task, self.fold)

    def use_features(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Serves precomputed backbone features in place of the images (same splits)."""
        self.splits = TaskSplits(
            **{
                name: LabelledImages(TensorDataset(x, y), y.numpy())
                for name, (x, y) in features.items()
            },
            class_names=self.splits.class_names,
        )

    @property
    def num_classes(self) -> int:
        return len(self.splits.class_names)

    @property
    def class_names(self) -> list[str]:
        return self.splits.class_names

    def train_dataloader(self) -> DataLoader:
        """Shuffled; with `epoch_samples`, a small train set is cycled through (fresh
        permutations) so an epoch holds several steps, as few-shot training needs."""
        train = self.splits.train.dataset
        sampler = RandomSampler(train, num_samples=self.epoch_samples)
        # a last batch of one image breaks BatchNorm in training (one value per channel)
        return self._loader(train, sampler, drop_last=len(sampler) % self.batch_size == 1)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val.dataset)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test.dataset)

    def _loader(self, dataset, sampler=None, drop_last: bool = False) -> DataLoader:
        """In-memory tensors are gathered a whole batch at a time (`batch_size=None` with a
        batch sampler): per-image indexing and collating cost more than a small model's
        step, and workers would only add copies. The batches are the same either way."""
        if isinstance(dataset, TensorDataset):
            sampler = BatchSampler(
                sampler or SequentialSampler(dataset), self.batch_size, drop_last=drop_last
            )
            batches = TensorBatches(dataset)
            return DataLoader(batches, batch_size=None, sampler=sampler, pin_memory=self._pinned())
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pinned(),
        )

    def _pinned(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer  # set by Lightning when fit / test attach this module
        return trainer is not None and trainer.strategy.root_device.type == "cuda"


def worker_count(configured: int | str) -> int:
    """`auto`: a worker per thread torch may use here (its share under a parallel sweep), at
    most 8. Images read from files decode 1.4x faster with 2 workers than in the main
    process on 2 cores (bench/data_loading.py); in-memory data never uses workers."""
    if configured == "auto":
        return min(8, torch.get_num_threads())
    return configured


class TensorBatches(Dataset):
    """A TensorDataset indexed by a list of indices, one batch per fetch. `index_select`
    gathers a batch of 64 images of 3x64x64 in ~0.1 ms here, where `tensor[indices]`
    (advanced indexing) takes ~8 ms and stacking 64 single images ~0.4 ms."""

    def __init__(self, dataset: TensorDataset):
        self.tensors = dataset.tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(tensor.index_select(0, index) for tensor in self.tensors)
