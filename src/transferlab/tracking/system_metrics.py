"""System metrics of a run (`tracking.system_metrics`: true, false, or auto: on where the
trainer runs on a GPU): MLflow's own monitors (CPU and memory, disk, network; NVIDIA GPUs
through nvidia-ml-py where NVML answers, AMD ones through pyrsmi) under MLflow's names,
`system/cpu_utilization_percentage`, `system/gpu_0_utilization_percentage`, ..., so the run
page's System metrics section charts them.

MLflow's SystemMetricsMonitor is not used whole: it publishes after each full interval only
(a run shorter than one logs nothing), asks the store for the run's status every interval
and writes with a client of its own. Here the samples go through the run's metric writer
(batched, kept through a tracking server outage like every metric), and stopping takes one
last sample, so every run has one; each sample is a step of its own
($MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING is not read). A GPU without NVML, or a MIG
device that refuses a query (utilization, power), is skipped without a warning a sample.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from transferlab.errors import UserError

GPU_ACCELERATORS = ("gpu", "cuda")
PREFIX = "system/"
INTERVAL = 10.0  # s between samples, as MLflow's; $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
FIRST_KEY = PREFIX + "cpu_utilization_percentage"  # in every sample: where a run's steps are


def check_system_metrics(setting: Any) -> None:
    """Validation's check of `tracking.system_metrics`, before any run."""
    if not isinstance(setting, bool) and setting != "auto":
        raise UserError(
            f"tracking.system_metrics={setting!r} is unknown; use true, false or auto "
            "(auto: on where the trainer runs on a GPU, e.g. trainer=gpu)"
        )


def system_metrics_wanted(setting: bool | str, accelerator: str) -> bool:
    """Whether a run logs system metrics; `auto` turns them on for a GPU accelerator (and
    for `auto` where CUDA is available, as Lightning then picks it)."""
    check_system_metrics(setting)
    if setting != "auto":
        return bool(setting)
    if accelerator == "auto":
        import torch

        return torch.cuda.is_available()
    return accelerator in GPU_ACCELERATORS


class SystemMetrics:
    """Samples MLflow's system monitors every INTERVAL s in a thread of its own and hands
    each sample, `system/`-prefixed, to `log(metrics, step)`, steps counted from
    `first_step` (a resumed run continues its own); the last one as it stops."""

    def __init__(self, log: Callable[[Mapping[str, float], int], None], first_step: int = 0):
        from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

        self.monitors = _monitors()
        self.interval = MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or INTERVAL
        self.log, self.step = log, first_step
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ends the sampling thread once it has logged its last sample."""
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        """Every sample in this thread: psutil measures CPU use between two calls of the
        same thread, so the first call here starts the first interval."""
        psutil.cpu_percent()
        while not self.stopping.wait(self.interval):
            self._sample()
        self._sample()

    def _sample(self) -> None:
        metrics: dict[str, float] = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            metrics.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        self.log({PREFIX + key: value for key, value in metrics.items()}, self.step)
        self.step += 1


def next_step(client: Any, run_id: str) -> int:
    """The step after a run's last system sample: where a resumed run's samples go on."""
    history = client.get_metric_history(run_id, FIRST_KEY)
    return max((metric.step for metric in history), default=-1) + 1


def _monitors() -> list[Any]:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    return [CPUMonitor(), DiskMonitor(), NetworkMonitor(), *_gpu_monitor()]


def _gpu_monitor() -> list[Any]:
    """MLflow's NVIDIA monitor, else its AMD one, else none: each raises where its library
    or driver is absent. The NVIDIA one warns at every sample for each query a device
    refuses (a MIG instance has no utilization or power readings): those warnings are
    dropped, the readings it has are kept."""
    from mlflow.system_metrics.metrics import gpu_monitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    for make in (gpu_monitor.GPUMonitor, ROCMMonitor):
        try:
            monitor = make()
        except Exception:  # no such GPU, library or driver here: no GPU metrics
            continue
        logging.getLogger(gpu_monitor.__name__).addFilter(_REFUSED_QUERIES)
        return [monitor]
    return []


class _RefusedQueries(logging.Filter):
    """Drops the NVIDIA monitor's 'Encountered error ... when trying to collect GPU ...'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Encountered error")


_REFUSED_QUERIES = _RefusedQueries()  # one instance: adding it again is a no-op
