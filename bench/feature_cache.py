"""How much the frozen-feature cache saves on a sweep of head trials.

Runs the same N-trial linear-probe sweep (resnet18, random weights: the cost is the same as
pretrained ones, and it runs offline) through the real task function twice, in this one
process: with the cache (a fresh cache folder, so the first trial computes the features)
and without it (the backbone in every step).

    python bench/feature_cache.py [--trials 10] [--epochs 10] [--input-size 64]

What the cache saves is the backbone's forward pass in every step of every epoch; what it
cannot save is each trial's fixed cost (config, data split, MLflow run, plots, ~0.9 s here).
So the speed-up grows with epochs and image size: at 64 px (the throughput case's size) and
10 epochs of head training, a modest linear probe, it measured 21x here (README).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from transferlab.train import run


def sweep(trials: int, overrides: list[str], workdir: Path) -> float:
    """Wall time of `trials` head trials (learning rates 1e-4 .. 1e-1)."""
    start = time.perf_counter()
    for trial in range(trials):
        lr = 10 ** (-4 + 3 * trial / max(trials - 1, 1))
        GlobalHydra.instance().clear()
        with initialize_config_module("transferlab.conf", version_base="1.3"):
            cfg = compose("train", [*overrides, f"optimizer.lr={lr}"], return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.output_dir = str(workdir / f"trial{trial}")
        run(cfg)
    return time.perf_counter() - start


def records(trials: int = 10, epochs: int = 10, input_size: int = 64) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = [
            "backbone=resnet18",
            "backbone.weights=null",
            f"backbone.input_size={input_size}",
            "freeze=linear_probe",
            "~callbacks.progress_bar",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
            "experiment_name=bench_feature_cache",
        ]
        trained = [*common, f"trainer.max_epochs={epochs}"]
        warmup = [*common, "trainer.max_epochs=1", "feature_cache.enabled=false"]
        sweep(1, warmup, work / "warmup")  # imports, MLflow store
        cached = sweep(
            trials,
            [*trained, "feature_cache.enabled=true", f"feature_cache.dir={work / 'cache'}"],
            work / "cached",
        )
        uncached = sweep(trials, [*trained, "feature_cache.enabled=false"], work / "plain")
    return [
        {
            "case": f"{trials}-trial linear-probe sweep, resnet18 {input_size}px, {epochs} epochs",
            "metric": "wall seconds with / without the feature cache (lower is better)",
            "transferlab": round(cached, 2),
            "baseline": round(uncached, 2),
            "ratio": round(cached / uncached, 4),
            "speedup": round(uncached / cached, 1),
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=64)
    args = parser.parse_args()
    for record in records(args.trials, args.epochs, args.input_size):
        print(record)


if __name__ == "__main__":
    main()
