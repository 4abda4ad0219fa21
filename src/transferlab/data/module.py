"""The LightningDataModule: a dataset from config, carved into the task, served in batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    Sampler,
    TensorDataset,
)

from transferlab.config_values import DATA_DEVICES
from transferlab.data.datasets import LabelledImages
from transferlab.data.feature_cache import json_digest
from transferlab.data.splits import Fold, TaskSpec, TaskSplits, carve_task
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError, instantiate, one_of
from transferlab.objective import adaptation_node, selection_of

TRAIN_ONLY = ("train_per_class", "label_noise")  # task fields that carve the train split alone


# The splits whose loaders each Lightning stage (the `stage` of setup / teardown) asks for
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


AUTO_SHARE = 4  # loader.device=auto: a split goes to the GPU if it takes <= 1/4 of its free memory


class TransferDataModule(pl.LightningDataModule):
    """`pin_memory`: batches in page-locked host memory, so the copy to the GPU (which
    Lightning issues with non_blocking=True) overlaps with compute. None: pinned exactly when
    the trainer this module is attached to trains on a CUDA device, unpinned on the CPU.

    `loader.device` (see `data_device`): where the in-memory splits a trainer's stage serves
    live while it runs. On its GPU they are copied there once at the stage's `setup` and
    dropped at its `teardown`; their batches are then gathered there (index tensors made
    there once an epoch), so no step copies images from the host. Image files are decoded
    by workers on the host, as always.

    The training order depends on `seed` and the epoch alone, and a checkpoint records how
    far into its epoch training got, so a resumed run trains on exactly the batches the
    interrupted one had left (see `state_dict`).

    Under DDP each process takes its own share of every split (see `ShuffledBatches` and
    `evaluation_batches`); Lightning's DistributedSampler is off (see pipeline.build_trainer).

    `target_domain` (a dataset config, or None): unlabelled images of another domain with the
    same classes, carved by its own `task`. Its labels reach the model only where honest:
    with `adapting`, each training batch is a dict of a `source` batch (images, labels) and
    a `target` batch of images alone, as many images, in an order of its own; its
    validation split is served as images alone unless `target_labels` (the oracle); its
    test split, labelled, is the second test loader (target/test/*).

    After `setup`, `identity` says which data was loaded, as plain JSON data: the dataset's
    own `identity()` (a user's class without one: its resolved config, so a relative path
    in it names no particular folder), `dataset.task` and the fold; `dataset_digest` is a
    short hash of it, for a run to record."""

    def __init__(
        self,
        dataset: DictConfig,
        preprocessing: Preprocessing,
        loader: DictConfig,
        fold: Fold | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
        target_domain: DictConfig | None = None,
        adapting: bool = False,
        target_labels: bool = False,
    ):
        super().__init__()
        config = OmegaConf.to_container(dataset, resolve=True)
        self.task = TaskSpec(**config.pop("task", {}))  # ours: the class never sees it
        self.source_config = config
        self.preprocessing = preprocessing
        self.batch_size = loader.batch_size
        self.num_workers = worker_count(loader.num_workers)
        self.epoch_samples = loader.get("epoch_samples")
        self.device_setting = loader.get("device", "auto")
        self.resident: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id: (host, device)
        self.fold = fold
        self.pin_memory = pin_memory
        self.seed = seed
        self.resume_at: dict[str, int] = {"epoch": 0, "batches_done": 0}
        self.splits: TaskSplits | None = None
        self.identity: dict[str, Any] | None = None
        self.target_config = _dataset_config(target_domain)
        self.adapting, self.target_labels = adapting, target_labels
        self.target: TaskSplits | None = None

    @classmethod
    def for_run(
        cls, cfg: DictConfig, preprocessing: Preprocessing, fold: Fold | None = None
    ) -> TransferDataModule:
        """A run's data (and target domain, where it has one) as its model sees them."""
        return cls(
            cfg.dataset,
            preprocessing,
            cfg.loader,
            fold,
            seed=cfg.seed,
            target_domain=cfg.get("target_domain"),
            adapting=adaptation_node(cfg).get("_target_") is not None,
            target_labels=selection_of(cfg) == "oracle",
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:  # the model needs the class count before fit calls setup
            source = instantiate(self.source_config)
            self.splits = carve_task(source.load(self.preprocessing), self.task, self.fold)
            self.identity = {
                "source": _identity(source, self.source_config),
                "task": asdict(self.task),
                "fold": [self.fold.index, self.fold.count] if self.fold else None,
            }
            if self.target_config is not None:
                self._setup_target()
        if self.trainer is not None and stage is not None:  # Lightning's call, as a stage starts
            self._place(stage)

    def teardown(self, stage: str | None = None) -> None:
        """The stage's device copies go: what runs later (the next stage, or code reading
        these loaders outside a trainer) starts from the host tensors again."""
        self.resident.clear()

    def _place(self, stage: str) -> None:
        """Copies the in-memory splits this stage serves to its trainer's device, each where
        `data_device` says, once. Before any step: a forced split that does not fit stops here."""
        device = self.trainer.strategy.root_device
        for name, dataset in self._stage_datasets(stage):
            if not isinstance(dataset, TensorDataset):
                continue
            size = sum(tensor.nbytes for tensor in dataset.tensors)
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
            if data_device(self.device_setting, device.type, size, free, name) == "cpu":
                continue
            for tensor in dataset.tensors:
                if id(tensor) not in self.resident:
                    self.resident[id(tensor)] = (tensor, tensor.to(device))

    def _stage_datasets(self, stage: str) -> list[tuple[str, Dataset]]:
        """(name, dataset) of each split a stage's loaders serve, the target domain's too."""
        names = STAGE_SPLITS.get(stage, ())
        found = [(name, getattr(self.splits, name).dataset) for name in names]
        if self.target is not None:
            used = [n for n in names if n != "train" or self.adapting]
            found += [(f"target {n}", getattr(self.target, n).dataset) for n in used]
        return found

    def _setup_target(self) -> None:
        """The target domain, carved by its own task; its classes must be the source's."""
        config = dict(self.target_config)
        task = TaskSpec(**config.pop("task", {}))
        target = instantiate(config)
        self.target = carve_task(target.load(self.preprocessing), task)
        if self.target.class_names != self.splits.class_names:
            raise UserError(
                f"the target domain's classes {self.target.class_names} are not the dataset's "
                f"{self.splits.class_names}: adaptation transfers a classifier between "
                "domains of one task; pick the same classes (dataset.task.classes, "
                "target_domain.task.classes)"
            )
        self.identity["target"] = {"source": _identity(target, config), "task": asdict(task)}

    @property
    def dataset_digest(self) -> str:
        """16 hex digits of the sha256 of `identity`: equal for the same data, task and fold."""
        if self.identity is None:
            raise RuntimeError("dataset_digest is known after setup()")
        return json_digest(self.identity)[:16]

    def split_digest(self, split: str, target: bool = False) -> str:
        """16 hex digits that say which images one split (`train`, `val`, `test`; of the
        target domain with `target`) holds: the sha256 of the dataset's identity (an image
        folder's manifest digest included) and of the task fields and fold that carve that
        split. A change that leaves a split alone leaves its digest: the test split is held
        out before val and the folds are drawn (see splits.carve_task), and train_per_class
        and label_noise touch train alone."""
        if self.identity is None:
            raise RuntimeError("split_digest is known after setup()")
        whole = self.identity["target"] if target else self.identity
        ignored = {"train": (), "val": TRAIN_ONLY, "test": (*TRAIN_ONLY, "val_fraction")}[split]
        task = {key: value for key, value in whole["task"].items() if key not in ignored}
        fold = None if target or split == "test" else self.identity["fold"]
        domain = "target" if target else "source"  # a domain adapted to itself: two digests
        carved = {"source": whole["source"], "task": task, "fold": fold, "split": split}
        return json_digest({**carved, "domain": domain})[:16]

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
        source = self._training_loader(train, self.epoch_samples, ())
        if not self.adapting:
            return source
        images = images_only(self.target.train.dataset)
        target = self._training_loader(images, self.epoch_samples or len(train), ("target",))
        return {"source": source, "target": target}  # Lightning pairs them: one of each a step

    def _training_loader(self, dataset, samples: int | None, stream: tuple[str, ...]) -> DataLoader:
        tensors = self._served(dataset)
        batches = ShuffledBatches(
            len(dataset),
            self.batch_size,
            self.seed,
            samples,
            *self._replicas(),
            stream=stream,
            device=tensors[0].device if tensors else None,
        )
        batches.set_epoch(self.resume_at["epoch"])
        batches.skip_once(self.resume_at["batches_done"])
        return self._loader(dataset, batches, tensors)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """With a target domain, a second loader: its validation images (with their labels
        for the oracle only), for selection without target labels (see TransferModule)."""
        source = self._evaluation_loader(self.splits.val.dataset)
        if self.target is None:
            return source
        target = self.target.val.dataset
        return [
            source,
            self._evaluation_loader(target if self.target_labels else images_only(target)),
        ]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        source = self._evaluation_loader(self.splits.test.dataset)
        if self.target is None:
            return source
        return [source, self._evaluation_loader(self.target.test.dataset)]

    def _evaluation_loader(self, dataset) -> DataLoader:
        tensors = self._served(dataset)
        device = tensors[0].device if tensors else None
        batches = evaluation_batches(len(dataset), self.batch_size, *self._replicas(), device)
        return self._loader(dataset, batches, tensors)

    def _served(self, dataset: Dataset) -> tuple[torch.Tensor, ...] | None:
        """An in-memory split's tensors where its batches are gathered: the device copies
        `_place` made, else the host tensors; None for a dataset of image files."""
        if not isinstance(dataset, TensorDataset):
            return None
        served = []
        for tensor in dataset.tensors:
            host, copy = self.resident.get(id(tensor), (None, None))
            served.append(copy if host is tensor else tensor)
        return tuple(served)

    def _replicas(self) -> tuple[int, int]:
        """(processes, this one's global rank) of the trainer this module is attached to."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(
        self, dataset, batches: Sequence, tensors: tuple[torch.Tensor, ...] | None
    ) -> DataLoader:
        """In-memory `tensors` are gathered a whole batch at a time (`batch_size=None` with
        a batch sampler), on the device they live on: per-image indexing and collating cost
        more than a small model's step, and workers would only add copies. The batches are
        the same either way. Tensors already on the GPU are not pinned (only host memory
        is). Each loader has a generator of its own: starting an iteration (which draws the
        workers' seed) leaves the global RNG, and so dropout and MixUp, untouched."""
        generator = torch.Generator().manual_seed(self.seed)
        if tensors is not None:
            return DataLoader(
                TensorBatches(tensors),
                batch_size=None,
                sampler=batches,
                generator=generator,
                pin_memory=self._pinned() and tensors[0].device.type == "cpu",
            )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pinned(),
        )

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: where in the training order the run is."""
        from transferlab.compat import training_position

        epoch, done, epoch_ended = training_position(self.trainer)
        if epoch_ended:
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume_at = dict(state)

    def _pinned(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer  # set by Lightning when fit / test attach this module
        return trainer is not None and trainer.strategy.root_device.type == "cuda"


def images_only(dataset: Dataset) -> Dataset:
    """The images of a labelled dataset, without their labels: what a model adapting to an
    unlabelled domain may see of it."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(dataset.tensors[0])
    return ImagesOnly(dataset)


class ImagesOnly(Dataset):
    """An image-file dataset's (image, label) pairs, served as the image alone."""

    def __init__(self, labelled: Dataset):
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int) -> tuple[torch.Tensor]:
        return (self.labelled[index][0],)


def _dataset_config(node: DictConfig | None) -> dict[str, Any] | None:
    """A dataset node as plain data, or None where there is none (`_target_: null`)."""
    if node is None or node.get("_target_") is None:
        return None
    return OmegaConf.to_container(node, resolve=True)


def _identity(dataset: Any, config: dict[str, Any]) -> Any:
    return dataset.identity() if hasattr(dataset, "identity") else config


def worker_count(configured: int | str) -> int:
    """`auto`: a worker per thread torch may use here (its share under a parallel sweep), at
    most 8. Images read from files decode 1.4x faster with 2 workers than in the main
    process on 2 cores (bench/data_loading.py); in-memory data never uses workers."""
    if configured == "auto":
        return min(8, torch.get_num_threads())
    return configured


def data_device(setting: str, accelerator: str, size: int, free: int, split: str) -> str:
    """Where an in-memory split of `size` bytes lives while a trainer on `accelerator` (a
    torch device type) uses it: `cuda` or `cpu`. `auto` puts it on a CUDA trainer's GPU when
    it takes at most 1/AUTO_SHARE of the `free` device bytes (the rest is left to the model,
    its activations and the other splits), else leaves it on the host; `cuda` insists, and
    a split that cannot fit stops the run before training, naming itself."""
    if setting not in DATA_DEVICES:
        raise UserError(f"loader.device={setting!r} is unknown; use {one_of(DATA_DEVICES)}")
    if setting == "cpu" or (setting == "auto" and accelerator != "cuda"):
        return "cpu"
    if setting == "auto":
        return "cuda" if size * AUTO_SHARE <= free else "cpu"
    if accelerator != "cuda":
        raise UserError(
            f"loader.device=cuda but the trainer runs on {accelerator}; use trainer=gpu, or "
            "loader.device=auto (the GPU where the trainer has one)"
        )
    if size > free:
        raise UserError(
            f"loader.device=cuda: the {split} split ({_gib(size)}) does not fit in the GPU's "
            f"free memory ({_gib(free)}); use loader.device=auto (a split that does not fit "
            "stays in host memory) or loader.device=cpu"
        )
    return "cuda"


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def evaluation_batches(
    size: int,
    batch_size: int,
    num_replicas: int = 1,
    rank: int = 0,
    device: torch.device | None = None,
) -> Sequence:
    """Every image once, in order. Under DDP each process scores every `num_replicas`-th
    image (the metrics sum the counts over processes). Their batch counts may differ by
    one: an evaluation syncs the processes in its first step and at its end only, so each
    needs one batch at least (a split of at least `num_replicas` images). With a `device`
    (in-memory data): the same batches as index tensors made there, for `TensorBatches`."""
    if device is not None:
        return torch.arange(rank, size, num_replicas, device=device).split(batch_size)
    return BatchSampler(range(rank, size, num_replicas), batch_size, drop_last=False)


class ShuffledBatches(Sampler[list[int]]):
    """Training batches: a fresh permutation each epoch, drawn from a generator seeded by
    (seed, epoch) rather than from the global RNG, so that any epoch's order can be made
    again. Lightning calls `set_epoch` before each epoch. `num_samples` above the dataset's
    size cycles through several permutations (few-shot training); a last batch of one
    image is dropped, as it breaks BatchNorm in training (one value per channel).

    Under DDP (`num_replicas` processes) process `rank` takes every `num_replicas`-th batch
    of that order: a step trains on consecutive batches of it, `num_replicas` times the
    batch size. Every process must take as many steps (each one syncs them), so the last
    batches that would leave some processes one short are dropped.

    `stream` names an order of its own for the same seed (the target domain's batches),
    which leaves the orders that name none as they were.

    Batches are lists of indices, or with a `device` (in-memory data) index tensors on it:
    each epoch's order is drawn on the host as always and copied there once, so a GPU
    gathers a batch without a copy from the host per step."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        num_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        stream: tuple[str, ...] = (),
        device: torch.device | None = None,
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.device = device
        self.stream = [int.from_bytes(name.encode(), "little") for name in stream]
        self.num_samples = num_samples or size
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_once(self, batches: int) -> None:
        """The next iteration starts after `batches` batches: those a resumed run has done."""
        self.skip = batches

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return (full + (rest > 1)) // self.num_replicas

    def __iter__(self) -> Iterator[list[int] | torch.Tensor]:
        entropy = [self.seed, self.epoch, *self.stream]
        seed = np.random.SeedSequence(entropy).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        passes = math.ceil(self.num_samples / self.size)
        order = torch.cat([torch.randperm(self.size, generator=generator) for _ in range(passes)])
        order = order[: self.num_samples]
        if self.device is not None:
            order = order.to(self.device)  # once an epoch
        every = order.split(self.batch_size)
        batches = every[self.rank :: self.num_replicas][: len(self)]
        skip, self.skip = self.skip, 0
        for batch in batches[skip:]:
            yield batch if self.device is not None else batch.tolist()


class TensorBatches(Dataset):
    """A TensorDataset's tensors indexed by a batch of indices, one batch per fetch, on the
    device they live on. `index_select` gathers a batch of 64 images of 3x64x64 in ~0.1 ms
    here, where `tensor[indices]` (advanced indexing) takes ~8 ms and stacking 64 single
    images ~0.4 ms."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)  # index tensors (see ShuffledBatches) stay as they are
        return tuple(tensor.index_select(0, index) for tensor in self.tensors)
