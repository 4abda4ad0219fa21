"""Training throughput: a transferlab run against a plain PyTorch loop, in one process.

Both train the same model on the same in-memory data with the same batch size, optimizer,
precision and thread count; images/s is timed over a fixed number of steps after warm-up.
Cases: small_cnn on digits (per-step framework cost dominates), resnet18 at 64 px on
synthetic images, and resnet18 as a frozen linear probe with the backbone in every step.
The transferlab side is the real thing: a config composed by Hydra, the Lightning module
and trainer the pipeline builds (default callbacks but the progress bar), logging to an
MLflow store.

    python bench/throughput.py [--steps 60] [--warmup 10] [--repeats 3]

Measurements alternate between the two sides and the median is kept: this machine is noisy.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import nn

from transferlab.builders import (
    build_backbone_and_data,
    build_module,
    build_trainer,
    resolve_precision,
)
from transferlab.components import build
from transferlab.tracking.lightning_logger import TrackedRunLogger
from transferlab.tracking.mlflow_run import Tracker

RESNET18_64 = ["backbone=resnet18", "backbone.weights=null", "backbone.input_size=64"]
CASES = {
    "small_cnn, digits 8px": ["backbone=small_cnn"],
    "resnet18, synthetic 64px": [*RESNET18_64, "dataset=synthetic"],
    # the backbone in every step (no feature cache), so both sides do the same work
    "resnet18 linear probe, synthetic 64px": [
        *RESNET18_64,
        "dataset=synthetic",
        "freeze=linear_probe",
        "feature_cache.enabled=false",
    ],
}
# an epoch long enough for warm-up and steps; no progress bar (a plain loop prints nothing)
COMMON = ["~callbacks.progress_bar", "trainer.max_epochs=1000", "loader.epoch_samples=64000"]


def synchronize() -> None:
    """CUDA work is asynchronous: the host reaches a step's end before the GPU does."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time between the start of step `warmup` and the end of step `warmup + steps`."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.seconds = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup + self.steps:
            synchronize()
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


class MemoryPeak:
    """Peak GPU memory allocated while in the block, on top of what was there before it
    (None without a GPU)."""

    def __enter__(self) -> MemoryPeak:
        gc.collect()
        self.mib = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            self.mib = (torch.cuda.max_memory_allocated() - self.before) / 2**20


def config(overrides: list[str], work: Path) -> DictConfig:
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose("train", [*COMMON, *overrides])
    cfg.output_dir = str(work)
    return cfg


def transferlab_side(
    cfg: DictConfig, warmup: int, steps: int, work: Path
) -> tuple[float, MemoryPeak]:
    """images/s of the real thing: pipeline-built module and trainer, logging to MLflow."""
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}", "bench")
    with MemoryPeak() as memory, tracker.start_run("throughput", {}) as run:
        precision = resolve_precision(cfg.trainer.precision)
        trainer = build_trainer(cfg, TrackedRunLogger(run), work, precision)
        timer = StepTimer(warmup, steps)
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=data)
    return steps * cfg.loader.batch_size / timer.seconds, memory


def plain_side(cfg: DictConfig, warmup: int, steps: int) -> tuple[float, MemoryPeak]:
    """The loop one would write by hand around the same model, data loader, precision
    (autocast for bf16-mixed), memory layout, optimizer and compilation (the backbone, in
    place, as `trainer.gpu.compile` does)."""
    backbone, data = build_backbone_and_data(cfg)
    if cfg.trainer.gpu.get("compile"):
        backbone.compile()
    head = nn.Linear(backbone.feature_dim, data.num_classes)
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    layout = torch.channels_last if cfg.trainer.gpu.channels_last else torch.contiguous_format
    model = nn.Sequential(backbone, head).to(device, memory_format=layout).train()
    frozen = build(cfg.freeze, "freeze").is_always_frozen(backbone.num_stages, 1)
    if frozen:  # the frozen backbone (linear_probe) as one would freeze it
        backbone.eval().requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.optimizer.lr)
    loss_fn = nn.CrossEntropyLoss()
    bf16 = cfg.trainer.precision == "bf16-mixed"
    data.pin_memory = device.type == "cuda"  # as the data module does under a GPU trainer
    # on a GPU the data lives there, as transferlab's loader.device=auto puts it (copied at
    # the first batch: inside the memory measurement, as transferlab's at its setup)
    cuda = device.type == "cuda"
    batches = resident_batches(data, device) if cuda else host_batches(data)
    step, start = 0, None
    with MemoryPeak() as memory:
        for images, targets in batches:
            if step == warmup:
                synchronize()
                start = time.perf_counter()
            images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext():
                loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup + steps:
                break
        synchronize()
        seconds = time.perf_counter() - start
    return steps * cfg.loader.batch_size / seconds, memory


def host_batches(data) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The data module's training loader, epoch after epoch."""
    while True:
        yield from data.train_dataloader()


def resident_batches(data, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train split copied to `device` once (at the first batch), then a permutation made
    there each epoch and one index_select per batch (the last short batch dropped)."""
    images, targets = (t.to(device) for t in data.splits.train.dataset.tensors)
    size = data.batch_size
    while True:
        order = torch.randperm(len(images), device=device)
        for begin in range(0, len(order) - size + 1, size):
            index = order[begin : begin + size]
            yield images.index_select(0, index), targets.index_select(0, index)


class BareModule(pl.LightningModule):
    """The least a Lightning user writes: no metrics, no logging, no callbacks."""

    def __init__(self, model: nn.Module, lr: float):
        super().__init__()
        self.model, self.lr = model, lr
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return self.loss_fn(self.model(images), targets)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def bare_lightning_side(cfg: DictConfig, warmup: int, steps: int) -> float:
    """A bare Lightning Trainer around the same model and data (CPU, 32-bit)."""
    backbone, data = build_backbone_and_data(cfg)
    model = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, data.num_classes))
    timer = StepTimer(warmup, steps)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=cfg.trainer.max_epochs,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=cfg.trainer.deterministic,
    )
    trainer.fit(BareModule(model, cfg.optimizer.lr), train_dataloaders=data.train_dataloader())
    return steps * cfg.loader.batch_size / timer.seconds


def records(steps: int = 60, warmup: int = 10, repeats: int = 3) -> list[dict]:
    """Median images/s of `repeats` alternating measurements of each side, per case; for
    small_cnn also a bare Lightning Trainer, the floor of any Lightning-based tool."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, overrides in CASES.items():
            plain, ours, bare = [], [], []
            for repeat in range(repeats):
                work = Path(tmp) / f"{case.split(',')[0]}-{repeat}"
                plain.append(plain_side(config(overrides, work), warmup, steps)[0])
                ours.append(transferlab_side(config(overrides, work), warmup, steps, work)[0])
                if case.startswith("small_cnn"):
                    bare.append(bare_lightning_side(config(overrides, work), warmup, steps))
            bare_median = statistics.median(bare) if bare else None
            results.append(
                _record(case, statistics.median(ours), statistics.median(plain), bare_median)
            )
    return results


def _record(case: str, ours: float, plain: float, bare: float | None, batch: int = 64) -> dict:
    record = {
        "case": f"training throughput, {case}",
        "metric": "images/s (higher is better)",
        "transferlab": round(ours, 1),
        "baseline": round(plain, 1),
        "ratio": round(ours / plain, 3),
        "overhead_ms_per_step": round(1000 * batch * (1 / ours - 1 / plain), 2),
    }
    if bare is not None:
        record |= {"bare_lightning": round(bare, 1), "bare_lightning_ratio": round(bare / plain, 3)}
    return record


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
