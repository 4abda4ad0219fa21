"""What a trained model costs to deploy: parameters, size on disk and latency.

Logged with every neural-head run, so that accuracy can be weighed against cost in the
MLflow UI and in reports. It runs after every run and every sweep trial, whose fixed
overhead is meant to stay under a second, so latency is timed within a small budget
(`BUDGET_S`, plus one warm-up call per batch size) and reported as a median; and since
latency depends on the architecture and not on the weights, the trials of a sweep that
share one are timed once per process (`_timed_latencies`). The model
is timed as `transferlab-export` ships it: eager PyTorch (not the
`trainer.gpu.compile` wrapper), float32 weights unless the run trained in a `*-true` precision.

scikit-learn heads (svm, logreg) get no cost metrics: their model is a frozen backbone plus
an estimator whose size and speed are not comparable with a network's, and backbone-only
counts under the same metric names would read as the whole model's.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transferlab.finetune.freezing import FreezeStrategy
from transferlab.inference import autocast, eval_mode
from transferlab.models.backbone import Backbone

BUDGET_S = 0.2  # timing budget per run, shared by the two batch sizes
MAX_REPEATS = 20  # a tiny model stops here rather than at the budget
INPUT_SEED = 0  # the timed inputs come from a generator of their own: the global RNG is untouched
_timed_latencies: dict[tuple, float] = {}  # (architecture, input, device, threads, ...) -> ms


class Classifier(nn.Module):
    """What is deployed: the backbone's network, then the head. Parts used only in
    training (the source classifier, regularisers, metrics) are left out."""

    def __init__(self, network: nn.Module, head: nn.Module):
        super().__init__()
        self.network = network
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.network(images))


@dataclass(frozen=True)
class InferenceSetting:
    """How the run's model ran: what it measures latency under."""

    image_shape: tuple[int, ...]  # one input image (C, H, W), after preprocessing
    device: torch.device  # the device the run trained on
    precision: str  # Lightning's precision; `*-mixed` runs are timed under autocast
    epochs: int  # epochs trained: the stages unfrozen in any of them count as trainable


def image_shape(dataset: Any) -> tuple[int, ...]:
    """The shape of one preprocessed image of a dataset yielding (image, label). Read
    before cached features replace the images."""
    image, _ = dataset[0]
    return tuple(image.shape)


def device_description(device: torch.device) -> str:
    """The device as a tag value: latency on a CPU depends on its thread count."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def inference_cost(
    backbone: Backbone,
    head: nn.Module,
    freeze: FreezeStrategy,
    setting: InferenceSetting,
    batch_size: int,
) -> dict[str, float]:
    """The cost metrics of `backbone` (the real one, also when cached features stood in for
    it) followed by `head`, measured on `setting.device`; the model is left as found."""
    model = Classifier(backbone.network, head)
    total, trained = parameter_counts(backbone, head, freeze, setting.epochs)
    trainable = _count(trained)
    single = latency_ms(model, 1, setting, BUDGET_S / 2)
    batch = latency_ms(model, batch_size, setting, BUDGET_S / 2)
    return {
        "model/params_total": total,
        "model/params_trainable": trainable,
        "model/params_trainable_pct": 100 * trainable / total,
        # what a task adds to its base: the trained parameters (a PEFT checkpoint holds these)
        "model/adapter_size_mb": sum(p.numel() * p.element_size() for p in trained) / 1e6,
        "model/size_mb": state_dict_megabytes(model),
        "inference/latency_ms_single": single,
        "inference/latency_ms_batch": batch,
        "inference/images_per_s": batch_size / batch * 1000,
    }


def parameter_counts(
    backbone: Backbone, head: nn.Module, freeze: FreezeStrategy, epochs: int
) -> tuple[int, list[nn.Parameter]]:
    """The deployed model's parameter count (the source classifier is not part of it) and
    the parameters that trained: the head, every backbone stage that the freeze strategy
    left unfrozen in at least one of the `epochs` trained (a stage unfrozen only later than
    an early stop never trained), and those it trains in every stage (an adapter's).
    Derived from the strategy, not from `requires_grad`, which only tells the last epoch's
    state."""
    total = _count(backbone.network.parameters()) + _count(head.parameters())
    stages = {
        stage
        for epoch in range(epochs)
        for stage in set(range(backbone.num_stages))
        - freeze.frozen_stages(backbone.num_stages, epoch)
    }
    trained = [p for s in sorted(stages) for p in backbone.stage_parameters(s)]
    trained += [*freeze.always_trained(backbone.network), *head.parameters()]
    return total, list({id(p): p for p in trained}.values())


def state_dict_megabytes(model: nn.Module) -> float:
    """Size of `torch.save(model.state_dict())` in MB (10^6 bytes), counted as it is
    written rather than kept: a large model is not copied in memory."""
    sink = _ByteCounter()
    torch.save(model.state_dict(), sink)
    return sink.size / 1e6


def latency_ms(
    model: nn.Module, batch_size: int, setting: InferenceSetting, budget_s: float
) -> float:
    """Median milliseconds of one forward pass over `batch_size` images, in eval mode
    under inference_mode. An untimed warm-up call first (lazy init, allocator, cuDNN
    autotuning: a first call can take 100x longer), then repeats until `budget_s`, counted
    from the warm-up, is spent: at least one, at most MAX_REPEATS. An architecture already
    timed in this process under the same setting is not timed again."""
    key = (
        repr(model),
        (batch_size, *setting.image_shape),
        setting.device,
        setting.precision,
        _dtype_of(model),
        _is_channels_last(model),  # trainer.gpu.channels_last converted the weights
        torch.get_num_threads(),
    )
    if key not in _timed_latencies:
        _timed_latencies[key] = _median_latency_ms(model, batch_size, setting, budget_s)
    return _timed_latencies[key]


def _median_latency_ms(
    model: nn.Module, batch_size: int, setting: InferenceSetting, budget_s: float
) -> float:
    with _placed(model, setting.device):
        dtype = _dtype_of(model)  # `*-true` precisions converted the weights
        generator = torch.Generator().manual_seed(INPUT_SEED)
        images = torch.randn((batch_size, *setting.image_shape), generator=generator)
        images = images.to(setting.device, dtype)
        sync = _synchronizer(setting.device)
        with torch.inference_mode(), autocast(setting.precision, setting.device):
            deadline = time.perf_counter() + budget_s
            _timed(model, images, sync)
            times: list[float] = []
            while len(times) < MAX_REPEATS and (not times or time.perf_counter() < deadline):
                times.append(_timed(model, images, sync))
    return statistics.median(times) * 1000


def _timed(model: nn.Module, images: torch.Tensor, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    model(images)
    sync()
    return time.perf_counter() - start


@contextmanager
def _placed(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode on `device` inside; each child's device and each module's mode restored
    after (Lightning leaves a trained model on the CPU; frozen BatchNorm stays in eval)."""
    homes = {child: _device_of(child) for child in model.children()}
    with eval_mode(model):
        model.to(device)
        try:
            yield
        finally:
            for child, home in homes.items():
                child.to(home)


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters()), torch.float32)


def _is_channels_last(module: nn.Module) -> bool:
    kernels = (p for p in module.parameters() if p.dim() == 4)
    first = next(kernels, None)
    return first is not None and first.is_contiguous(memory_format=torch.channels_last)


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """CUDA runs asynchronously: a timing must wait for the kernels to finish."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


class _ByteCounter(io.RawIOBase):
    """A write-only file that keeps nothing but the number of bytes written to it."""

    def __init__(self):
        super().__init__()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n
