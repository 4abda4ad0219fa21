"""Scoring cost: LogME on ImageNet-sized features, the largest score the ranking computes.

N = 50,000 float32 features of dimension 2,048 (a ResNet-50's pooled output) and 100
classes, drawn once with a low-dimensional class structure plus noise (the cost does not
depend on the values). One call of transferlab.transferability.SCORES["logme"], timed after a
small warm-up call; the figure is its wall time against the goal of issue 13 (under 10 s on
2 CPU cores). The baseline is that goal, not another implementation: ratio <= 1 meets it.
The process's CPU seconds are recorded too: on a machine shared with other jobs the wall
time grows, the CPU seconds (divided by the threads) much less.

    python bench/transferability.py [--samples 50000] [--dim 2048] [--classes 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from transferlab.transferability import SCORES

GOAL_SECONDS = 10.0


def task(samples: int, dim: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features with a 64-dimensional latent that decides the label, plus noise."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(samples, 64, generator=generator)
    labels = (latent @ torch.randn(64, classes, generator=generator)).argmax(dim=1)
    mixing = torch.randn(64, dim, generator=generator)
    return latent @ mixing + torch.randn(samples, dim, generator=generator), labels


def records(samples: int = 50_000, dim: int = 2_048, classes: int = 100) -> list[dict]:
    logme = SCORES["logme"]
    logme(*task(2_000, 256, 10))  # warm-up: thread pools, LAPACK
    features, labels = task(samples, dim, classes)
    start, cpu_start = time.perf_counter(), time.process_time()
    value = logme(features, labels)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return [
        {
            "case": f"LogME, {samples:,} x {dim:,} float32 features, {classes} classes",
            "metric": f"wall seconds (lower is better; goal < {GOAL_SECONDS:g})",
            "transferlab": round(seconds, 2),
            "baseline": GOAL_SECONDS,
            "ratio": round(seconds / GOAL_SECONDS, 3),
            "baseline_is": "the goal of issue 13, seconds",
            "cpu_seconds": round(cpu_seconds, 2),
            "threads": torch.get_num_threads(),
            "logme": round(value, 4),
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2_048)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    for record in records(args.samples, args.dim, args.classes):
        print(record)


if __name__ == "__main__":
    main()
