"""The synthetic benchmark dataset and the trainer's GPU options (channels_last, compile,
pinned memory), on this CPU machine; the GPU itself is exercised by bench/gpu_check.sh."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn
from torchvision.models import VisionTransformer

from tests.conftest import PYTHON
from transferlab import gpu_options
from transferlab.builders import build_backbone_and_data, build_module, build_trainer
from transferlab.config import validate
from transferlab.data.datasets import Synthetic
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError
from transferlab.models.backbones import build_backbone

REPO = Path(__file__).resolve().parents[1]
SMALL_SYNTHETIC = ["dataset=synthetic", "dataset.num_images=100", "dataset.image_size=16"]
COMPILE_WARNING = "torch.compile cannot run here"


@pytest.fixture
def fresh_compile_probe(monkeypatch):
    """The support probe and its warn-once memory start empty and are emptied after."""
    gpu_options.compile_unsupported_reason.cache_clear()
    monkeypatch.setattr(gpu_options, "_warned", set())
    yield
    gpu_options.compile_unsupported_reason.cache_clear()


# --- the synthetic dataset ---------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone",
    [
        ["backbone=small_cnn"],
        ["backbone=resnet18", "backbone.weights=null", "backbone.input_size=64"],
    ],
    ids=["small_cnn", "resnet18-64px"],
)
def test_a_run_on_the_synthetic_dataset_trains(train, runs, backbone):
    train(*SMALL_SYNTHETIC, *backbone)
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset"] == "synthetic"
    for key in ("train/loss", "val/acc", "test/acc"):
        assert key in run.data.metrics


def test_synthetic_images_come_from_the_seed_at_the_backbones_input_size():
    def load(seed, input_size):
        data = Synthetic(num_classes=3, num_images=12, image_size=8, seed=seed)
        return data.load(Preprocessing(input_size=input_size))

    first, again, other = load(0, 20), load(0, 20), load(1, 20)
    images, labels = first.parts["train"].dataset.tensors
    assert images.shape == (12, 3, 20, 20) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2] * 4 and first.class_names == ["0", "1", "2"]
    assert torch.equal(images, again.parts["train"].dataset.tensors[0])
    assert not torch.equal(images, other.parts["train"].dataset.tensors[0])
    native = load(0, None).parts["train"].dataset.tensors[0]
    assert native.shape[-1] == 8  # a backbone that keeps the native size gets image_size
    with pytest.raises(UserError, match=r"dataset.num_images=0 must be a whole number >= 1"):
        Synthetic(num_images=0)


# --- config --------------------------------------------------------------------------------


def test_gpu_options_are_in_the_trainer_group_and_not_passed_to_lightning(make_config):
    for trainer, channels_last in (("cpu", False), ("gpu", True), ("ddp", False)):
        cfg = make_config(f"trainer={trainer}")
        assert cfg.trainer.gpu.channels_last is channels_last
        assert cfg.trainer.gpu.compile is False
        arguments, options = gpu_options.trainer_arguments(cfg.trainer)
        assert "gpu" not in arguments and "channels_last" not in arguments
        assert options == {"channels_last": channels_last, "compile": False}
    bad = make_config("trainer.gpu.compile=yes")
    with pytest.raises(UserError) as error:
        validate(bad)
    assert str(error.value) == "trainer.gpu.compile='yes' must be true or false"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_trainer_gpu_without_a_gpu_fails_before_any_run_is_recorded(train, runs):
    with pytest.raises(UserError) as error:
        train("trainer=gpu")
    assert str(error.value) == (
        "trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu"
    )
    assert runs() == []  # not even a FAILED run: nothing was started


@pytest.mark.slow
def test_trainer_gpu_without_a_gpu_is_one_line_from_the_app(tmp_path):
    """The real entry point, as a user types it: exit 1, one line, no store written."""
    result = subprocess.run(
        [PYTHON, "-m", "transferlab.train", "trainer=gpu"],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            "CUDA_VISIBLE_DEVICES": "",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu"
    )
    assert not (tmp_path / "mlflow.db").exists()


# --- channels_last ---------------------------------------------------------------------------


def test_channels_last_converts_a_cnn_and_its_batches(make_config, tmp_path):
    cfg = make_config(
        *SMALL_SYNTHETIC, "trainer.gpu.channels_last=true", "trainer.max_epochs=1", "callbacks=none"
    )
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    first_conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    inputs = []
    first_conv.register_forward_pre_hook(
        lambda _, args: inputs.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    trainer = build_trainer(cfg, False, tmp_path, "32-true")
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert inputs and all(inputs)  # training, validation and test batches alike
    assert not data.train_dataloader().pin_memory  # a CPU trainer: nothing to pin for


def test_channels_last_leaves_transformers_alone():
    vit = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8
    )
    assert not gpu_options.is_cnn(vit)  # its patch embedding is a convolution
    assert gpu_options.is_cnn(build_backbone("resnet18"))
    assert gpu_options.is_cnn(build_backbone("small_cnn"))


def test_loaders_pin_memory_when_the_trainer_trains_on_cuda(make_config):
    cfg = make_config(*SMALL_SYNTHETIC)
    _, data = build_backbone_and_data(cfg)
    assert not data.train_dataloader().pin_memory  # not attached to a trainer: the CPU default
    cuda = SimpleNamespace(root_device=torch.device("cuda", 0))
    data.trainer = SimpleNamespace(strategy=cuda, world_size=1, global_rank=0)
    assert data.train_dataloader().pin_memory and data.test_dataloader().pin_memory
    data.pin_memory = False  # an explicit choice wins
    assert not data.val_dataloader().pin_memory


# --- compile ---------------------------------------------------------------------------------


def test_compile_without_a_cpp_compiler_warns_once_and_trains_eagerly(
    train, runs, fresh_compile_probe
):
    """A real unsupported condition: inductor pointed at a C++ compiler that is not there.
    Two stages (the run and its scratch baseline), one warning."""
    missing = (None, "/nonexistent/bin/c++")
    with inductor_config.patch({"cpp.cxx": missing}), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train("trainer.gpu.compile=true", "compare_scratch=true", "dataset.task.classes=[0,1,2]")
    ours = [str(w.message) for w in seen if COMPILE_WARNING in str(w.message)]
    assert len(ours) == 1, ours
    assert ours[0].startswith("trainer.gpu.compile=true, but torch.compile cannot run here: ")
    assert "inductor needs a C++ compiler for CPU code" in ours[0]
    assert ours[0].endswith("; training in eager mode")
    assert [r.info.status for r in runs()] == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_compile_trains_on_the_cpu_with_inductor(train, runs, fresh_compile_probe):
    """~50 s here on a cold inductor cache, ~10 s warm (eager: ~3 s): four graphs (train,
    validation, the last short batch, test under inference mode), each a C++ build."""
    if gpu_options.compile_unsupported_reason("cpu") is not None:
        pytest.skip(gpu_options.compile_unsupported_reason("cpu"))
    from torch._dynamo.utils import counters

    compiled_before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train("trainer.gpu.compile=true", "trainer.gpu.channels_last=true")
    assert not [w for w in seen if COMPILE_WARNING in str(w.message)]
    assert counters["stats"]["unique_graphs"] > compiled_before
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] > 0.5  # digits: it learned, compiled


# --- bench/gpu_check.sh -------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu_records_every_part(tmp_path):
    """Every part of the GPU check, at tiny sizes on the CPU through the same code (~70 s
    here): numbers for each, every freeze run finished, the digits run's artifacts all there."""
    records = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--json", str(records)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index("| check |") :]
    assert "images/s" in table and "freeze=lora" in table and "every artifact" in table
    found = json.loads(records.read_text())
    for part in ("throughput", "compiled"):
        speed = found[part]
        assert speed["transferlab_images_per_s"] > 0 and speed["plain_images_per_s"] > 0
        assert speed["ratio"] == pytest.approx(
            speed["transferlab_images_per_s"] / speed["plain_images_per_s"]
        )
    runs = found["freeze"]["runs"]
    assert list(runs) == ["none", "linear_probe", "partial", "gradual", "lora"]
    assert all(r["status"] == "FINISHED" and r["seconds"] > 0 for r in runs.values())
    assert all(0 <= r["test_acc"] <= 1 for r in runs.values())
    digits = found["digits"]
    assert digits["status"] == "FINISHED" and digits["missing_artifacts"] == []
    assert digits["test_acc"] > 0.5 and digits["seconds"] > 0
