"""MLflow logging overhead: the same training with tracking on and off.

On: the run the pipeline makes (an MLflow run in a sqlite store, our Lightning logger writing
every epoch's metrics and learning rates, the best checkpoint uploaded at the end). Off: the
same Trainer with `logger=False` (and no learning-rate monitor, which only feeds the logger).
Same config, seed, data and callbacks otherwise; the wall time of fit + checkpoint upload is
compared, median of alternating repeats.

    python bench/tracking_overhead.py [--epochs 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from transferlab.builders import build_backbone_and_data, build_module, build_trainer
from transferlab.tracking.lightning_logger import TrackedRunLogger
from transferlab.tracking.mlflow_run import Tracker

OVERRIDES = ["~callbacks.progress_bar", "callbacks.early_stopping=null"]


def fit_seconds(epochs: int, work: Path, tracked: bool) -> float:
    # the learning-rate monitor only feeds the logger: it is part of what tracking costs
    untracked = [] if tracked else ["callbacks.lr_monitor=null"]
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose("train", [*OVERRIDES, *untracked, f"trainer.max_epochs={epochs}"])
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    if not tracked:
        trainer = build_trainer(cfg, False, work, "32-true")
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        return time.perf_counter() - start
    start = time.perf_counter()
    tracker = Tracker(f"sqlite:///{work.parent / 'mlflow.db'}", "bench_tracking")
    with tracker.start_run("tracked", {}) as run:
        trainer = build_trainer(cfg, TrackedRunLogger(run), work, "32-true")
        trainer.fit(module, datamodule=data)
        run.log_artifact(trainer.checkpoint_callback.best_model_path, "checkpoints")
    return time.perf_counter() - start


def records(epochs: int = 10, repeats: int = 3) -> list[dict]:
    on, off = [], []
    with tempfile.TemporaryDirectory() as tmp:
        fit_seconds(1, Path(tmp) / "warmup", tracked=True)  # the store's creation, once
        for repeat in range(repeats):
            off.append(fit_seconds(epochs, Path(tmp) / f"off{repeat}", tracked=False))
            on.append(fit_seconds(epochs, Path(tmp) / f"on{repeat}", tracked=True))
    on_s, off_s = statistics.median(on), statistics.median(off)
    return [
        {
            "case": f"MLflow on vs off, small_cnn digits, {epochs} epochs",
            "metric": "wall seconds of fit + checkpoint upload (lower is better; goal <= 1.03)",
            "transferlab": round(on_s, 3),
            "baseline": round(off_s, 3),
            "ratio": round(on_s / off_s, 4),
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for record in records(args.epochs, args.repeats):
        print(record)


if __name__ == "__main__":
    main()
