"""The LightningDataModule: a dataset from config, carved into the task, served in batches."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from transferlab.data.datasets import LabelledImages
from transferlab.data.splits import TASK_KEYS, Fold, TaskSpec, TaskSplits, carve_task
from transferlab.data.transforms import Preprocessing
from transferlab.errors import instantiate


class TransferDataModule(pl.LightningDataModule):
    def __init__(
        self,
        dataset: DictConfig,
        preprocessing: Preprocessing,
        loader: DictConfig,
        fold: Fold | None = None,
    ):
        super().__init__()
        config = OmegaConf.to_container(dataset, resolve=True)
        self.source_config = {k: v for k, v in config.items() if k not in TASK_KEYS}
        self.task = TaskSpec(**{k: v for k, v in config.items() if k in TASK_KEYS})
        self.preprocessing = preprocessing
        self.batch_size = loader.batch_size
        self.num_workers = loader.num_workers
        self.epoch_samples = loader.get("epoch_samples")
        self.fold = fold
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
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
