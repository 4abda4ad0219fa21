"""The run, top-down: resolve the stages the config asks for, then for each stage build,
fit, test and record (one MLflow run each), and return the objective.

With a `source` stage the backbone is first trained on the source task (an MLflow run of
its own, reused while its config is unchanged), then transferred. With `compare_scratch`
the same model is also trained from scratch on the target data, as the baseline. What a
stage is made of comes from transferlab.builders; what it leaves in MLflow from
transferlab.recording.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from transferlab.adaptation.shift import record_domain_shift, test_features
from transferlab.builders import (
    build_backbone_and_data,
    build_module,
    build_trainer,
    open_tracker,
    resolve_precision,
    share_cpus_between_workers,
)
from transferlab.checkpointing import last_checkpoint_path
from transferlab.components import is_classical_head
from transferlab.config import check_accelerator, check_domains_match, check_folds_fit_data
from transferlab.data.module import TransferDataModule
from transferlab.data.splits import Fold
from transferlab.distributed import barrier, is_global_zero
from transferlab.errors import UserError
from transferlab.frozen import (
    FeaturesAsInput,
    can_cache_features,
    fit_classical_head,
    split_features,
)
from transferlab.models.backbone import Backbone
from transferlab.models.inference_cost import InferenceSetting, image_shape
from transferlab.objective import run_metric
from transferlab.recording import (
    SOURCE_WEIGHTS,
    StageResult,
    best_scores,
    compare_with,
    final_metrics,
    mean_and_std,
    objective,
    print_summary,
    record_artifacts,
)
from transferlab.resume import Resumption
from transferlab.stage_configs import (
    config_key,
    derived_choices,
    resolved,
    scratch_config,
    source_config,
    with_source_weights,
)
from transferlab.tracking.digests import digest_tag
from transferlab.tracking.lightning_logger import TrackedRunLogger
from transferlab.tracking.logged_model import register_run_model
from transferlab.tracking.mlflow_run import TrackedRun, Tracker
from transferlab.tracking.recorded import CHECKPOINT_TAG, STAGE_CONFIG
from transferlab.tracking.redaction import recorded_experiment
from transferlab.tracking.run_info import group_choices, log_config, run_name, run_tags, sweep_tags
from transferlab.tracking.store import tracking_uri
from transferlab.tracking.system_metrics import system_metrics_wanted
from transferlab.trusted_configs import trusted_config

if TYPE_CHECKING:
    from mlflow.entities import Run

SOURCE_KEY_TAG = "transferlab.source_key"  # on a source run: its config_key, for reuse


def run_experiment(cfg: DictConfig) -> float:
    """Runs what the config asks for and returns the objective (for Hydra sweepers)."""
    main = run_stages(cfg, group_choices(), sweep_tags())
    return objective(main, run_metric(cfg))


def run_stages(composed: DictConfig, choices: dict[str, str], tags: dict[str, str]) -> StageResult:
    """The job's run (the main stage's, or its k-fold parent) opens first, and the stages
    run under it: [source stage] -> [scratch baseline] -> main stage (or its folds). So the
    top level of a study holds its jobs only, and a job that stops anywhere leaves each of
    its runs nested and ended. Returns the main stage. `composed` is the run's config with
    its interpolations unresolved: each derived stage merges its own keys first and
    resolves after (see transferlab.stage_configs)."""
    cfg = resolved(composed)
    check_accelerator(cfg.trainer.accelerator)
    check_folds_fit_data(cfg)  # before any MLflow run exists
    check_domains_match(cfg)
    share_cpus_between_workers()
    experiment = recorded_experiment(composed)  # what its runs record: no secret, no $ENV value
    tracker = open_tracker(
        tracking_uri(cfg.tracking.uri), cfg.experiment_name, experiment, system_metrics(cfg)
    )
    role = "transfer" if cfg.source else "finetune"
    kind = f"{role}-cv" if cfg.cv.folds else role
    name = run_name(cfg, choices, role, f"-cv{cfg.cv.folds}" if cfg.cv.folds else "")
    stage_dir = Path(cfg.output_dir) / role
    target_cfg, tags = cfg, dict(tags)
    with tracker.start_run(name, {**run_tags(cfg, kind), **tags}, local_dir=stage_dir) as job:
        if cfg.source:
            under_job = {"mlflow.parentRunId": job.run_id}
            weights, source_run_id = pretrain_source(composed, tracker, choices, under_job)
            target_cfg = with_source_weights(cfg, weights)
            tags["transferlab.source_run_id"] = source_run_id  # on the job's run and its folds
            job.set_tags({"transferlab.source_run_id": source_run_id})
        if is_global_zero():  # before the baseline: a job whose baseline fails shows its params
            log_config(job, tracker, target_cfg, choices, role, stage_dir)
        if cfg.cv.folds:
            results = [run_cross_validation(target_cfg, tracker, job, choices, role, tags)]
        else:
            baseline = run_scratch(composed, tracker, choices, job) if cfg.compare_scratch else None
            main = run_stage(target_cfg, tracker, choices, role, baseline=baseline, run=job)
            results = [main, baseline] if baseline else [main]
    if cfg.register.name and is_global_zero():  # the job's model, once its run has ended
        register_run_model(tracker.client, job.run_id, cfg.register.name, cfg.register.alias)
    print_summary(results, tracker)
    return results[0]


def run_scratch(
    composed: DictConfig, tracker: Tracker, choices: dict[str, str], job: TrackedRun
) -> StageResult:
    """The scratch baseline: a child of the job's run, named after it."""
    scratch = scratch_config(composed)
    tags = {"mlflow.parentRunId": job.run_id}
    name = f"scratch for {job.name}"
    result = run_stage(
        scratch, tracker, derived_choices(choices, scratch), "scratch", tags, name=name
    )
    job.set_tags({"transferlab.baseline_run_id": result.run_id})
    return result


def pretrain_source(
    cfg: DictConfig, tracker: Tracker, choices: dict[str, str], tags: dict[str, str]
) -> tuple[str, str]:
    """Trains the backbone on the source task (a run tagged `tags`: under the job's run),
    or reuses the run that already did, wherever it is nested. `cfg` is the run's config as
    composed (see run_stages). Returns the source weights as the MLflow URI the transfer
    stage loads and records (`runs:/<id>/backbone.pt`: the same wherever and however often
    it is rerun), and the source run's id."""
    source_cfg = source_config(cfg)
    key = config_key(source_cfg)
    reusable = _recorded_with_key(tracker, key)
    run_id = tracker.find_finished_run(SOURCE_KEY_TAG, key, reusable)
    if run_id is None:
        source_choices = derived_choices(choices, source_cfg)
        source_tags = {**tags, SOURCE_KEY_TAG: key}
        trained = run_stage(source_cfg, tracker, source_choices, "source", source_tags)
        barrier()  # under DDP, rank 0 has recorded the source run once every process is here
        if is_global_zero():
            run_id = trained.run_id
        else:  # the run rank 0 recorded, found as every reused one is
            run_id = tracker.find_finished_run(SOURCE_KEY_TAG, key, reusable)
    elif is_global_zero():
        print(f"Reusing source run {run_id} (its config is unchanged).")
    return f"runs:/{run_id}/{SOURCE_WEIGHTS}", run_id


def _recorded_with_key(tracker: Tracker, key: str) -> Callable[[Run], bool]:
    """Whether a run tagged with the source `key` is one to reuse. Anyone who can write to
    the store can set a tag: the key is recomputed from the config the run recorded (read
    as trusted_configs checks it), and its weights must have a recorded sha256 (checked when
    the transfer stage loads them). A run that fails either is not reused, and says why."""

    def reusable(run: Run) -> bool:
        reason = None
        if digest_tag(SOURCE_WEIGHTS) not in run.data.tags:
            reason = f"it recorded no sha256 of its {SOURCE_WEIGHTS}"
        else:
            try:
                recorded = trusted_config(tracker.client, run, STAGE_CONFIG, "not a source run")
                if config_key(recorded) != key:
                    reason = "the config it recorded is another one"
            except (UserError, OmegaConfBaseException) as err:
                reason = str(err)
        if reason and is_global_zero():
            print(f"Not reusing source run {run.info.run_id}: {reason}", file=sys.stderr)
        return reason is None

    return reusable


def run_cross_validation(
    cfg: DictConfig,
    tracker: Tracker,
    parent: TrackedRun,
    choices: dict[str, str],
    role: str,
    tags: dict[str, str],
) -> StageResult:
    """A child run per fold under `parent`, the job's run (opened and ended by run_stages),
    which gets the mean (under the metric's own name) and the standard deviation
    (`<metric>_std`) of every final metric over the folds."""
    folds = cfg.cv.folds
    child_tags = {**tags, "mlflow.parentRunId": parent.run_id}
    results = [
        run_stage(cfg, tracker, choices, role, child_tags, fold=Fold(i, folds))
        for i in range(folds)
    ]
    summary = mean_and_std([r.metrics for r in results])
    parent.log_metrics(summary)
    return StageResult(f"{role}-cv", parent.run_id, parent.name, summary)


def run_stage(
    cfg: DictConfig,
    tracker: Tracker,
    choices: dict[str, str],
    role: str,
    tags: dict[str, str] | None = None,
    baseline: StageResult | None = None,
    fold: Fold | None = None,
    resume: Resumption | None = None,
    name: str | None = None,
    run: TrackedRun | None = None,
) -> StageResult:
    """One MLflow run: build, fit, test with the best checkpoint, record. Resuming, the
    run is the interrupted one, whose params and config files are already recorded; so
    are those of `run`, the job's run, which run_stages opened and ends. `name` replaces
    the one the choices make (a scratch run names the run it is the baseline of)."""
    stage_dir = Path(cfg.output_dir) / role / (f"fold{fold.index}" if fold else "")
    recorded = resume is not None or run is not None
    if run is None:
        name = name or run_name(cfg, choices, role, f"-fold{fold.index}" if fold else "")
        all_tags = {**run_tags(cfg, role), **(tags or {})}
        run_id = resume.run_id if resume else None
        opened = tracker.start_run(name, all_tags, run_id=run_id, local_dir=stage_dir)
    else:
        opened = nullcontext(run)
    with opened as run:
        if not recorded and is_global_zero():
            log_config(run, tracker, cfg, choices, role, stage_dir)
        backbone, data = build_backbone_and_data(cfg, fold)
        run.log_datasets(data)  # what it saw: its splits as MLflow datasets, the digest tag
        precision = resolve_precision(cfg.trainer.get("precision"))
        if is_classical_head(cfg.head):
            features = split_features(cfg, backbone, data, precision)
            metrics = fit_classical_head(cfg, run, features, data.class_names, stage_dir)
        else:
            checkpoint = resume.checkpoint if resume else None
            metrics = fit_neural_head(cfg, run, backbone, data, stage_dir, precision, checkpoint)
        if baseline is not None:
            comparison = compare_with(metrics, baseline)
            run.log_metrics(comparison)
            metrics.update(comparison)
        return StageResult(role, run.run_id, run.name, metrics)


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
    domains_before = test_features(module.backbone, data) if data.target else None
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
        record_artifacts(run, module, data, best, stage_dir, backbone, setting, cfg, metrics)
        if domains_before is not None:
            after = test_features(module.backbone, data)
            shift = record_domain_shift(run, domains_before, after, stage_dir / "adapt", cfg.seed)
            summary.update(shift)
    return {**metrics, **summary}


def system_metrics(cfg: DictConfig) -> bool:
    """Whether runs log MLflow's system metrics (a config recorded before the switch: auto)."""
    setting = cfg.tracking.get("system_metrics", "auto")
    return system_metrics_wanted(setting, cfg.trainer.accelerator)


def resume_stage(resumption: Resumption, output_dir: str) -> float:
    """Continues an interrupted run (see transferlab.resume) in its own MLflow run, and in
    its own output folder where that is still here: its best checkpoint so far is there,
    and Lightning restores the best score only for the same folder. The recorded folder is
    data from the store: it is used only when it holds the checkpoint being resumed, never to
    write into a folder a planted config names."""
    cfg = resumption.config.copy()
    if not resumption.checkpoint.resolve().is_relative_to(Path(cfg.output_dir).resolve()):
        cfg.output_dir = output_dir
    check_accelerator(cfg.trainer.accelerator)
    tracker = open_tracker(
        tracking_uri(cfg.tracking.uri), cfg.experiment_name, cfg, system_metrics(cfg)
    )
    result = run_stage(cfg, tracker, resumption.choices, resumption.role, resume=resumption)
    print_summary([result], tracker)
    return objective(result, run_metric(cfg))
