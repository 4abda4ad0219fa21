"""GPU check: transferlab on a CUDA GPU, against a plain PyTorch loop, and end to end.

1. Throughput: a resnet50 fine-tune at 224x224 on synthetic data resident on the GPU,
   bf16-mixed and channels_last (the `trainer=gpu` config), as transferlab runs it (a config
   composed by Hydra, the pipeline's build_* functions, a Lightning Trainer logging to
   MLflow) and as a plain PyTorch loop with the same model, data (gathered on the GPU),
   batch size, precision (torch.autocast bf16), optimizer and memory layout. Images/s over a
   fixed number of steps after warm-up (the GPU synchronised at both ends; median of
   alternating repeats) and peak GPU memory (torch.cuda.max_memory_allocated, reset before
   each side). Goal: transferlab >= 0.97 of the plain loop.
2. The same with `trainer.gpu.compile=true` on both sides (the plain loop compiles the
   backbone in place, as transferlab does); the compilation falls in the warm-up.
3. Freeze strategies on a CIFAR-10-sized task: 50,000 synthetic 32 px images, 10 classes,
   kept on the GPU (loader.device=auto) and upsampled to 224 px there by the backbone's
   first operation (`upsampled_backbone`); resnet50 fine-tuned for 1 epoch under none,
   linear_probe (features from a cold feature cache), partial, gradual and lora, each a
   run of the real task function with its MLflow run: wall time, status, test/acc.
4. End to end: a 2-epoch digits run with `trainer=gpu` through the real entry point
   (`python -m transferlab.train`), its status, test/acc and every artifact (the MLflow
   logged model too) read back from MLflow.

One table at the end and the records as JSON (bench/results/gpu_check.json, beside `make
bench`'s latest.json); exit code 1 if a part failed. Run it through bench/gpu_check.sh,
which finds a Python with everything installed. `--cpu`: a dry run on the CPU at tiny sizes
(resnet18 at 32 px or less, a few hundred images, 32-true, trainer=cpu) through the same
code.
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
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from torch import nn

from transferlab.config import check_accelerator
from transferlab.models.backbone import Backbone
from transferlab.models.backbones import build_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also gpu_check for `_target_`
import throughput  # bench/throughput.py: both sides of the CPU benchmark, device-aware

BENCH = Path(__file__).resolve().parent

RESULTS = BENCH / "results" / "gpu_check.json"  # beside `make bench`'s latest.json
# part 3's freeze strategies and their options for a 1-epoch run: gradual's milestones must
# fall in it (the stage nearest the head trains from epoch 0; the others stay frozen)
FREEZES = {
    "none": (),
    "linear_probe": (),
    "partial": (),
    "gradual": ("freeze.milestones=[0]",),
    "lora": (),
}
# what every finished neural run holds, and its logged model (the UI's Models column)
ARTIFACTS = (
    "backbone.pt",
    "checkpoints/best.ckpt",
    "config.yaml",
    "experiment.yaml",
    "overrides.yaml",
    "test/confusion_matrix.png",
    "test/per_class_report.txt",
)
MODEL_FILES = (
    "MLmodel",
    "input_example.json",
    "pyfunc_classifier.py",
    "artifacts/backbone.pt",
    "artifacts/network.pt",
    "artifacts/preprocessing.json",
)


@dataclass(frozen=True)
class Sizes:
    overrides: tuple[str, ...]  # the throughput case, on top of the trainer group
    label: str
    batch: int
    warmup: int
    steps: int
    repeats: int
    compiled: tuple[str, ...]  # part 2's case (trainer.gpu.compile=true added); (): the same
    compiled_label: str
    compiled_warmup: int  # part 2: the compilation happens in these steps
    task: tuple[str, ...]  # part 3: the CIFAR-10-sized task and its backbone
    task_label: str


GPU = Sizes(
    overrides=(
        "trainer=gpu",
        "trainer.precision=bf16-mixed",
        "trainer.gpu.channels_last=true",
        "backbone=resnet50",
        "backbone.weights=null",  # nothing to download on a machine without internet
        "backbone.input_size=224",
        "dataset.num_images=1280",  # 770 MB of float32 images, on the GPU
    ),
    label="resnet50 224px bf16-mixed channels_last",
    batch=128,
    warmup=15,
    steps=50,
    repeats=2,
    compiled=(),
    compiled_label="resnet50 224px bf16-mixed channels_last, compiled",
    compiled_warmup=20,
    task=(
        "trainer=gpu",
        "trainer.precision=bf16-mixed",
        "backbone=resnet50",
        "backbone.input_size=224",
        "dataset.num_images=50000",  # 30,000 train, 10,000 val, 10,000 test
        "dataset.image_size=32",
        "loader.batch_size=128",
    ),
    task_label="resnet50, 50,000 synthetic 32 px images upsampled to 224 px on the GPU",
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
    # small_cnn: inductor compiles it in ~15 s on a cold cache (resnet18: ~2 min on 2 cores)
    compiled=(
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.gpu.channels_last=true",
        "backbone=small_cnn",
        "dataset.num_images=160",
        "dataset.image_size=16",
    ),
    compiled_label="small_cnn 16px 32-true channels_last, compiled (CPU dry run)",
    compiled_warmup=2,
    task=(
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.gpu.channels_last=true",
        "backbone=resnet18",
        "backbone.input_size=32",
        "dataset.num_images=300",
        "dataset.image_size=16",
        "loader.batch_size=32",
    ),
    task_label="resnet18, 300 synthetic 16 px images upsampled to 32 px (CPU dry run)",
)
# Both sides: synthetic images, no scheduler (a plain loop has none).
COMMON = ("dataset=synthetic", "scheduler=none")


class Upsample(nn.Module):
    """Bilinear resizing to `size` px, keeping the input's memory layout (channels_last)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        nhwc = images.is_contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        return resized.contiguous(
            memory_format=torch.channels_last if nhwc else torch.contiguous_format
        )


class UpsampleInput:
    """A forward pre-hook resizing the network's input (an object, not a closure: the run
    deep-copies the network for its logged model)."""

    def __init__(self, size: int):
        self.resize = Upsample(size)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.resize(args[0]), *args[1:])


def upsampled_backbone(
    arch: str, weights: str | None = None, weights_path: str | None = None, input_size: int = 224
) -> Backbone:
    """`backbone._target_` for part 3: a torchvision backbone whose network first upsamples
    its input to `input_size` px, on the input's device. The dataset stays at its own small
    size (on the GPU: 614 MB for 50,000 32 px images, not 30 GB at 224 px); the network
    computes at `input_size`. The resize has no parameters: every freeze strategy applies."""
    backbone = build_backbone(arch, weights, weights_path)
    backbone.network.register_forward_pre_hook(UpsampleInput(input_size), prepend=True)
    backbone.preprocessing = replace(backbone.preprocessing, input_size=None)  # native size
    return backbone


def throughput_record(sizes: Sizes, work: Path, compiled: bool = False) -> dict:
    """Median images/s and the largest peak memory of alternating repeats of each side;
    `compiled`: trainer.gpu.compile=true on both, one repeat, a longer warm-up."""
    ours, plain, ours_mem, plain_mem = [], [], [], []
    case, warmup, repeats = sizes.overrides, sizes.warmup, sizes.repeats
    if compiled:
        case = (*(sizes.compiled or case), "trainer.gpu.compile=true")
        warmup, repeats = sizes.compiled_warmup, 1
    overrides = [*COMMON, *case, f"loader.batch_size={sizes.batch}"]
    for repeat in range(repeats):  # alternating: drifting clocks hit both sides alike
        cfg = throughput.config(overrides, work / f"plain-{compiled}-{repeat}")
        check_accelerator(cfg.trainer.accelerator)
        rate, memory = throughput.plain_side(cfg, warmup, sizes.steps)
        plain.append(rate)
        plain_mem.append(memory.mib)
        side_work = work / f"transferlab-{compiled}-{repeat}"
        cfg = throughput.config(overrides, side_work)
        rate, memory = throughput.transferlab_side(cfg, warmup, sizes.steps, side_work)
        ours.append(rate)
        ours_mem.append(memory.mib)
    return {
        "case": sizes.compiled_label if compiled else sizes.label,
        "batch": sizes.batch,
        "transferlab_images_per_s": statistics.median(ours),
        "plain_images_per_s": statistics.median(plain),
        "ratio": statistics.median(ours) / statistics.median(plain),
        "transferlab_peak_mib": max(ours_mem) if ours_mem[0] is not None else None,
        "plain_peak_mib": max(plain_mem) if plain_mem[0] is not None else None,
    }


def freeze_records(sizes: Sizes, work: Path, uri: str) -> dict:
    """Part 3: one 1-epoch run of the real task function per freeze strategy, timed from
    the composed config to its finished MLflow run, read back from the store."""
    from transferlab.train import run as run_task

    experiment = "gpu_check_freeze"
    records = {}
    for freeze, options in FREEZES.items():
        overrides = [
            "dataset=synthetic",
            *sizes.task,
            "backbone._target_=gpu_check.upsampled_backbone",
            "backbone.weights=null",
            f"freeze={freeze}",
            *options,
            "trainer.max_epochs=1",
            "~callbacks.progress_bar",
            f"experiment_name={experiment}",
            f"tracking.uri={uri}",
            f"feature_cache.dir={work / 'feature_cache'}",  # cold: extraction is timed
        ]
        with initialize_config_module("transferlab.conf", version_base="1.3"):
            cfg = compose("train", overrides)
        cfg.output_dir = str(work / f"freeze-{freeze}")
        started = time.perf_counter()
        run_task(cfg)
        seconds = time.perf_counter() - started
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        (run,) = client.search_runs(  # this freeze's run: the latest
            [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )
        records[freeze] = {
            "seconds": seconds,
            "status": run.info.status,
            "test_acc": run.data.metrics.get("test/acc"),
            "run_name": run.info.run_name,
        }
    return {"case": sizes.task_label, "epochs": 1, "runs": records}


def digits_run(cpu: bool, work: Path, uri: str) -> dict:
    """A 2-epoch digits run through `python -m transferlab.train`, read back from MLflow:
    its status, test/acc, the artifacts every run records and its logged model."""
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
            missing_artifacts=missing_artifacts(client, run),
        )
    return record


def missing_artifacts(client: MlflowClient, run) -> list[str]:
    """What a finished neural run should hold and this one lacks: ARTIFACTS, and one READY
    logged model with MODEL_FILES."""
    held = files(client.list_artifacts, run.info.run_id)
    missing = [path for path in ARTIFACTS if path not in held]
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    if len(models) != 1 or models[0].status != LoggedModelStatus.READY:
        return [*missing, "a READY logged model"]
    held = files(client.list_logged_model_artifacts, models[0].model_id)
    return missing + [f"logged model: {path}" for path in MODEL_FILES if path not in held]


def files(list_folder, owner: str) -> set[str]:
    """Every file path under a run's or a logged model's artifacts, folders walked."""
    found, folders = set(), [None]
    while folders:
        for entry in list_folder(owner, folders.pop()):
            if entry.is_dir:
                folders.append(entry.path)
            else:
                found.add(entry.path)
    return found


def print_table(records: dict, header: str) -> None:
    def ratio(ours, plain):
        return f"{ours / plain:.3f}" if ours and plain else "n/a"

    def mib(value):
        return f"{value:.0f}" if value is not None else "n/a (no GPU)"

    def failed(record):
        return f"| {record['case']} | FAILED: {record['error']} | - | - |"

    print(f"\n{header}")
    print("| check | transferlab | plain PyTorch | ratio |")
    print("|---|---|---|---|")
    for speed in (records["throughput"], records["compiled"]):
        if "error" in speed:
            print(failed(speed))
            continue
        ours, plain = speed["transferlab_images_per_s"], speed["plain_images_per_s"]
        ours_mem, plain_mem = speed["transferlab_peak_mib"], speed["plain_peak_mib"]
        print(
            f"| {speed['case']}, batch {speed['batch']}: images/s (goal >= 0.97) | {ours:.1f} "
            f"| {plain:.1f} | {ratio(ours, plain)} |"
        )
        print(
            f"| same: peak GPU memory (MiB) | {mib(ours_mem)} | {mib(plain_mem)} | "
            f"{ratio(ours_mem, plain_mem)} |"
        )
    freeze = records["freeze"]
    if "error" in freeze:
        print(failed(freeze))
    for name, run in freeze.get("runs", {}).items():
        acc = run["test_acc"]
        print(
            f"| {freeze['case']}, 1 epoch, freeze={name}: wall time (s), end to end with "
            f"MLflow | {run['seconds']:.1f} ({run['status']}, test/acc "
            f"{acc if acc is None else f'{acc:.3f}'}) | - | - |"
        )
    digits = records["digits"]
    acc = digits.get("test_acc")
    outcome = digits.get("status") or f"FAILED: {digits.get('error', 'no MLflow run')}"
    outcome += f", test/acc {acc:.4f}" if acc is not None else ", test/acc missing"
    missing = digits.get("missing_artifacts")
    outcome += ", every artifact" if missing == [] else f", missing: {missing}"
    print(
        f"| digits, 2 epochs, `python -m transferlab.train` on {digits.get('device')} "
        f"({digits.get('precision')}): MLflow status, test/acc, artifacts | {outcome} | - | - |"
    )
    seconds = digits.get("seconds")
    print(f"| same: wall time, start to exit (s) | {seconds or float('nan'):.1f} | - | - |")


def passed(records: dict) -> bool:
    """Every part ran; every run finished; the digits run has every artifact."""
    if any("error" in record for record in records.values() if isinstance(record, dict)):
        return False
    digits = records["digits"]
    finished = all(r["status"] == "FINISHED" for r in records["freeze"]["runs"].values())
    return (
        finished
        and digits.get("status") == "FINISHED"
        and digits.get("exit_code") == 0
        and (digits.get("missing_artifacts") == [])
    )


def attempt(part, label: str, *args) -> dict:
    """One part of the check; a failure is printed and recorded, and the other parts run."""
    started = time.perf_counter()
    try:
        record = part(*args)
    except Exception as error:
        traceback.print_exc()
        record = {"case": label, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    record["part_seconds"] = time.perf_counter() - started
    print(f"gpu_check: {label} done in {record['part_seconds']:.0f} s", flush=True)
    return record


def driver_version() -> str | None:
    """The NVIDIA driver's version, from NVML (nvidia-ml-py); None where it cannot be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU, tiny sizes")
    parser.add_argument("--work", type=Path, help="keep outputs (MLflow store) here")
    parser.add_argument("--repeats", type=int, help="alternating repeats of each side")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"the records (default: {RESULTS})"
    )
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
    records = {
        "throughput": attempt(throughput_record, sizes.label, sizes, work),
        "compiled": attempt(throughput_record, sizes.compiled_label, sizes, work, True),
        "freeze": attempt(freeze_records, sizes.task_label, sizes, work, uri),
        "digits": attempt(digits_run, "digits run", args.cpu, work, uri),
    }
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()
    driver = driver_version() if torch.cuda.is_available() else None
    header = (
        f"gpu_check on {device}{' (CPU dry run)' if args.cpu else ''}, "
        f"{time.strftime('%Y-%m-%d')}: torch {torch.__version__} (CUDA {torch.version.cuda}"
        f"{f', driver {driver}' if driver else ''}), "
        f"Lightning {pl.__version__}, Python {platform.python_version()}"
    )
    records = {"header": header, "gpu": device, "driver": driver, **records}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=2))
    print_table(records, header)
    print(f"\nrecords: {args.json}" + (f"; MLflow store: {uri}" if args.work else ""))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed(records) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
