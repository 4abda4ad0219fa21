"""Fine-tuning methods: their numbers, not only that they run."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from transferlab.builders import build_backbone_and_data, build_module
from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.finetune.freezing import FreezeUnfreeze, Gradual, LinearProbe
from transferlab.finetune.optim import GroupOptions, param_groups
from transferlab.finetune.regularizers import L2SP, KLSource
from transferlab.models.backbones import build_backbone
from transferlab.models.heads import LinearHead


def test_freeze_unfreeze_and_gradual_schedules():
    unfreeze = FreezeUnfreeze(unfreeze_at=2)
    assert [unfreeze.frozen_stages(4, e) for e in range(4)] == [{0, 1, 2, 3}] * 2 + [set()] * 2
    gradual = Gradual(milestones=[1, 3], warmup_epochs=0)
    assert [gradual.frozen_stages(4, e) for e in range(5)] == [
        {0, 1, 2, 3},
        {0, 1, 2},
        {0, 1, 2},
        {0, 1},
        {0, 1},
    ]
    assert LinearProbe().is_always_frozen(4, 10) and LinearProbe().never_trains_backbone(10)
    assert not unfreeze.is_always_frozen(4, 10)
    assert unfreeze.is_always_frozen(4, 2)  # unfreezes only after the run ends


def test_gradual_warmup_ramps_the_newly_unfrozen_stage():
    gradual = Gradual(milestones=[1, 3], warmup_epochs=2)
    nearest_head, next_one, never = 3, 2, 0
    assert gradual.lr_factor(4, nearest_head, 1.0) == 0.0
    assert gradual.lr_factor(4, nearest_head, 2.0) == 0.5
    assert gradual.lr_factor(4, nearest_head, 3.5) == 1.0
    assert gradual.lr_factor(4, next_one, 4.0) == 0.5
    assert gradual.lr_factor(4, never, 9.0) == 1.0  # no milestone: never warmed up


def test_layer_decay_and_backbone_lr_mult_set_each_stage_rate():
    backbone = build_backbone("resnet18", input_size=32)
    head = LinearHead(backbone.feature_dim, 3)
    groups = param_groups(0.1, GroupOptions(backbone_lr_mult=0.5, layer_decay=0.8), backbone, head)
    for group in groups:
        stage = group["stage"]
        expected = 0.1 if stage is None else 0.1 * 0.5 * 0.8 ** (backbone.num_stages - stage)
        assert group["lr"] == pytest.approx(expected), group["name"]
    no_decay = [g for g in groups if g["name"].endswith("no_decay")]
    assert all(g["weight_decay"] == 0.0 for g in no_decay)
    assert all(p.ndim == 1 for g in no_decay for p in g["params"])  # biases, BN weights
    decayed = [g for g in groups if not g["name"].endswith("no_decay")]
    assert all(p.ndim > 1 for g in decayed for p in g["params"])
    everything = {id(p) for p in [*backbone.network.parameters(), *head.parameters()]}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(everything)


def test_l2_sp_is_zero_at_the_source_and_grows_as_weights_move():
    backbone = build_backbone("small_cnn")
    head = LinearHead(backbone.feature_dim, 3)
    for p in head.parameters():
        nn.init.zeros_(p)
    reg = L2SP(backbone, head, alpha=0.1, beta=0.0)
    images = torch.zeros(2, 3, 8, 8)
    assert reg(images, None).item() == 0.0
    source = [b.clone() for b in reg.buffers()]
    penalties = []
    with torch.no_grad():
        for _ in range(3):
            next(backbone.network.parameters()).add_(0.1)
            penalties.append(reg(images, None).item())
    assert 0 < penalties[0] < penalties[1] < penalties[2]
    first = next(backbone.network.parameters())
    assert penalties[0] == pytest.approx(0.1 / 2 * first.numel() * 0.01, rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(source, reg.buffers(), strict=True))


def test_l2_sp_gradient_pulls_toward_the_source_only():
    backbone = build_backbone("small_cnn")
    head = LinearHead(backbone.feature_dim, 3)
    reg = L2SP(backbone, head, alpha=1.0, beta=0.0)
    weight = next(backbone.network.parameters())
    with torch.no_grad():
        weight.add_(1.0)
    reg(None, None).backward()
    assert torch.allclose(weight.grad, torch.ones_like(weight))  # alpha * (w - w0)
    assert all(b.grad is None for b in reg.buffers())
    assert all(p.grad is None or not p.grad.any() for p in head.parameters())  # beta = 0


def test_kl_source_starts_at_zero_keeps_the_source_frozen_and_trains_the_backbone():
    pl.seed_everything(0)
    backbone = build_backbone("small_cnn")
    head = LinearHead(backbone.feature_dim, 3)
    reg = KLSource(backbone, head, weight=1.0, temperature=2.0).train()
    images = torch.randn(4, 3, 8, 8)
    backbone.eval()
    assert reg(images, backbone(images)).item() == pytest.approx(0.0, abs=1e-6)
    before = {k: v.clone() for k, v in reg.source.state_dict().items()}
    with torch.no_grad():
        for p in backbone.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    penalty = reg(images, backbone(images))
    assert penalty.item() > 0
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.network.parameters())
    assert all(p.grad is None for p in reg.source.parameters())
    assert backbone.source_head.weight.grad is None
    assert all(torch.equal(v, reg.source.state_dict()[k]) for k, v in before.items())


def test_kl_source_on_features():
    backbone = build_backbone("small_cnn")
    reg = KLSource(backbone, None, target="features", distance="cosine")
    images = torch.randn(4, 3, 8, 8)
    backbone.eval()
    assert reg(images, backbone(images)).item() == pytest.approx(0.0, abs=1e-6)


def test_frozen_batchnorm_stays_in_eval_after_train(make_config):
    cfg = make_config("freeze=partial", "freeze.k=2")
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    module.train()
    modes = {
        n: m.training
        for n, m in module.backbone.network.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    }
    assert modes and all(
        not t for n, t in modes.items() if n.startswith(("features.0", "features.1"))
    )
    assert all(t for n, t in modes.items() if n.startswith("features.2"))


def test_resume_after_an_unfreeze_milestone_keeps_the_backbone_trainable(make_config, tmp_path):
    """The freeze state is derived from the epoch, so a resumed run needs no stored state."""
    cfg = make_config("freeze=freeze_unfreeze", "freeze.unfreeze_at=1", "trainer.max_epochs=3")
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)

    def trainer(epochs: int, callbacks: list) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=epochs,
            callbacks=callbacks,
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            deterministic=True,
        )

    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    trainer(2, [checkpoint]).fit(module, datamodule=data)  # epoch 0 frozen, epoch 1 not

    seen = []

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            grads = {p.requires_grad for p in pl_module.backbone.network.parameters()}
            seen.append((trainer.current_epoch, grads))

    backbone, data = build_backbone_and_data(cfg)
    resumed = build_module(cfg, backbone, data.num_classes)
    start = {k: v.clone() for k, v in resumed.backbone.state_dict().items()}
    trainer(3, [Probe()]).fit(resumed, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert seen == [(2, {True})]
    moved = [not torch.equal(v, resumed.backbone.state_dict()[k]) for k, v in start.items()]
    assert any(moved)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["freeze=freeze_unfreeze", "freeze.unfreeze_at=5", "trainer.max_epochs=5"],
            "freeze.unfreeze_at=5 has epoch 5, beyond trainer.max_epochs=5",
        ),
        (
            ["freeze=gradual", "freeze.milestones=[2,1]"],
            "freeze.milestones=[2, 1] must list epochs (whole numbers >= 0) in increasing order",
        ),
        (
            ["optimizer.param_groups.layer_decay=1.5"],
            "optimizer.param_groups.layer_decay=1.5 must be in (0, 1]",
        ),
        (
            ["optimizer.param_groups.layer_decay=0"],
            "optimizer.param_groups.layer_decay=0 must be in (0, 1]",
        ),
        (["loss.label_smoothing=1"], "loss.label_smoothing=1 must be in [0, 1)"),
        (["augment.mixup_alpha=-1"], "augment.mixup_alpha=-1 must be >= 0"),
        (["head=svm"], "head=svm is fitted on frozen features, but freeze=none trains"),
        (["cv.folds=1"], "cv.folds=1 must be a whole number >= 2"),
    ],
)
def test_bad_method_settings(make_config, overrides, expected):
    with pytest.raises(UserError) as error:
        validate(make_config(*overrides))
    assert str(error.value).startswith(expected)


def test_unknown_regularizer_is_a_composition_error(make_config):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="regularizer/sideways"):
        make_config("regularizer=sideways")


@pytest.mark.parametrize(
    "overrides",
    [
        ["regularizer=l2_sp"],
        ["regularizer=kl_source"],
        ["regularizer=kl_source", "regularizer.target=features"],
        ["regularizer=kl_source", "regularizer.target=features", "regularizer.distance=cosine"],
        ["head=mlp", "loss.label_smoothing=0.1", "augment.mixup_alpha=0.2"],
        ["augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"],
    ],
)
def test_methods_run_end_to_end_and_log_their_penalty(train, runs, overrides):
    train(*overrides)
    (run,) = runs()
    assert run.info.status == "FINISHED"
    if overrides[0].startswith("regularizer"):
        assert run.data.metrics["train/reg"] > 0  # the weights moved away from the source


def test_k_fold_children_and_a_parent_with_mean_and_std(train, runs):
    train("cv.folds=3", "dataset.task.classes=[0,1,2]", "dataset.task.val_fraction=0.3")
    found = runs()
    parent = next(r for r in found if r.data.tags["transferlab.role"] == "finetune-cv")
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 4 and len(children) == 3
    assert {r.info.run_name for r in children} == {
        f"small_cnn-none-adamw-fold{i}" for i in range(3)
    }
    accs = [c.data.metrics["test/acc"] for c in children]
    assert parent.data.metrics["test/acc"] == pytest.approx(sum(accs) / 3)
    assert parent.data.metrics["test/acc_std"] == pytest.approx(float(np.std(accs, ddof=1)))
    assert all(r.info.status == "FINISHED" for r in found)


def test_folds_cover_train_plus_val_and_leave_test_alone():
    from transferlab.data.datasets import Digits
    from transferlab.data.splits import Fold, TaskSpec, carve_task
    from transferlab.data.transforms import Preprocessing

    parts = Digits().load(Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=None))
    task = TaskSpec(classes=[0, 1], split_seed=0)
    plain = carve_task(parts, task)
    folds = [carve_task(parts, task, Fold(i, 4)) for i in range(4)]
    pool = len(plain.train) + len(plain.val)
    assert all(len(f.train) + len(f.val) == pool for f in folds)
    assert sum(len(f.val) for f in folds) == pool
    assert all(torch.equal(f.test.dataset.tensors[0], plain.test.dataset.tensors[0]) for f in folds)
    with pytest.raises(UserError, match=r"cv.folds=500 is more than the smallest class"):
        carve_task(parts, task, Fold(0, 500))
