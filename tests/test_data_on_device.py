"""Data on the device (`loader.device`): in-memory splits copied once to the trainer's GPU and
gathered there; on the CPU the same gather, with the same results as before."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from tests.conftest import runs_of
from transferlab.data.module import ShuffledBatches, TensorBatches, TransferDataModule, data_device
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

GIB = 2**30
NATIVE = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=None)
DIGITS = OmegaConf.create({"_target_": "transferlab.data.datasets.Digits"})
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    ("setting", "accelerator", "size", "free", "expected"),
    [
        ("auto", "cuda", GIB, 4 * GIB, "cuda"),  # a quarter of the free memory: fits
        ("auto", "cuda", GIB + 1, 4 * GIB, "cpu"),  # a byte more: stays on the host
        ("auto", "cpu", 1, 0, "cpu"),  # no GPU
        ("auto", "mps", 1, 0, "cpu"),  # a GPU that is not CUDA's
        ("cpu", "cuda", 1, 4 * GIB, "cpu"),  # forced onto the host
        ("cuda", "cuda", 3 * GIB, 4 * GIB, "cuda"),  # forced: all the free memory may be taken
    ],
)
def test_where_a_split_lives(setting, accelerator, size, free, expected):
    assert data_device(setting, accelerator, size, free, "train") == expected


@pytest.mark.parametrize(
    ("setting", "accelerator", "size", "named"),
    [
        ("cuda", "cuda", 5 * GIB, ["loader.device=cuda", "val split (5.00 GiB)", "(4.00 GiB)"]),
        ("cuda", "cpu", 1, ["loader.device=cuda", "runs on cpu", "loader.device=auto"]),
        ("gpu", "cuda", 1, ["loader.device='gpu' is unknown", "auto, cpu or cuda"]),
    ],
)
def test_a_split_forced_where_it_cannot_go_is_one_line(setting, accelerator, size, named):
    with pytest.raises(UserError) as raised:
        data_device(setting, accelerator, size, 4 * GIB, "val")
    message = str(raised.value)
    assert "\n" not in message and all(part in message for part in named), message


SEEN: list[dict] = []


class GatherSpy(pl.Callback):
    """What a training step is given, and what the loader it came from is."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        data, loader = trainer.datamodule, trainer.train_dataloader
        images, targets = batch
        order = ShuffledBatches(len(data.splits.train), data.batch_size, data.seed)
        order.set_epoch(trainer.current_epoch)
        index = torch.as_tensor(list(order)[batch_idx])
        train = data.splits.train.dataset.tensors
        SEEN.append(
            {
                "devices": {images.device.type, targets.device.type},
                "gathered": torch.equal(images.cpu(), train[0].index_select(0, index))
                and torch.equal(targets.cpu(), train[1].index_select(0, index)),
                "one_fetch_a_batch": isinstance(loader.dataset, TensorBatches)
                and loader.batch_size is None,
                "workers": loader.num_workers,
                "copies": len(data.resident),
            }
        )


def test_cpu_and_auto_serve_the_same_index_select_batches_and_train_identically(
    train, client, experiment
):
    """On the CPU, `auto` keeps the splits on the host: every batch a step sees is the
    index_select gather of the seeded order, in the main process, and the runs' metrics are
    equal to the last bit (and equal to the runs before loader.device existed: checked by
    hand, see the report of issue 17)."""
    SEEN.clear()
    spy = "+callbacks.spy._target_=tests.test_data_on_device.GatherSpy"
    train("loader.device=cpu", spy)
    on_cpu = len(SEEN)
    train(spy)  # auto, the default
    assert on_cpu > 0 and len(SEEN) == 2 * on_cpu
    for seen in SEEN:
        assert seen == {
            "devices": {"cpu"},
            "gathered": True,
            "one_fetch_a_batch": True,
            "workers": 0,
            "copies": 0,
        }
    forced, auto = (run.data.metrics for run in runs_of(client, experiment))
    timeless = {k: v for k, v in forced.items() if not k.startswith(("time/", "inference/"))}
    assert "test/acc" in timeless and "train/loss" in timeless
    assert timeless == {k: auto[k] for k in timeless}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_data_forced_onto_a_missing_gpu_is_one_line_before_any_run(train, client, experiment):
    with pytest.raises(UserError) as raised:
        train("loader.device=cuda", "trainer.accelerator=auto")
    message = str(raised.value)
    assert "\n" not in message
    assert "loader.device=cuda" in message and "no CUDA GPU" in message
    assert "loader.device=auto" in message and "loader.device=cpu" in message
    assert runs_of(client, experiment) == []


def test_an_unknown_data_device_is_one_line_before_any_run(train, client, experiment):
    with pytest.raises(UserError) as raised:
        train("loader.device=gpu0")
    assert str(raised.value) == "loader.device='gpu0' is unknown; use auto, cpu or cuda"
    assert runs_of(client, experiment) == []


class TinyClassifier(pl.LightningModule):
    """A linear classifier that notes each batch as its loader hands it over, before
    Lightning moves it to the model's device."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)
        self.before_transfer: list[dict] = []
        self.steps = 0

    def on_before_batch_transfer(self, batch, dataloader_idx):
        images, targets = batch
        data = self.trainer.datamodule
        self.before_transfer.append(
            {
                "devices": {images.device.type, targets.device.type},
                "resident": sorted({copy.device.type for _, copy in data.resident.values()}),
                "pinned": self.trainer.train_dataloader.pin_memory,
            }
        )
        return batch

    def training_step(self, batch, batch_idx):
        self.steps += 1
        images, targets = batch
        return F.cross_entropy(self.linear(images.flatten(1)), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def digits_module(device: str) -> TransferDataModule:
    loader = OmegaConf.create({"batch_size": 64, "num_workers": 0, "device": device})
    data = TransferDataModule(DIGITS, NATIVE, loader)
    data.setup()
    return data


def bare_trainer(folder, **options) -> pl.Trainer:
    """A Trainer with nothing but training: no logger, checkpoints, bar or validation."""
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=folder,
        **options,
    )


def test_a_forced_gpu_stops_a_cpu_trainer_at_setup_before_any_step(tmp_path):
    """Past the config check (a data module built by hand): the trainer's own device."""
    model = TinyClassifier()
    trainer = bare_trainer(tmp_path, accelerator="cpu", max_epochs=1)
    with pytest.raises(UserError, match=r"^loader.device=cuda but the trainer runs on cpu; "):
        trainer.fit(model, datamodule=digits_module("cuda"))
    assert model.steps == 0


@pytest.mark.gpu
@no_cuda
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_splits_live_on_the_gpu_and_no_step_copies_from_the_host(tmp_path, device):
    """Every batch is on the GPU before Lightning's transfer_batch_to_device (which then has
    nothing to copy), gathered from split tensors on the GPU, not pinned; the copies go at
    the stage's end."""
    model = TinyClassifier()
    data = digits_module(device)
    trainer = bare_trainer(tmp_path, accelerator="gpu", devices=1, max_epochs=2)
    trainer.fit(model, datamodule=data)
    assert model.steps == len(model.before_transfer) > 0
    for seen in model.before_transfer:
        assert seen == {"devices": {"cuda"}, "resident": ["cuda"], "pinned": False}
    assert data.resident == {}  # dropped at teardown
    images, _ = next(iter(data.test_dataloader()))
    assert images.device.type == "cpu"  # outside a trainer's stage: the host tensors
