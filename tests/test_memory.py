"""Memory stays flat over a long in-process sweep: a finished run leaves nothing alive.

Every Lightning fit installs a SIGTERM handler that holds its Trainer (and through it the
model, the data and the MLflow run). Left installed after the run, it kept each trial's
Trainer alive, the next fit chaining onto it: ~6 MB a trial of small_cnn
(bench/memory.py measures the whole sweep).
"""

from __future__ import annotations

import gc
import signal
import weakref

import pytorch_lightning as pl

from transferlab.module import TransferModule

RUN_OBJECTS = (pl.Trainer, TransferModule)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def live(kinds: tuple[type, ...]) -> list:
    """Every object of `kinds` still reachable, once garbage (cycles too) is collected."""
    gc.collect()
    return [o for o in gc.get_objects() if issubclass(type(o), kinds)]


def test_finished_runs_leave_no_trainer_model_or_signal_handler(train):
    handlers = {signum: signal.getsignal(signum) for signum in SIGNALS}
    earlier = weakref.WeakSet(live(RUN_OBJECTS))
    for seed in (1, 2):
        train(f"seed={seed}")
    assert {signum: signal.getsignal(signum) for signum in SIGNALS} == handlers
    left = [type(o).__name__ for o in live(RUN_OBJECTS) if o not in earlier]
    assert left == [], f"objects of finished runs still alive: {left}"
