"""Things the tests write or plug in: image trees, a user's own backbone, a callback."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import yaml
from PIL import Image
from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.models.backbone import Backbone

CHROMIUM = Path("/usr/bin/chromium")  # Debian's: playwright downloads no browser
CHROMIUM_ARGS = [  # headless, and nothing that reaches out of the machine
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def write_image_folder(root: Path, classes: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """root/<class>/<i>.png: each class a distinct brightness pattern, learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[:, index * 3 : index * 3 + 3] = 250  # a class-specific bright stripe
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def tiny_backbone(width: int = 8) -> Backbone:
    """A user's own backbone, built by a function named in `backbone._target_`."""
    network = nn.Sequential()
    network.add_module("stem", nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()))
    network.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    network.add_module("fc", nn.Linear(width, 10))
    return Backbone(network, "fc", [["stem"]], Preprocessing(input_size=None), name="tiny")


class UserDigits:
    """A user's own dataset class: the digits, read through the bundled loader."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def load(self, preprocessing):
        from transferlab.data.datasets import Digits

        return Digits().load(preprocessing)


class InterruptAfterFirstEpoch(pl.Callback):
    """Stands in for a user's Ctrl-C during training."""

    def on_train_epoch_end(self, trainer, pl_module):
        raise KeyboardInterrupt


class PrunedAfterFirstEpoch(pl.Callback):
    """Stands in for an Optuna pruner stopping a poor trial: the pipeline's own exception."""

    def on_train_epoch_end(self, trainer, pl_module):
        from transferlab.pruning import TrialPruned

        raise TrialPruned(f"pruned at epoch {trainer.current_epoch}")


class FailAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("disk on fire")


class SignalAtStep(pl.Callback):
    """Sends this process a real signal after optimizer step `step`, as `kill` or a
    scheduler would. Once only: the file `once` marks it sent, so the resumed run (whose
    recorded config names this callback too) trains on."""

    def __init__(self, step: int, once: str, signal_name: str = "SIGTERM"):
        self.step, self.once, self.signal_name = step, Path(once), signal_name

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step and not self.once.exists():
            self.once.touch()
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def replace_artifact(client, run_id: str, name: str, edit: Callable, folder: Path) -> None:
    """Logs `edit` of the run's artifact `name` over it, as anyone who can write to the
    store could."""
    local = Path(client.download_artifacts(run_id, name, str(folder / "recorded")))
    tree = yaml.safe_load(local.read_text())
    edit(tree)
    doctored = folder / "doctored" / name
    doctored.parent.mkdir(parents=True)
    doctored.write_text(yaml.safe_dump(tree))
    client.log_artifact(run_id, str(doctored))
    again = client.download_artifacts(run_id, name, str(folder / "again"))
    assert yaml.safe_load(Path(again).read_text()) == tree  # the store now holds it
