"""GPU check: transferlab on a CUDA GPU, against a plain PyTorch loop, and end to end.

1. Throughput: a resnet50 fine-tune at 224x224 on the synthetic dataset, bf16-mixed and
   channels_last (the `trainer=gpu` config), as transferlab runs it (a config composed by
   Hydra, the pipeline's build_* functions, a Lightning Trainer logging to MLflow) and as a
   plain PyTorch loop with the same model, data loader, batch size, precision
   (torch.autocast bf16), optimizer and memory layout. Images/s over a fixed number of
   steps after warm-up (the GPU synchronised at both ends; median of alternating repeats)
   and peak GPU memory (torch.cuda.max_memory_allocated, reset before each side).
2. End to end: a 2-epoch digits run with `trainer=gpu` through the real entry point
   (`python -m transferlab.train`), its status and test/acc read back from MLflow.

One table at the end; exit code 1 if a part failed. Run it through bench/gpu_check.sh,
which finds a Python with everything installed. `--cpu`: a dry run on the CPU at tiny sizes
(resnet18 at 32 px, a few steps, 32-true, trainer=cpu) through the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from transferlab.config import check_accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # bench/throughput.py: both sides of the CPU benchmark, device-aware


@dataclass(frozen=True)
class Sizes:
    overrides: tuple[str, ...]  # the throughput case, on top of the trainer group
    label: str
    batch: int
    warmup: int
    steps: int
    repeats: int


GPU = Sizes(
    overrides=(
        "trainer=gpu",
        "trainer.precision=bf16-mixed",
        "trainer.gpu.channels_last=true",
        "backbone=resnet50",
        "backbone.weights=null",  # nothing to download on a machine without internet
        "backbone.input_size=224",
        "dataset.num_images=1280",  # 770 MB of float32 images in host memory
    ),
    label="resnet50 224px bf16-mixed channels_last",
    batch=128,
    warmup=15,
    steps=60,
    repeats=3,
)
CPU = Sizes(
    overrides=(
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.gpu.channels_last=true",  # the same code path as on the GPU
        "backbone=resnet18",
        "backbone.weights=null",
        "backbone.input_size=32",
        "dataset.num_images=160",
    ),
    label="resnet18 32px 32-true channels_last (CPU dry run)",
    batch=16,
    warmup=2,
    steps=4,
    repeats=1,
)
# Both sides: synthetic images, no scheduler (a plain loop has none).
COMMON = ("dataset=synthetic", "scheduler=none")


def throughput_record(sizes: Sizes, work: Path) -> dict:
    """Median images/s and the largest peak memory of alternating repeats of each side."""
    ours, plain, ours_mem, plain_mem = [], [], [], []
    overrides = [*COMMON, *sizes.overrides, f"loader.batch_size={sizes.batch}"]
    for repeat in range(sizes.repeats):  # alternating: drifting clocks hit both sides alike
        cfg = throughput.config(overrides, work / f"plain-{repeat}")
        check_accelerator(cfg.trainer.accelerator)
        rate, memory = throughput.plain_side(cfg, sizes.warmup, sizes.steps)
        plain.append(rate)
        plain_mem.append(memory.mib)
        side_work = work / f"transferlab-{repeat}"
        cfg = throughput.config(overrides, side_work)
        rate, memory = throughput.transferlab_side(cfg, sizes.warmup, sizes.steps, side_work)
        ours.append(rate)
        ours_mem.append(memory.mib)
    return {
        "case": sizes.label,
        "batch": sizes.batch,
        "transferlab_images_per_s": statistics.median(ours),
        "plain_images_per_s": statistics.median(plain),
        "transferlab_peak_mib": max(ours_mem) if ours_mem[0] is not None else None,
        "plain_peak_mib": max(plain_mem) if plain_mem[0] is not None else None,
    }


def digits_run(cpu: bool, work: Path, uri: str) -> dict:
    """A 2-epoch digits run through `python -m transferlab.train`, read back from MLflow."""
    experiment = "gpu_check_digits"
    command = [
        sys.executable,
        "-m",
        "transferlab.train",
        f"trainer={'cpu' if cpu else 'gpu'}",
        "trainer.max_epochs=2",
        "~callbacks.progress_bar",
        f"experiment_name={experiment}",
        f"tracking.uri={uri}",
        f"hydra.run.dir={work / 'hydra'}",
    ]
    started = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if cpu else {})}
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    record = {"command": " ".join(command[1:]), "exit_code": result.returncode, "seconds": seconds}
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    if result.returncode != 0 or not runs:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
    if runs:
        run = runs[0]
        record.update(
            status=run.info.status,
            test_acc=run.data.metrics.get("test/acc"),
            device=run.data.tags.get("device"),
            precision=run.data.params.get("trainer.precision"),
        )
    return record


def print_table(speed: dict, digits: dict, header: str) -> None:
    def ratio(ours, plain):
        return f"{ours / plain:.3f}" if ours and plain else "n/a"

    def mib(value):
        return f"{value:.0f}" if value is not None else "n/a (no GPU)"

    print(f"\n{header}")
    print("| check | transferlab | plain PyTorch | ratio |")
    print("|---|---|---|---|")
    if "error" in speed:
        print(f"| {speed['case']}: images/s, peak GPU memory | FAILED: {speed['error']} | - | - |")
    else:
        ours, plain = speed["transferlab_images_per_s"], speed["plain_images_per_s"]
        ours_mem, plain_mem = speed["transferlab_peak_mib"], speed["plain_peak_mib"]
        print(
            f"| {speed['case']}, batch {speed['batch']}: images/s | {ours:.1f} | {plain:.1f} | "
            f"{ratio(ours, plain)} |"
        )
        print(
            f"| same: peak GPU memory (MiB) | {mib(ours_mem)} | {mib(plain_mem)} | "
            f"{ratio(ours_mem, plain_mem)} |"
        )
    acc = digits.get("test_acc")
    outcome = digits.get("status") or f"FAILED: {digits.get('error', 'no MLflow run')}"
    outcome += f", test/acc {acc:.4f}" if acc is not None else ", test/acc missing"
    print(
        f"| digits, 2 epochs, `python -m transferlab.train` on {digits.get('device')} "
        f"({digits.get('precision')}): MLflow status, test/acc | {outcome} | - | - |"
    )
    seconds = digits.get("seconds")
    print(f"| same: wall time, start to exit (s) | {seconds or float('nan'):.1f} | - | - |")


def attempt(part, label: str, *args) -> dict:
    """One part of the check; a failure is printed and recorded, and the other part runs."""
    started = time.perf_counter()
    try:
        record = part(*args)
    except Exception as error:
        traceback.print_exc()
        record = {"case": label, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    print(f"gpu_check: {label} done in {time.perf_counter() - started:.0f} s")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU, tiny sizes")
    parser.add_argument("--work", type=Path, help="keep outputs (MLflow store) here")
    parser.add_argument("--repeats", type=int, help="alternating repeats of each side")
    args = parser.parse_args()
    sizes = CPU if args.cpu else GPU
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; run with --cpu for a dry run", file=sys.stderr)
        return 1
    if args.cpu:  # checks code paths, not speed: one thread stays quick on a shared machine
        torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    speed = attempt(throughput_record, sizes.label, sizes, work)
    digits = attempt(digits_run, "digits run", args.cpu, work, uri)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()
    header = (
        f"gpu_check on {device}{' (CPU dry run)' if args.cpu else ''}: torch {torch.__version__}, "
        f"Lightning {pl.__version__}, Python {platform.python_version()}"
    )
    records = {"header": header, "throughput": speed, "digits": digits}
    (work / "gpu_check.json").write_text(json.dumps(records, indent=2))
    print_table(speed, digits, header)
    if args.work:
        print(f"\nrecords: {work / 'gpu_check.json'}; MLflow store: {uri}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    passed = "error" not in speed and digits.get("status") == "FINISHED"
    return 0 if passed and digits.get("exit_code") == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
