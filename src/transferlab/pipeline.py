"""The flow of a run: build the parts from the config, fit, test with the best checkpoint,
record everything in MLflow, and return the objective.

With a `source` stage the backbone is first trained on the source task (an MLflow run of
its own, reused while its config is unchanged), then transferred. With `compare_scratch`
the same model is also trained from scratch on the target data, as the baseline.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import Logger

from transferlab.checkpointing import AtomicCheckpointIO, last_checkpoint_path, resumable_training
from transferlab.config import check_accelerator, check_folds_fit_data
from transferlab.data.module import TransferDataModule
from transferlab.data.splits import Fold
from transferlab.distributed import UnrecordedRun, barrier, is_global_zero
from transferlab.errors import UserError, instantiate, one_of
from transferlab.finetune.freezing import check_fits_backbone
from transferlab.finetune.regularizers import build_regularizer
from transferlab.frozen import (
    FeaturesAsInput,
    can_cache_features,
    fit_classical_head,
    split_features,
)
from transferlab.gpu_options import GpuOptions, trainer_arguments
from transferlab.models.backbones import Backbone
from transferlab.models.heads import build_head
from transferlab.models.inference_cost import (
    InferenceSetting,
    device_description,
    image_shape,
    inference_cost,
)
from transferlab.module import TransferModule
from transferlab.objective import CLASSICAL_HEADS, objective_value
from transferlab.pruning import pruning_callbacks
from transferlab.resume import CHECKPOINT_TAG, Resumption
from transferlab.stage_configs import (
    config_key,
    derived_choices,
    resolved,
    scratch_config,
    source_config,
    with_source_weights,
)
from transferlab.tracking.artifacts import write_test_artifacts
from transferlab.tracking.lightning_logger import TrackedRunLogger
from transferlab.tracking.mlflow_run import TrackedRun, Tracker
from transferlab.tracking.redaction import recorded_experiment
from transferlab.tracking.run_info import group_choices, log_config, run_name, run_tags, sweep_tags
from transferlab.tracking.store import tracking_uri

SOURCE_WEIGHTS = "backbone.pt"

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Lightning's INFO lines (accelerator banners, tips, checkpoint restores) drown the results.
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
# Lightning 2.6 on torch 2.14 warns about its own use of a torch API; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# Frozen BatchNorm layers are put in eval mode on purpose (see TransferModule.train).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")
# Lightning 2.6's all_gather (DDP test predictions) uses a torch API that torch deprecates.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather")
# Under DDP, TransferModule reduces its epoch sums over the processes before logging them.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True")


@dataclass
class StageResult:
    role: str
    run_id: str
    run_name: str
    metrics: dict[str, float] = field(default_factory=dict)


class ReplicaTracker(Tracker):
    """The tracker of a DDP process other than rank 0: it reads the store as rank 0 does
    (a source run to reuse), but its runs record nothing: rank 0 records the run once."""

    def start_run(
        self, name: str, tags: dict[str, str], run_id: str | None = None, **recording: Any
    ) -> UnrecordedRun:
        """`recording`: Tracker.start_run's other options, about what is not recorded here."""
        return UnrecordedRun(name, run_id)


def open_tracker(uri: str, experiment_name: str, experiment: DictConfig) -> Tracker:
    kind = Tracker if is_global_zero() else ReplicaTracker
    return kind(uri, experiment_name, experiment=experiment)


def run_experiment(cfg: DictConfig) -> float:
    """Runs what the config asks for and returns the objective (for Hydra sweepers)."""
    main = run_stages(cfg, group_choices(), sweep_tags())
    return objective(main, cfg.optimize_metric)


def run_stages(composed: DictConfig, choices: dict[str, str], tags: dict[str, str]) -> StageResult:
    """[source stage] -> [scratch baseline] -> main stage (or its folds); returns the main.
    `composed` is the run's config with its interpolations unresolved: each derived stage
    merges its own keys first and resolves after (see transferlab.stage_configs)."""
    cfg = resolved(composed)
    check_accelerator(cfg.trainer.accelerator)
    check_folds_fit_data(cfg)  # before any MLflow run exists
    share_cpus_between_workers()
    experiment = recorded_experiment(composed)  # what its runs record: no secret, no $ENV value
    tracker = open_tracker(tracking_uri(cfg.tracking.uri), cfg.experiment_name, experiment)
    target_cfg, tags = cfg, dict(tags)
    if cfg.source:
        weights, source_run_id = pretrain_source(composed, tracker, choices)
        target_cfg = with_source_weights(cfg, weights)
        tags["transferlab.source_run_id"] = source_run_id
    role = "transfer" if cfg.source else "finetune"
    if cfg.cv.folds:
        main = run_cross_validation(target_cfg, tracker, choices, role, tags)
        print_summary([main], tracker)
        return main
    results = []
    if cfg.compare_scratch:
        scratch = scratch_config(composed)
        results.append(run_stage(scratch, tracker, derived_choices(choices, scratch), "scratch"))
        tags["transferlab.baseline_run_id"] = results[0].run_id
    main = run_stage(target_cfg, tracker, choices, role, tags, baseline=next(iter(results), None))
    results.insert(0, main)
    print_summary(results, tracker)
    return main


def resume_stage(resumption: Resumption, output_dir: str) -> float:
    """Continues an interrupted run (see transferlab.resume) in its own MLflow run, and in
    its own output folder where that is still here: its best checkpoint so far is there,
    and Lightning restores the best score only for the same folder."""
    cfg = resumption.config.copy()
    if not Path(cfg.output_dir).is_dir():
        cfg.output_dir = output_dir
    check_accelerator(cfg.trainer.accelerator)
    tracker = open_tracker(tracking_uri(cfg.tracking.uri), cfg.experiment_name, cfg)
    result = run_stage(cfg, tracker, resumption.choices, resumption.role, resume=resumption)
    print_summary([result], tracker)
    return objective(result, cfg.optimize_metric)


def run_stage(
    cfg: DictConfig,
    tracker: Tracker,
    choices: dict[str, str],
    role: str,
    tags: dict[str, str] | None = None,
    baseline: StageResult | None = None,
    fold: Fold | None = None,
    resume: Resumption | None = None,
) -> StageResult:
    """One MLflow run: build, fit, test with the best checkpoint, record. Resuming, the
    run is the interrupted one, whose params and config files are already recorded."""
    name = run_name(cfg, choices, role) + (f"-fold{fold.index}" if fold else "")
    all_tags = {**run_tags(cfg, role), **(tags or {})}
    stage_dir = Path(cfg.output_dir) / role / (f"fold{fold.index}" if fold else "")
    run_id = resume.run_id if resume else None
    with tracker.start_run(name, all_tags, run_id=run_id, local_dir=stage_dir) as run:
        if resume is None and is_global_zero():
            log_config(run, tracker, cfg, choices, role, stage_dir)
        backbone, data = build_backbone_and_data(cfg, fold)
        run.set_tags({"transferlab.dataset_digest": data.dataset_digest})  # what it saw
        precision = resolve_precision(cfg.trainer.get("precision"))
        if cfg.head.name in CLASSICAL_HEADS:
            features = split_features(cfg, backbone, data, precision)
            metrics = fit_classical_head(cfg, run, features, data.class_names, stage_dir)
        else:
            checkpoint = resume.checkpoint if resume else None
            metrics = fit_neural_head(cfg, run, backbone, data, stage_dir, precision, checkpoint)
        if baseline is not None:
            comparison = compare_with(metrics, baseline)
            run.log_metrics(comparison)
            metrics.update(comparison)
        return StageResult(role, run.run_id, name, metrics)


def fit_neural_head(
    cfg: DictConfig,
    run: TrackedRun,
    backbone: Backbone,
    data: TransferDataModule,
    stage_dir: Path,
    precision: str,
    resume_from: Path | None = None,
) -> dict[str, float]:
    """Lightning fit (from `resume_from`, a last checkpoint, when resuming), then test with
    the best checkpoint. A backbone that never trains is run once per split (features
    cached), and only the head is trained on its output. Checkpoints are read with
    weights_only=True: one that needs pickle is refused unread."""
    shape = image_shape(data.splits.test.dataset)  # read before features replace images
    trained = backbone
    if can_cache_features(cfg, backbone):
        data.use_features(split_features(cfg, backbone, data, precision))
        trained = FeaturesAsInput(backbone)
    module = build_module(cfg, trained, data.num_classes)
    trainer = build_trainer(cfg, TrackedRunLogger(run), stage_dir, precision)
    last = last_checkpoint_path(stage_dir).resolve()
    run.set_tags({CHECKPOINT_TAG: str(last)})  # what `resume` continues from
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    run.log_metrics({"time/fit_s": time.perf_counter() - fit_start})  # what sweeps compare
    setting = InferenceSetting(
        shape, trainer.strategy.root_device, precision, trainer.current_epoch
    )
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=data, ckpt_path=best or None, verbose=False, weights_only=True)
    metrics = final_metrics(trainer)
    summary = {f"{k}_best": v for k, v in best_scores(trainer).items()}
    run.log_metrics(summary)
    if is_global_zero():
        record_artifacts(run, module, data, best, stage_dir, backbone, setting)
    return {**metrics, **summary}


def run_cross_validation(
    cfg: DictConfig, tracker: Tracker, choices: dict[str, str], role: str, tags: dict[str, str]
) -> StageResult:
    """A parent run holding the mean (under the metric's own name) and the standard
    deviation (`<metric>_std`) of every final metric over the folds; a child run per fold."""
    folds = cfg.cv.folds
    name = f"{run_name(cfg, choices, role)}-cv{folds}"
    cv_tags = {**run_tags(cfg, f"{role}-cv"), **tags}
    with tracker.start_run(name, cv_tags, local_dir=Path(cfg.output_dir) / role) as parent:
        if is_global_zero():
            log_config(parent, tracker, cfg, choices, role, Path(cfg.output_dir) / role)
        child_tags = {**tags, "mlflow.parentRunId": parent.run_id}
        results = [
            run_stage(cfg, tracker, choices, role, child_tags, fold=Fold(i, folds))
            for i in range(folds)
        ]
        summary = mean_and_std([r.metrics for r in results])
        parent.log_metrics(summary)
        return StageResult(f"{role}-cv", parent.run_id, name, summary)


def mean_and_std(per_fold: list[dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(m) for m in per_fold))
    summary = {}
    for key in sorted(keys):
        values = np.array([m[key] for m in per_fold])
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1))
    return summary


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
    """Seeded first, so the same seed gives the same initial weights."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = instantiate(cfg.backbone)
    check_fits_backbone(cfg.freeze, backbone.num_stages, backbone.name)
    data = TransferDataModule(cfg.dataset, backbone.preprocessing, cfg.loader, fold, seed=cfg.seed)
    data.setup()
    return backbone, data


def build_module(cfg: DictConfig, backbone: Backbone, num_classes: int) -> TransferModule:
    head = build_head(in_features=backbone.feature_dim, num_classes=num_classes, **cfg.head)
    return TransferModule(
        backbone,
        head,
        num_classes,
        cfg.freeze,
        cfg.optimizer,
        cfg.scheduler,
        regularizer=build_regularizer(backbone=backbone, head=head, **cfg.regularizer),
        label_smoothing=cfg.loss.label_smoothing,
        mixup_alpha=cfg.augment.mixup_alpha,
        cutmix_alpha=cfg.augment.cutmix_alpha,
    )


def build_trainer(
    cfg: DictConfig, logger: Logger | bool, stage_dir: Path, precision: str
) -> pl.Trainer:
    """Lightning's Trainer from `cfg.trainer`, less transferlab's own keys (`channels_last`,
    `compile`), which a callback applies to the module instead. Under DDP the data module
    gives each process its share of the batches itself: Lightning's DistributedSampler
    would shuffle the seeded training order again and repeat evaluation images."""
    trainer_cfg, options = trainer_arguments(cfg.trainer)
    configured = [instantiate(c) for c in cfg.callbacks.values() if c is not None]  # null: off
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


def resolve_precision(precision: str | None) -> str:
    """`auto-mixed`: bf16 where the GPU has it (no loss scaling needed), else fp16."""
    if precision != "auto-mixed":
        return precision or "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def pretrain_source(cfg: DictConfig, tracker: Tracker, choices: dict[str, str]) -> tuple[str, str]:
    """Trains the backbone on the source task, or reuses the run that already did. `cfg`
    is the run's config as composed (see run_stages). Returns the source weights as the
    MLflow URI the transfer stage loads and records (`runs:/<id>/backbone.pt`: the same
    wherever and however often it is rerun), and the source run's id."""
    source_cfg = source_config(cfg)
    key = config_key(source_cfg)
    run_id = tracker.find_finished_run("transferlab.source_key", key)
    if run_id is None:
        source_choices = derived_choices(choices, source_cfg)
        tags = {"transferlab.source_key": key}
        run_stage(source_cfg, tracker, source_choices, "source", tags)
        barrier()  # under DDP, rank 0 has recorded the source run once every process is here
        run_id = tracker.find_finished_run("transferlab.source_key", key)
    elif is_global_zero():
        print(f"Reusing source run {run_id} (its config is unchanged).")
    return f"runs:/{run_id}/{SOURCE_WEIGHTS}", run_id


def final_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def best_scores(trainer: pl.Trainer) -> dict[str, float]:
    """The checkpointed (best) value of the monitored metric, e.g. val/acc."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.best_model_score is None:
        return {}
    return {callback.monitor: float(callback.best_model_score)}


def compare_with(metrics: dict[str, float], baseline: StageResult) -> dict[str, float]:
    compared = {f"scratch/{k}": v for k, v in baseline.metrics.items() if k.startswith("test/")}
    if "test/acc" in metrics and "test/acc" in baseline.metrics:
        compared["scratch/test/acc_gain"] = metrics["test/acc"] - baseline.metrics["test/acc"]
    return compared


def record_artifacts(
    run: TrackedRun,
    module: TransferModule,
    data: TransferDataModule,
    best: str,
    stage_dir: Path,
    backbone: Backbone,
    setting: InferenceSetting,
) -> None:
    """Test plots, the best checkpoint, the backbone's weights and the inference cost of
    the real backbone + head (also when cached features stood in for the backbone)."""
    run.log_metrics(inference_cost(backbone, module.head, module.freeze, setting, data.batch_size))
    run.set_tags({"transferlab.inference_device": device_description(setting.device)})
    predictions = torch.cat(module.test_predictions).numpy()
    targets = torch.cat(module.test_targets).numpy()
    for path in write_test_artifacts(predictions, targets, data.class_names, stage_dir / "test"):
        run.log_artifact(path, "test")
    if best:
        run.log_artifact(best, "checkpoints")
    if isinstance(module.backbone, FeaturesAsInput):
        return  # the backbone never trained: it is the source's, already recorded where it is
    weights = stage_dir / SOURCE_WEIGHTS
    torch.save(backbone.source_state_dict(getattr(module.head, "linear", None)), weights)
    run.log_artifact(weights)


def objective(result: StageResult, metric: str) -> float:
    value = objective_value(result.metrics, metric)
    if value is None:
        logged = one_of(sorted(result.metrics))
        raise UserError(f"optimize_metric={metric!r} was not logged; use {logged}")
    return value


def print_summary(results: list[StageResult], tracker: Tracker) -> None:
    if not is_global_zero():
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="transferlab results (target test set)")
    for column in ("role", "run", "test/acc", "test/loss"):
        table.add_column(column)
    table.add_column("run id", no_wrap=True)
    for r in results:
        acc, loss = r.metrics.get("test/acc", np.nan), r.metrics.get("test/loss", np.nan)
        table.add_row(r.role, r.run_name, f"{acc:.4f}", f"{loss:.4f}", r.run_id)
    console = Console()
    console.print(table)
    main = results[0]
    if "scratch/test/acc" in main.metrics:
        gain = main.metrics["scratch/test/acc_gain"]
        console.print(
            f"{main.role} vs scratch, test accuracy: {main.metrics['test/acc']:.4f} vs "
            f"{main.metrics['scratch/test/acc']:.4f} ({gain:+.4f})"
        )
    console.print(f"MLflow ({tracker.uri}): `make ui`, then {tracker.runs_page_url()}")
