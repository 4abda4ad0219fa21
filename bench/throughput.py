"""Training throughput: a transferlab run against a plain PyTorch loop, in one process.

Both train the same model on the same in-memory data with the same batch size, optimizer,
precision and thread count; images/s is timed over a fixed number of steps after warm-up.
The transferlab side is the real thing: a config composed by Hydra, the Lightning module
and trainer the pipeline builds (default callbacks but the progress bar), logging to an
MLflow store.

    python bench/throughput.py [--steps 60] [--warmup 10] [--repeats 3]

Measurements alternate between the two sides and the median is kept: this machine is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from torch import nn

from transferlab.pipeline import build_backbone_and_data, build_module, build_trainer
from transferlab.tracking.lightning_logger import TrackedRunLogger
from transferlab.tracking.mlflow_run import Tracker

CASES = {
    "small_cnn, digits 8px": ["backbone=small_cnn"],
    "resnet18, digits 64px": [
        "backbone=resnet18",
        "backbone.weights=null",
        "backbone.input_size=64",
    ],
}


class StepTimer(pl.Callback):
    """Wall time between the start of step `warmup` and the end of step `warmup + steps`."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.seconds = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup + self.steps:
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def transferlab_images_per_s(overrides: list[str], warmup: int, steps: int, work: Path) -> float:
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose("train", overrides)
    cfg.output_dir = str(work)
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}", "bench")
    with tracker.start_run("throughput", {}) as run:
        trainer = build_trainer(cfg, TrackedRunLogger(run), work, "32-true")
        timer = StepTimer(warmup, steps)
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=data)
    return steps * cfg.loader.batch_size / timer.seconds


def plain_images_per_s(overrides: list[str], warmup: int, steps: int) -> float:
    """The loop one would write by hand, around the same model and data."""
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose("train", overrides)
    backbone, data = build_backbone_and_data(cfg)
    model = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, data.num_classes)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr)
    loss_fn = nn.CrossEntropyLoss()
    step, start = 0, None
    while True:
        for images, targets in data.train_dataloader():
            if step == warmup:
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), targets).backward()
            optimizer.step()
            step += 1
            if step == warmup + steps:
                return steps * cfg.loader.batch_size / (time.perf_counter() - start)


def records(steps: int = 60, warmup: int = 10, repeats: int = 3) -> list[dict]:
    """Median images/s of `repeats` alternating measurements of each side, per case."""
    common = ["~callbacks.progress_bar", "trainer.max_epochs=1000", "loader.epoch_samples=64000"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, overrides in CASES.items():
            plain, ours = [], []
            for repeat in range(repeats):
                plain.append(plain_images_per_s([*common, *overrides], warmup, steps))
                work = Path(tmp) / f"{case.split(',')[0]}-{repeat}"
                ours.append(transferlab_images_per_s([*common, *overrides], warmup, steps, work))
            results.append(_record(case, statistics.median(ours), statistics.median(plain)))
    return results


def _record(case: str, ours: float, plain: float) -> dict:
    batch = 64
    overhead_ms = 1000 * batch * (1 / ours - 1 / plain)
    return {
        "case": f"training throughput, {case}",
        "metric": "images/s (higher is better)",
        "transferlab": round(ours, 1),
        "baseline": round(plain, 1),
        "ratio": round(ours / plain, 3),
        "overhead_ms_per_step": round(overhead_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for record in records(args.steps, args.warmup, args.repeats):
        print(record)


if __name__ == "__main__":
    main()
