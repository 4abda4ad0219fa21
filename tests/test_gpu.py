"""The GPU code paths on a real CUDA GPU (`pytest -m gpu`): mixed precision and loss scaling,
channels_last, torch.compile, the deferred non-finite check, feature extraction, inference
cost and export. Each test is skipped without a GPU; their CPU stand-ins are in
test_gpu_options.py, test_nonfinite.py, test_feature_cache.py and test_export.py."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.test_export import _accuracy, _onnx, _test_split, _torchscript
from tests.test_inference_cost import COST_METRICS
from tests.test_nonfinite import DIVERGES
from transferlab import gpu_options
from transferlab.builders import (
    build_backbone_and_data,
    build_module,
    build_trainer,
    resolve_precision,
)
from transferlab.data.datasets import Digits
from transferlab.data.feature_cache import extract_features
from transferlab.data.splits import TaskSpec, carve_task
from transferlab.errors import TrainingDiverged
from transferlab.export import export_run
from transferlab.models.backbones import build_backbone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GPU = "trainer=gpu"
SPIKE = 2.0**24  # a loss spike: its gradients, times the loss scale, exceed fp16's 65504


def _name() -> str:
    return torch.cuda.get_device_name(0)


def _callback(name: str, target: str, **arguments: object) -> str:
    """`+callbacks.NAME={_target_: tests.test_gpu.TARGET, ...}`: a callback of this module in
    a run the `train` fixture starts."""
    pairs = ", ".join(
        f"{key}: {value!r}" if isinstance(value, int) else f"{key}: '{value}'"
        for key, value in arguments.items()
    )
    return f"+callbacks.{name}={{_target_: tests.test_gpu.{target}, {pairs}}}"


class GradientSpike(pl.Callback):
    """Multiplies the gradient of the first training step of `epoch` by SPIKE (the loss
    itself stays finite) and writes the GradScaler's scale around that step, whether the
    step changed the weights, and the scale at the end of training to `record` (JSON)."""

    def __init__(self, epoch: int, record: str):
        self.epoch, self.record = epoch, Path(record)
        self.seen: dict[str, float | bool] = {}
        self.weights: list[torch.Tensor] = []
        self.armed = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.armed = trainer.current_epoch == self.epoch and batch_idx == 0
        if self.armed:
            self.seen["scale_before"] = trainer.precision_plugin.scaler.get_scale()
            self.weights = [p.detach().clone() for p in pl_module.head.parameters()]

    def on_before_backward(self, trainer, pl_module, loss):
        if self.armed:
            loss.register_hook(lambda grad: grad * SPIKE)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.armed:
            self.seen["scale_after"] = trainer.precision_plugin.scaler.get_scale()
            after = [p.detach() for p in pl_module.head.parameters()]
            self.seen["step_skipped"] = all(map(torch.equal, self.weights, after))
            self.armed = False

    def on_train_end(self, trainer, pl_module):
        self.seen["scale_at_end"] = trainer.precision_plugin.scaler.get_scale()
        self.record.write_text(json.dumps(self.seen))


class StepsAtFailure(pl.Callback):
    """Writes the optimizer steps taken and the epoch's batch count when training fails."""

    def __init__(self, record: str):
        self.record = Path(record)

    def on_exception(self, trainer, pl_module, exception):
        counts = {"steps": trainer.global_step, "batches": trainer.num_training_batches}
        self.record.write_text(json.dumps(counts))


class LayoutProbe(pl.Callback):
    """Inside every training step: the device and memory format (channels_last or not) of
    the first convolution's weight and of the batch it is given."""

    def __init__(self):
        self.in_step = False
        self.seen: list[tuple[str, str, bool]] = []  # (what, device, channels_last)

    def on_fit_start(self, trainer, pl_module):
        self.conv = next(m for m in pl_module.backbone.modules() if isinstance(m, nn.Conv2d))
        self.conv.register_forward_pre_hook(lambda _, args: self._see("batch", args[0]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.in_step = True
        self._see("weight", self.conv.weight)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.in_step = False  # validation's batches are not the step's

    def _see(self, what: str, tensor: torch.Tensor) -> None:
        if self.in_step:
            layout = tensor.is_contiguous(memory_format=torch.channels_last)
            self.seen.append((what, tensor.device.type, layout))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_two_epoch_fit_trains_on_the_gpu_in_mixed_precision(train, runs, client, precision):
    train(GPU, f"trainer.precision={precision}")
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.tags["device"] == _name()
    assert run.data.params["trainer.precision"] == precision
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    assert run.data.metrics["test/acc"] > 0.5  # digits: it learned
    scaled = "train/grad_scale" in run.data.metrics
    assert scaled == (precision == "16-mixed")  # bf16 has fp32's range: no loss scaling


def test_16_mixed_skips_an_overflowing_step_and_logs_the_lower_scale(train, runs, client, tmp_path):
    record = tmp_path / "spike.json"
    spike = _callback("spike", "GradientSpike", epoch=1, record=record)
    train(GPU, "trainer.precision=16-mixed", spike)
    seen = json.loads(record.read_text())
    assert seen["scale_after"] == seen["scale_before"] / 2  # GradScaler's backoff_factor
    assert seen["step_skipped"]  # the overflowing gradients never reached the weights
    (run,) = runs()
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/grad_scale")
    scales = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(scales) == 2  # once an epoch
    # no growth in 2 epochs (growth_interval: 2000 steps), the spike's backoff in epoch 1
    assert scales[1] == seen["scale_at_end"] <= scales[0] / 2


def test_channels_last_weights_and_batches_inside_the_gpu_step(make_config, tmp_path):
    cfg = make_config(
        GPU,
        "backbone=resnet18",
        "backbone.weights=null",
        "backbone.input_size=32",
        "dataset=synthetic",
        "dataset.num_images=256",
        "trainer.max_epochs=1",
        "callbacks=none",
    )
    assert cfg.trainer.gpu.channels_last  # trainer=gpu's default
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    probe = LayoutProbe()
    trainer = build_trainer(cfg, False, tmp_path, resolve_precision(cfg.trainer.precision))
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=data)
    steps = trainer.global_step
    assert steps > 0 and len(probe.seen) == 2 * steps  # a weight and a batch every step
    assert set(probe.seen) == {("weight", "cuda", True), ("batch", "cuda", True)}


def test_compile_compiles_on_the_gpu_without_falling_back(train, runs):
    from torch._dynamo.utils import counters

    assert gpu_options.compile_unsupported_reason("cuda") is None
    compiled_before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(GPU, "trainer.gpu.compile=true")
    assert not [w for w in seen if "torch.compile cannot run here" in str(w.message)]
    assert counters["stats"]["unique_graphs"] > compiled_before
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] > 0.5


def test_a_non_finite_loss_fails_the_run_at_the_end_of_the_epoch(train, runs, tmp_path):
    record = tmp_path / "steps.json"
    with pytest.raises(TrainingDiverged) as error:
        train(GPU, DIVERGES, _callback("steps", "StepsAtFailure", record=record))
    message = str(error.value)
    named = re.match(r"the training loss is (nan|inf) at global step (\d+) \(epoch 0\);", message)
    assert named and "\n" not in message
    counts = json.loads(record.read_text())
    # deferred: the epoch ran to its end (no sync per step), then the first bad step is named
    assert counts["steps"] == counts["batches"] > int(named[2])
    (run,) = runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == f"TrainingDiverged: {message}"


def test_gpu_features_for_the_cache_equal_cpu_features():
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn")
    splits = carve_task(Digits().load(backbone.preprocessing), TaskSpec(split_seed=0))
    dataset = splits.val.dataset
    cpu, labels = extract_features(backbone, dataset, 128)
    on_gpu = copy.deepcopy(backbone).cuda()
    scale = cpu.abs().max()
    # float32 convolutions may run in TF32 on the GPU: about fp16's 10-bit mantissa
    for precision, tolerance in (("32-true", 5e-3), ("16-mixed", 1e-2), ("bf16-mixed", 5e-2)):
        features, gpu_labels = extract_features(on_gpu, dataset, 128, precision)
        assert features.device.type == "cpu" and features.dtype == torch.float32
        assert torch.equal(gpu_labels, labels)
        error = (features - cpu).abs().max() / scale
        assert error <= tolerance, (precision, float(error))


def test_inference_cost_is_measured_on_the_gpu(train, runs):
    train(GPU)
    (run,) = runs()
    metrics = run.data.metrics
    assert all(metrics[key] > 0 for key in COST_METRICS), metrics
    assert metrics["inference/images_per_s"] == pytest.approx(
        64 / metrics["inference/latency_ms_batch"] * 1e3
    )
    assert re.fullmatch(
        rf"cuda(:\d+)? \({re.escape(_name())}\)", run.data.tags["transferlab.inference_device"]
    )


def test_export_of_a_gpu_trained_run_matches_pytorch(
    train, runs, tracking_uri, make_config, tmp_path
):
    train(GPU)
    (run,) = runs()
    images, labels = _test_split(make_config(GPU))
    for fmt, load in (("onnx", _onnx), ("torchscript", _torchscript)):
        exported = export_run(run.info.run_id, fmt, tmp_path / fmt, tracking_uri)
        assert exported.max_abs_diff <= 1e-4  # against the rebuilt PyTorch model, float32
        # tested under bf16 autocast on the GPU, exported in float32: a few images may flip
        accuracy = _accuracy(load(exported.model), images, labels)
        assert accuracy == pytest.approx(run.data.metrics["test/acc"], abs=0.02)
