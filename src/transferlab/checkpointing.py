"""Resumable training: a "last" checkpoint written periodically and when the process is
asked to stop (SIGTERM from a scheduler or `kill`, SIGINT from Ctrl-C), holding what a
resumed run needs to go on exactly as if it had never stopped.

Lightning's checkpoint has the weights, optimizer, schedulers, callbacks and loop counters;
the data module adds where in the epoch's (seeded) batch order training was;
`ResumableTraining` adds the RNG states and the running sums of the epoch's train metrics.
Every checkpoint (last.ckpt, the best one) is written by `AtomicCheckpointIO`: whole or not
at all; each last.ckpt's sha256 is tagged on the run (see tracking.digests).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins import TorchCheckpointIO

from transferlab.atomic import write_atomically
from transferlab.compat import is_local_path, training_position, uncount_last_step
from transferlab.resume import RESUME_STATE_KEY, RUN_ID_KEY, RunInterrupted
from transferlab.safe_load import refusing_unsafe_or_damaged
from transferlab.tracking.digests import LAST_CHECKPOINT, digest_tag, file_sha256
from transferlab.tracking.lightning_logger import TrackedRunLogger

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def last_checkpoint_path(stage_dir: Path) -> Path:
    return stage_dir / "checkpoints" / "last.ckpt"


def resumable_training(checkpoint: DictConfig, stage_dir: Path) -> ResumableTraining:
    return ResumableTraining(
        last_checkpoint_path(stage_dir),
        checkpoint.every_n_epochs,
        checkpoint.get("every_n_train_steps"),
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (`Trainer(plugins=[AtomicCheckpointIO()])`), but a
    crash or a full disk mid-write leaves the previous checkpoint whole: Lightning's own
    writes a temporary file in TMPDIR and moves it, which across file systems is a copy
    that a crash cuts short. Reading, a damaged or unsafe file is one line naming it."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: Lightning's
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with refusing_unsafe_or_damaged(f"checkpoint {path}"):
            return super().load_checkpoint(path, *args, **kwargs)


class ResumableTraining(Callback):
    """Writes last.ckpt and makes every checkpoint resumable exactly. One callback, not
    two: Lightning calls each callback at every hook of every step.

    - last.ckpt at the start of every `every_n_epochs`-th epoch, or every
      `every_n_train_steps` optimizer steps when that is set, so a SIGKILL loses at most
      that much. Always before a step, between batches, where everything (the data
      position too) is consistent.
    - SIGTERM / SIGINT during `fit`: the step in progress finishes, last.ckpt is written and
      `RunInterrupted` raised (the run ends KILLED). A second SIGINT interrupts at once, for
      a user who insists. The handlers are installed when training starts, after
      Lightning's own SIGTERM handler, whose stop point (after a step's validation) a
      resumed run could not match; restored at teardown.
    - Every checkpoint gets the run id, the RNG states (dropout and MixUp draw from them)
      and, taken inside an epoch, that epoch's running metric sums; put back just before the
      first step after a resume (Lightning's sanity check and loader set-up come between).
    """

    def __init__(self, path: Path, every_n_epochs: int, every_n_train_steps: int | None):
        self.path = path
        self.every_n_epochs, self.every_n_train_steps = every_n_epochs, every_n_train_steps
        self.received: str | None = None
        self.pending: dict[str, Any] | None = None  # state loaded from a checkpoint
        self.epoch_started = False
        self._previous: dict[int, Any] = {}
        self._saving = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = None
        self._previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_started = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.pending is not None:
            self._restore(pl_module)
        if self.received is not None:
            self._save(trainer)
            run_id = trainer.logger.version if trainer.logger else None
            raise RunInterrupted(self.received, trainer.global_step, self.path, run_id)
        if self._due(trainer, batch_idx):
            self._save(trainer)

    def _due(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        if self.every_n_train_steps:
            step = trainer.global_step
            return step > 0 and step % self.every_n_train_steps == 0
        epoch = trainer.current_epoch
        return batch_idx == 0 and epoch > 0 and epoch % self.every_n_epochs == 0

    def _save(self, trainer: pl.Trainer) -> None:
        self._saving = True
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._saving = False
        if trainer.is_global_zero and isinstance(trainer.logger, TrackedRunLogger):
            digest = {digest_tag(LAST_CHECKPOINT): file_sha256(self.path)}
            trainer.logger.run.set_tags(digest)  # what `resume=<run id>` checks it against

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        _, done, epoch_ended = training_position(trainer)
        sums = pl_module.epoch_sums.get("train") if done and not epoch_ended else None
        checkpoint[RESUME_STATE_KEY] = {
            RUN_ID_KEY: trainer.logger.version if trainer.logger else None,
            "rng": rng_states(),
            "train_sums": {k: v.cpu() for k, v in sums.sums.items()} if sums else None,
        }
        if self._saving:
            uncount_last_step(checkpoint)  # ours are taken before a step, not after one

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self.pending = checkpoint.get(RESUME_STATE_KEY)

    def _restore(self, pl_module: pl.LightningModule) -> None:
        if not self.epoch_started:  # resumed inside an epoch: Lightning skipped the hook
            pl_module.on_train_epoch_start()
        set_rng_states(self.pending["rng"])
        saved = self.pending["train_sums"] or {}
        pl_module.epoch_sums["train"].sums.update(
            {k: v.to(pl_module.device) for k, v in saved.items()}
        )
        self.pending = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Puts a handler back only where ours is still installed: Lightning's teardown runs
        first and restores what it found before the fit; restoring what we found over it
        (Lightning's handler, which holds its Trainer) kept every finished run's Trainer,
        model and data alive, each next fit chaining onto it (~6 MB a sweep trial)."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._note:
                signal.signal(signum, handler)
        self._previous = {}


def rng_states() -> dict[str, Any]:
    """Every RNG a run draws from, in types that load under `weights_only=True`."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))
