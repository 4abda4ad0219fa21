"""Builders: the parts of one stage made from its config (tracker, backbone and data, the
Lightning module and trainer), seeded and checked, ready for pipeline.run_stage to fit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import Logger

from transferlab.adaptation.base import build_adaptation
from transferlab.checkpointing import AtomicCheckpointIO, resumable_training
from transferlab.components import build, options_of
from transferlab.data.module import TransferDataModule
from transferlab.data.splits import Fold
from transferlab.distributed import UnrecordedRun, is_global_zero
from transferlab.errors import instantiate
from transferlab.gpu_options import GpuOptions, trainer_arguments
from transferlab.models.backbone import Backbone
from transferlab.module import TransferModule
from transferlab.objective import adaptation_node, lower_is_better, selected_metric, selection_of
from transferlab.pruning import pruning_callbacks
from transferlab.tracking.mlflow_run import Tracker


class ReplicaTracker(Tracker):
    """The tracker of a DDP process other than rank 0: it reads the store as rank 0 does
    (a source run to reuse), but its runs record nothing: rank 0 records the run once."""

    def start_run(
        self, name: str, tags: dict[str, str], run_id: str | None = None, **recording: Any
    ) -> UnrecordedRun:
        """`recording`: Tracker.start_run's other options, about what is not recorded here."""
        return UnrecordedRun(name, run_id)


def open_tracker(
    uri: str, experiment_name: str, experiment: DictConfig, system_metrics: bool = False
) -> Tracker:
    kind = Tracker if is_global_zero() else ReplicaTracker
    return kind(uri, experiment_name, experiment=experiment, system_metrics=system_metrics)


def share_cpus_between_workers() -> None:
    """Parallel jobs (hydra/launcher=joblib) each get their share of the cores: n workers
    each using every core would fight over them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return
    cores = os.cpu_count() or 1
    workers = launcher.n_jobs if launcher.n_jobs > 0 else cores
    torch.set_num_threads(max(1, cores // workers))


def build_backbone_and_data(
    cfg: DictConfig, fold: Fold | None = None
) -> tuple[Backbone, TransferDataModule]:
    """Seeded first, so the same seed gives the same initial weights (an adapter's too)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = instantiate(cfg.backbone)
    freeze = build(cfg.freeze, "freeze")
    with options_of("freeze"):
        freeze.check_fits_backbone(backbone.num_stages, backbone.name)
        freeze.adapt(backbone)  # e.g. LoRA's layers, seeded like the rest
    data = TransferDataModule.for_run(cfg, backbone.preprocessing, fold)
    data.setup()
    return backbone, data


def build_module(cfg: DictConfig, backbone: Backbone, num_classes: int) -> TransferModule:
    """Head, freeze strategy and regulariser are their groups' `_target_`s; the head gets
    its sizes and the regulariser the networks it watches (none: `_target_: null`)."""
    head = build(cfg.head, "head", in_features=backbone.feature_dim, num_classes=num_classes)
    adaptation = build_adaptation(adaptation_node(cfg), backbone.feature_dim, num_classes)
    return TransferModule(
        backbone,
        head,
        num_classes,
        build(cfg.freeze, "freeze"),
        cfg.optimizer,
        cfg.scheduler,
        regularizer=build(cfg.regularizer, "regularizer", backbone=backbone, head=head),
        label_smoothing=cfg.loss.label_smoothing,
        mixup_alpha=cfg.augment.mixup_alpha,
        cutmix_alpha=cfg.augment.cutmix_alpha,
        adaptation=adaptation,
        selection=selection_of(cfg),
    )


def build_trainer(
    cfg: DictConfig, logger: Logger | bool, stage_dir: Path, precision: str
) -> pl.Trainer:
    """Lightning's Trainer from `cfg.trainer`, less transferlab's own `trainer.gpu` node,
    which a callback applies to the module instead. Under DDP the data module
    gives each process its share of the batches itself: Lightning's DistributedSampler
    would shuffle the seeded training order again and repeat evaluation images."""
    trainer_cfg, options = trainer_arguments(cfg.trainer)
    selection = selection_of(cfg)
    configured = [
        instantiate(following_selection(c, selection))
        for c in cfg.callbacks.values()
        if c is not None  # null: off
    ]
    resumable = resumable_training(cfg.checkpoint, stage_dir)  # after the best checkpoint
    callbacks = [*configured, *pruning_callbacks(cfg), resumable]
    if any(options.values()):
        callbacks.append(GpuOptions(**options))
    return instantiate(
        trainer_cfg,
        precision=precision,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(stage_dir),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],  # checkpoints renamed into place, never half-written
    )


def following_selection(callback: DictConfig, selection: str | None) -> DictConfig:
    """A callback that watches the validation (the checkpoint, early stopping) watches what
    the run's `adapt.selection` chooses by: with a target domain and `entropy`, the target's
    prediction entropy (lower is better) where it said `val/acc`."""
    monitor = callback.get("monitor")
    if monitor is None or selected_metric(monitor, selection) == monitor:
        return callback
    followed = callback.copy()
    followed.monitor = selected_metric(monitor, selection)
    if "mode" in followed:
        followed.mode = "min" if lower_is_better(followed.monitor) else "max"
    return followed


def resolve_precision(precision: str | None) -> str:
    """`auto-mixed`: bf16 where the GPU has it (no loss scaling needed), else fp16."""
    if precision != "auto-mixed":
        return precision or "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
