"""What each option does, observed in real fits (small Lightning callbacks record what the
model sees and gets) or on the module itself: not only that a run finishes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from torch import nn

from transferlab.builders import build_backbone_and_data, build_module, build_trainer
from transferlab.config import validate
from transferlab.data.transforms import Preprocessing
from transferlab.finetune.regularizers import KLSource
from transferlab.models.backbone import Backbone
from transferlab.rank_config import validate_ranking
from transferlab.rank_validation import finetune_configs
from transferlab.resume import RunInterrupted
from transferlab.train import run as run_task

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
THREE_CLASSES = "dataset.task.classes=[0,1,2]"  # ~5 training steps an epoch
ONE_EPOCH = [THREE_CLASSES, "trainer.max_epochs=1", "callbacks=none"]
# A head that cannot move (AdamW's step at this rate rounds away in float32) on a frozen
# backbone: val/loss is the same number every epoch, so it never improves.
STILL = ["freeze=linear_probe", "optimizer.lr=1e-20"]


def fit(cfg: DictConfig, tmp_path: Path, *spies: pl.Callback) -> pl.Trainer:
    """A real fit of the configured module with the pipeline's own Trainer, plus spies."""
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    trainer = build_trainer(cfg, False, tmp_path, "32-true")
    trainer.callbacks.extend(spies)
    trainer.fit(module, datamodule=data)
    return trainer


def history(client: MlflowClient, run, key: str) -> list[float]:
    metrics = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [m.value for m in metrics]


# --- loss and batch mixing -------------------------------------------------------------------


def test_label_smoothing_raises_the_loss_of_a_confident_correct_prediction(make_config):
    def module_loss(smoothing: float) -> float:
        cfg = make_config(f"loss.label_smoothing={smoothing}")
        backbone, data = build_backbone_and_data(cfg)
        module = build_module(cfg, backbone, data.num_classes)
        logits = torch.full((1, data.num_classes), -4.0)
        logits[0, 0] = 8.0
        return module.criterion(logits, torch.tensor([0])).item()

    log_p = torch.log_softmax(torch.tensor([8.0] + [-4.0] * 9), dim=0)
    plain, smoothed = module_loss(0.0), module_loss(0.2)
    assert plain == pytest.approx(-log_p[0].item())
    # (1 - eps) of the weight on the true class, eps spread over all 10 classes
    assert smoothed == pytest.approx(0.8 * -log_p[0].item() + 0.2 * -log_p.mean().item())
    assert smoothed > 10 * plain


class BatchSpy(pl.Callback):
    """Pairs each batch the loader gives with what the backbone is then called on."""

    def __init__(self):
        self.batch: tuple[str, torch.Tensor] | None = None
        self.seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module):
        pl_module.backbone.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        stage, images = self.batch
        self.seen.append((stage, images, args[0].detach().clone()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = ("train", batch[0].clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batch = ("val", batch[0].clone())

    def of(self, stage: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(images, seen) for s, images, seen in self.seen if s == stage]


def test_mixup_blends_each_training_batch_with_its_roll_and_leaves_validation_alone(
    make_config, tmp_path
):
    spy = BatchSpy()
    fit(make_config(*ONE_EPOCH, "augment.mixup_alpha=0.4"), tmp_path, spy)
    assert spy.of("train") and spy.of("val")
    for images, seen in spy.of("train"):
        rolled = images.roll(1, 0)
        lam = ((seen - rolled) * (images - rolled)).sum() / (images - rolled).pow(2).sum()
        assert 0 <= lam <= 1
        assert torch.allclose(seen, lam * images + (1 - lam) * rolled, atol=1e-5)
        assert not torch.equal(seen, images)
    assert all(torch.equal(seen, images) for images, seen in spy.of("val"))


def test_cutmix_pastes_a_box_of_another_image_in_training_only(make_config, tmp_path):
    spy = BatchSpy()
    fit(make_config(*ONE_EPOCH, "augment.cutmix_alpha=1.0"), tmp_path, spy)
    train = spy.of("train")
    for images, seen in train:
        assert ((seen == images) | (seen == images.roll(1, 0))).all()
    assert any(not torch.equal(seen, images) for images, seen in train)
    assert all(torch.equal(seen, images) for images, seen in spy.of("val"))


# --- freezing and warm-up, in real fits -------------------------------------------------------


class StageGradients(pl.Callback):
    """Per epoch, the backbone stages that got a non-zero gradient in some step."""

    def __init__(self):
        self.trained: dict[int, set[int]] = {}

    def on_after_backward(self, trainer, pl_module):
        backbone = pl_module.backbone
        stages = self.trained.setdefault(trainer.current_epoch, set())
        for i in range(backbone.num_stages):
            grads = [p.grad for p in backbone.stage_parameters(i) if p.grad is not None]
            if any(g.abs().sum() > 0 for g in grads):
                stages.add(i)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["freeze=gradual", "freeze.milestones=[1,2]", "trainer.max_epochs=3"],
            {0: set(), 1: {2}, 2: {1, 2}},  # stage 0 has no milestone: it never trains
        ),
        (
            ["freeze=freeze_unfreeze", "freeze.unfreeze_at=1", "trainer.max_epochs=2"],
            {0: set(), 1: {0, 1, 2}},
        ),
    ],
    ids=["gradual", "freeze_unfreeze"],
)
def test_a_stage_gets_gradients_from_its_milestone_on(make_config, tmp_path, overrides, expected):
    spy = StageGradients()
    fit(make_config(THREE_CLASSES, "callbacks=none", *overrides), tmp_path, spy)
    assert spy.trained == expected


class LearningRates(pl.Callback):
    """Each group's learning rate while the optimizer steps, and after the step."""

    def __init__(self):
        self.position = 0.0
        self.during: list[tuple[float, dict[str, float]]] = []
        self.after: list[dict[str, float]] = []

    def on_train_start(self, trainer, pl_module):
        trainer.optimizers[0].register_step_pre_hook(self._record)

    def _record(self, optimizer, args, kwargs):
        self.during.append((self.position, rates(optimizer)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.position = trainer.current_epoch + batch_idx / trainer.num_training_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(rates(trainer.optimizers[0]))


def rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


def test_gradual_warmup_scales_the_rate_inside_the_step_and_restores_it(make_config, tmp_path):
    lr = 0.01
    overrides = ["freeze=gradual", "freeze.milestones=[1,2]", "freeze.warmup_epochs=1"]
    cfg = make_config(
        THREE_CLASSES, "callbacks=none", "scheduler=none", f"optimizer.lr={lr}",
        "trainer.max_epochs=3", *overrides,
    )  # fmt: skip
    spy = LearningRates()
    fit(cfg, tmp_path, spy)
    milestone = {"stage2": 1, "stage1": 2}  # the stage nearest the head unfreezes first
    assert len(spy.during) == len(spy.after) > 0
    ramping = 0
    for (position, during), after in zip(spy.during, spy.after, strict=True):
        assert set(after.values()) == {lr}  # restored: the scheduled rate
        for name, rate in during.items():
            stage = name.removesuffix("-no_decay")
            factor = min(max(position - milestone[stage], 0.0), 1.0) if stage in milestone else 1
            assert rate == pytest.approx(lr * factor), (position, name)
            ramping += 0 < factor < 1
    assert ramping > 0  # steps inside a warm-up were seen


# --- optimizer and schedulers ----------------------------------------------------------------


@pytest.mark.parametrize("decay_all", [False, True])
def test_decay_bias_and_norm_decides_whether_biases_and_norm_weights_shrink(make_config, decay_all):
    lr, weight_decay = 0.1, 0.5
    cfg = make_config(
        "scheduler=none",
        f"optimizer.lr={lr}",
        f"optimizer.weight_decay={weight_decay}",
        f"optimizer.param_groups.decay_bias_and_norm={decay_all}",
    )
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    optimizer = module.configure_optimizers()
    trained = {name: p for name, p in module.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trained.items()}
    for p in trained.values():
        p.grad = torch.zeros_like(p)  # AdamW with no gradient: only the weight decay moves
    optimizer.step()
    shrunk = 1 - lr * weight_decay
    flat = [name for name, p in before.items() if p.ndim <= 1]
    assert any(before[name].any() for name in flat)  # BatchNorm weights are 1
    for name, p in trained.items():
        decayed = p.ndim > 1 or decay_all
        expected = before[name] * shrunk if decayed else before[name]
        assert torch.allclose(p.detach(), expected, rtol=1e-6, atol=0), name


def test_plateau_cuts_the_rate_after_patience_epochs_without_improvement(train, runs, client):
    # eps=0: torch skips cuts smaller than eps (1e-8 by default), and this rate is tiny
    train(
        *STILL, "scheduler=plateau", "scheduler.patience=1", "+scheduler.eps=0",
        "~callbacks.early_stopping", "trainer.max_epochs=6",
    )  # fmt: skip
    (run,) = runs()
    assert len(set(history(client, run, "val/loss"))) == 1  # it never improves
    rates = history(client, run, "lr-AdamW/head")
    # best at epoch 0; epochs 1-2 without improvement: cut; epochs 3-4: cut again
    assert rates == pytest.approx([1e-20, 1e-20, 1e-20, 1e-21, 1e-21, 1e-22], rel=1e-6)


def test_early_stopping_stops_a_run_whose_val_loss_stops_improving(train, runs, client):
    train(*STILL, "scheduler=none", "trainer.max_epochs=12")
    (run,) = runs()
    losses = history(client, run, "val/loss")
    assert len(set(losses)) == 1
    assert len(losses) == 5 + 1  # the best epoch, then `patience` epochs without improvement
    assert run.info.status == "FINISHED"


# --- regularizer.target=features ---------------------------------------------------------------


def identity_backbone() -> Backbone:
    """A backbone whose features are its inputs: the source's features are known by hand."""
    network = nn.Sequential(OrderedDict(stem=nn.Linear(2, 2), fc=nn.Linear(2, 3)))
    with torch.no_grad():
        network.stem.weight.copy_(torch.eye(2))
        network.stem.bias.zero_()
    return Backbone(network, "fc", [["stem"]], Preprocessing(input_size=None), name="identity")


@pytest.mark.parametrize(
    ("distance", "expected"),
    [
        ("l2", (0 + 1 + 0 + 16) / 4),  # the mean of the squared differences
        ("cosine", ((1 - 1 / math.sqrt(2)) + (1 - -1)) / 2),  # 45 degrees apart, opposite
    ],
)
def test_feature_distances_to_the_source(distance, expected):
    source_features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # identity: the images
    features = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    reg = KLSource(identity_backbone(), None, weight=0.5, target="features", distance=distance)
    assert reg(source_features, features).item() == pytest.approx(0.5 * expected)


# --- checkpoints and resuming ----------------------------------------------------------------


class SavedSteps(pl.Callback):
    """The optimizer step held by last.ckpt after each training step."""

    def __init__(self, path: Path):
        self.path, self.steps = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.path.exists():
            step = torch.load(self.path, weights_only=True)["global_step"]
            if step not in self.steps:
                self.steps.append(step)


def test_every_n_train_steps_rewrites_last_ckpt_every_n_steps(make_config, tmp_path):
    cfg = make_config(
        THREE_CLASSES, "callbacks=none", "trainer.max_epochs=3", "checkpoint.every_n_train_steps=4",
        "freeze=linear_probe",
    )  # fmt: skip
    spy = SavedSteps(tmp_path / "checkpoints" / "last.ckpt")
    trainer = fit(cfg, tmp_path, spy)
    assert trainer.num_training_batches % 4 != 0  # epoch starts are no multiples of 4
    assert spy.steps == list(range(4, trainer.global_step, 4))


def test_resume_from_a_last_ckpt_path_finishes_the_same_run_as_if_never_stopped(
    make_config, runs, client, tmp_path
):
    common = ["~callbacks.progress_bar", "~callbacks.early_stopping", THREE_CLASSES,
              "trainer.max_epochs=3"]  # fmt: skip
    run_task(make_config(*common))
    reference = runs()[0]
    killer = (
        "+callbacks.signal={_target_: tests.helpers.SignalAtStep, step: 8, "
        f"once: '{tmp_path / 'sent'}'}}"
    )
    with pytest.raises(RunInterrupted):
        run_task(make_config(*common, killer))
    last = tmp_path / "outputs" / "finetune" / "checkpoints" / "last.ckpt"
    run_task(make_config(*common, killer, f"resume={last}"))  # the same command, resumed
    (_, resumed) = runs()  # the interrupted run went on: no third run
    assert resumed.info.status == "FINISHED"
    for key in ("train/loss", "val/loss", "val/acc", "test/acc"):
        assert history(client, resumed, key) == history(client, reference, key), key


# --- studies: shipped interfaces ---------------------------------------------------------------


def first_value(key: str, declared: str) -> str:
    """The first value a sweeper draws from a declared search space (a choice's first
    option, a range's start, an interval's lower bound)."""
    (override,) = OverridesParser.create().parse_overrides([f"{key}={declared}"])
    if not override.is_sweep_override():
        return str(override.value())
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return str(sweep.start)
    assert isinstance(sweep, ChoiceSweep | RangeSweep), sweep
    return str(next(override.sweep_iterator()))


@pytest.mark.parametrize("study", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_every_study_composes_and_passes_validation(make_config, study):
    cfg = make_config(config_name=study)
    if "rank" in cfg:  # a ranking study (transferlab-rank), its fine-tunes too where it validates
        if OmegaConf.is_missing(cfg.rank, "candidates"):  # given by the study's script
            cfg = make_config(
                "rank.candidates=[small_cnn,{backbone:small_cnn,arch:small_cnn_wide,name:wide}]",
                config_name=study,
            )
        candidates, _ = validate_ranking(cfg)
        assert len(finetune_configs(cfg, candidates)) == (
            len(candidates) if cfg.rank.validate else 0
        )
        return
    validate(cfg)
    swept = HydraConfig.get().sweeper.get("params") or {}
    if swept:
        first = [f"{key}={first_value(key, str(value))}" for key, value in swept.items()]
        validate(make_config(*first, config_name=study))


# --- real processes ----------------------------------------------------------------------------


def app(*args: str, cwd: Path, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen(
        [sys.executable, "-m", "transferlab.train", *args],
        cwd=cwd,
        env={**environment, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def only_run(cwd: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


@pytest.mark.slow
def test_a_timm_backbone_trains_end_to_end_through_the_cli(tmp_path):
    process = app(
        "backbone=timm", "backbone.name=test_resnet", "backbone.input_size=32",
        "trainer.max_epochs=1", "~callbacks.progress_bar", "dataset.task.classes=[0,1]",
        "experiment_name=timm", cwd=tmp_path, HF_HUB_OFFLINE="1",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    run = only_run(tmp_path, "timm")
    assert run.info.status == "FINISHED"
    assert (run.data.params["backbone"], run.data.params["backbone.name"]) == (
        "timm",
        "test_resnet",
    )
    assert {"train/loss", "val/acc", "test/acc"} <= set(run.data.metrics)


@pytest.mark.slow
def test_ctrl_c_stops_a_real_run_with_exit_code_130(tmp_path):
    process = app(
        "trainer.max_epochs=200", "~callbacks.progress_bar", "~callbacks.early_stopping",
        THREE_CLASSES, "experiment_name=ctrl_c", f"hydra.run.dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )  # fmt: skip
    training = tmp_path / "out" / "finetune" / "checkpoints" / "last.ckpt"  # epoch 1 started
    deadline = time.monotonic() + 240  # a guard against hanging, not a timing check
    while not training.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    run = only_run(tmp_path, "ctrl_c")
    assert run.info.status == "KILLED"
    assert run.data.tags["transferlab.interrupted_by"] == "SIGINT"
    assert f"resume={run.info.run_id}" in stderr
