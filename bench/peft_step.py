"""Cost of a LoRA training step (issue 14): vit_b_16 at 224 px, random weights, against the
same network frozen with a linear head, the cheapest way to train on it.

Cases, each forward + cross-entropy + backward + AdamW step on one fixed batch:
- frozen: plain PyTorch, torchvision's vit_b_16 in eval mode with requires_grad off and an
  nn.Linear head (the baseline; its backward stops at the head);
- frozen, backward to the input: the same, with the gradient carried back through every
  block to the images; this is the least any method that trains inside the network pays
  (LoRA, adapters, prompts), since their gradients need the blocks' input gradients;
- LoRA r=8: transferlab's own path, build_backbone('vit_b_16') adapted by
  transferlab.finetune.peft.LoRA, AdamW over its always_trained parameters and the head;
- full fine-tune: plain PyTorch, every parameter trained.

Times: the cases alternate, one step each per round (this machine is shared and noisy);
the median of the timed rounds after warm-up. A vit_b_16 step at 224 px takes seconds on
two CPU cores, so the CPU default is batch 1 and 5 timed rounds (about a minute and a half
in all); on CUDA batch 32 and 20 rounds. Peak memory: each case in a fresh process, so
allocator pools never carry over; on the CPU the resident high-water mark over two steps
(reset just before them through /proc/self/clear_refs) minus the resident memory before
them, on CUDA torch.cuda.max_memory_allocated over what was allocated before: what training
adds on top of the loaded weights (gradients, optimizer state, saved activations).

    python bench/peft_step.py [--batch N] [--warmup N] [--steps N]

Not named peft.py: run from bench/, it would shadow the peft library LoRA is built on.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from transferlab.finetune.peft import LoRA
from transferlab.models.backbones import build_backbone

ARCH, INPUT_SIZE, CLASSES, LORA_RANK = "vit_b_16", 224, 10, 8
WIDTH = 768  # vit_b_16's features, what the head reads
GOAL_RATIO = 1.15  # issue 14: a LoRA step costs at most this times the frozen + linear step
CASES = ("frozen", "frozen, backward to the input", f"LoRA r={LORA_RANK}", "full fine-tune")
BASELINE, FLOOR, LORA_CASE, FULL = CASES
MB = 1e6
DEFAULTS = {"cpu": (1, 1, 5), "cuda": (32, 3, 20)}  # batch, warm-up rounds, timed rounds


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    """CUDA work is asynchronous: the host reaches a step's end before the GPU does."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_vit() -> nn.Module:
    """torchvision's vit_b_16 without its classifier, as one would write it by hand."""
    network = torchvision.models.vit_b_16(weights=None)
    network.heads = nn.Identity()
    return network


def lora_vit() -> tuple[nn.Module, list[nn.Parameter]]:
    """The network and its trained parameters as a `freeze=lora` run sets them up: every
    backbone weight frozen, then the strategy's own parameters trained."""
    backbone = build_backbone(ARCH)
    lora = LoRA(r=LORA_RANK)
    lora.adapt(backbone)
    backbone.requires_grad_(False)
    trained = lora.always_trained(backbone.network)
    for parameter in trained:
        parameter.requires_grad_(True)
    return backbone, trained


def training_step(case: str, batch: int) -> Callable[[], None]:
    """One training step of `case` on a fixed random batch, as a call."""
    if case == LORA_CASE:
        network, trained = lora_vit()
    else:
        network = plain_vit()
        if case == FULL:
            trained = list(network.parameters())
        else:
            network.eval().requires_grad_(False)
            trained = []
    head = nn.Linear(WIDTH, CLASSES)
    model = nn.Sequential(network, head).to(device())
    optimizer = torch.optim.AdamW([*trained, *head.parameters()], lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=generator).to(device())
    targets = torch.randint(CLASSES, (batch,), generator=generator).to(device())
    images.requires_grad_(case == FLOOR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        images.grad = None
        loss_fn(model(images), targets).backward()
        optimizer.step()

    return step


def milliseconds_per_step(batch: int, warmup: int, steps: int) -> dict[str, float]:
    """Median ms per step of each case; one step of every case per round."""
    calls = {case: training_step(case, batch) for case in CASES}
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for round_index in range(warmup + steps):
        for case, step in calls.items():
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            if round_index >= warmup:
                times[case].append(1000 * (time.perf_counter() - start))
    return {case: statistics.median(values) for case, values in times.items()}


def _resident_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field))


def peak_mb(case: str, batch: int) -> float:
    """Memory two training steps of `case` add at their peak over what was there before,
    in this process (run it in a fresh one)."""
    step = training_step(case, batch)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(2):
            step()
        return (torch.cuda.max_memory_allocated() - before) / MB
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
    before = _resident_kb("VmRSS:")
    for _ in range(2):
        step()
    return (_resident_kb("VmHWM:") - before) * 1024 / MB


def peak_mb_in_fresh_process(case: str, batch: int) -> float:
    command = [sys.executable, __file__, "--peak-of", case, "--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def records(
    batch: int | None = None, warmup: int | None = None, steps: int | None = None
) -> list[dict]:
    """The step-time and the peak-memory records; None takes the device's default."""
    defaults = DEFAULTS[device().type]
    batch, warmup, steps = (
        default if value is None else value
        for value, default in zip((batch, warmup, steps), defaults, strict=True)
    )
    ms = milliseconds_per_step(batch, warmup, steps)
    peaks = {case: peak_mb_in_fresh_process(case, batch) for case in CASES}
    where = f"{ARCH} {INPUT_SIZE}px, batch {batch}, random weights, {device().type}"
    return [
        {
            "case": f"LoRA r={LORA_RANK} training step, {where}",
            "metric": f"ms/step vs frozen backbone + linear head (goal ratio <= {GOAL_RATIO})",
            "transferlab": round(ms[LORA_CASE], 1),
            "baseline": round(ms[BASELINE], 1),
            "ratio": round(ms[LORA_CASE] / ms[BASELINE], 3),
            "backward_to_input_ms": round(ms[FLOOR], 1),
            "backward_to_input_ratio": round(ms[FLOOR] / ms[BASELINE], 3),
            "lora_over_backward_to_input": round(ms[LORA_CASE] / ms[FLOOR], 3),
            "full_finetune_ms": round(ms[FULL], 1),
            "full_finetune_ratio": round(ms[FULL] / ms[BASELINE], 3),
            "timed_steps": steps,
        },
        {
            "case": f"LoRA r={LORA_RANK} training memory, {where}",
            "metric": "peak MB a training step adds over the loaded model, vs full fine-tune",
            "transferlab": round(peaks[LORA_CASE], 1),
            "baseline": round(peaks[FULL], 1),
            "ratio": round(peaks[LORA_CASE] / peaks[FULL], 3),
            "baseline_is": "full fine-tune, peak MB",
            "frozen_linear_peak_mb": round(peaks[BASELINE], 1),
            "backward_to_input_peak_mb": round(peaks[FLOOR], 1),
            "peak_is": "CUDA max allocated" if torch.cuda.is_available() else "CPU resident",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, help="default: 1 on the CPU, 32 on CUDA")
    parser.add_argument("--warmup", type=int, help="default: 1 on the CPU, 3 on CUDA")
    parser.add_argument("--steps", type=int, help="default: 5 on the CPU, 20 on CUDA")
    parser.add_argument("--peak-of", choices=CASES, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.peak_of:
        print(json.dumps(peak_mb(args.peak_of, args.batch or DEFAULTS[device().type][0])))
        return
    for record in records(args.batch, args.warmup, args.steps):
        print(record)


if __name__ == "__main__":
    main()
