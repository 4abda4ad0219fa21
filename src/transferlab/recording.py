"""Recording: what a finished stage leaves in MLflow beyond its logged metrics (test plots,
checkpoints, the backbone's weights, the inference cost, its MLflow model), its result, the
objective a sweeper reads, and the summary table printed at the end of a run."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from transferlab.components import target_name
from transferlab.data.module import TransferDataModule
from transferlab.distributed import is_global_zero
from transferlab.errors import UserError, one_of
from transferlab.export import PREPROCESSING, adaptation_record, write_preprocessing
from transferlab.finetune.peft_layers import merge_lora
from transferlab.frozen import FeaturesAsInput
from transferlab.models.backbone import Backbone
from transferlab.models.inference_cost import (
    Classifier,
    InferenceSetting,
    device_description,
    inference_cost,
)
from transferlab.module import TransferModule
from transferlab.objective import objective_value
from transferlab.scrub import scrubbed, without_url_credentials
from transferlab.tracking.artifacts import write_test_artifacts
from transferlab.tracking.digests import digest_tag, file_sha256
from transferlab.tracking.logged_model import log_run_model
from transferlab.tracking.mlflow_run import TrackedRun, Tracker

SOURCE_WEIGHTS = "backbone.pt"  # the backbone's weights in a stage's run: what a transfer loads


@dataclass
class StageResult:
    role: str
    run_id: str
    run_name: str
    metrics: dict[str, float] = field(default_factory=dict)


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


def mean_and_std(per_fold: list[dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(m) for m in per_fold))
    summary = {}
    for key in sorted(keys):
        values = np.array([m[key] for m in per_fold])
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1))
    return summary


def record_artifacts(
    run: TrackedRun,
    module: TransferModule,
    data: TransferDataModule,
    best: str,
    stage_dir: Path,
    backbone: Backbone,
    setting: InferenceSetting,
    cfg: DictConfig,
    metrics: dict[str, float],
) -> None:
    """Test plots, the best checkpoint, the backbone's weights, the inference cost of the
    real backbone + head (also when cached features stood in for the backbone) and that
    network as the run's MLflow model, its test `metrics` linked to it."""
    run.log_metrics(inference_cost(backbone, module.head, module.freeze, setting, data.batch_size))
    run.set_tags({"transferlab.inference_device": device_description(setting.device)})
    predictions = torch.cat(module.test_predictions).numpy()
    targets = torch.cat(module.test_targets).numpy()
    for path in write_test_artifacts(predictions, targets, data.class_names, stage_dir / "test"):
        run.log_artifact(path, "test")
    if best:
        log_weights(run, Path(best), "checkpoints")
    log_mlflow_model(run, cfg, module, data, stage_dir, backbone, setting, metrics)
    if isinstance(module.backbone, FeaturesAsInput) or backbone.base_sha256 is not None:
        return  # never trained (the features were cached), or only an adapter did: the
        # backbone's weights are the source's, recorded where they came from
    weights = stage_dir / SOURCE_WEIGHTS
    torch.save(backbone.source_state_dict(getattr(module.head, "linear", None)), weights)
    log_weights(run, weights)


def log_mlflow_model(
    run: TrackedRun,
    cfg: DictConfig,
    module: TransferModule,
    data: TransferDataModule,
    stage_dir: Path,
    backbone: Backbone,
    setting: InferenceSetting,
    metrics: dict[str, float],
) -> str:
    """The network the run tested (backbone + head, on a copy: LoRA merged, CPU, float32)
    as the run's logged model, with its preprocessing and the backbone's state dict."""
    deployed = copy.deepcopy(backbone).cpu().float()
    head = copy.deepcopy(module.head).cpu().float()
    adaptation = None
    if backbone.base_sha256 is not None:
        with torch.no_grad():  # weights changed in place: no graph to record
            merge_lora(deployed.network)
        base = {"sha256": backbone.base_sha256, "source": backbone.weights_source}
        adaptation = adaptation_record(target_name(cfg.freeze), base, module.freeze)
    folder = stage_dir / "mlflow-model"
    folder.mkdir(parents=True, exist_ok=True)
    shape = torch.empty((0, *setting.image_shape))  # write_preprocessing reads its shape
    preprocessing = write_preprocessing(
        folder / PREPROCESSING, cfg, data, shape, run.run_id, adaptation
    )
    tested = {key: value for key, value in metrics.items() if "test/" in key}
    return log_run_model(
        run,
        Classifier(deployed.network, head).eval(),
        deployed.source_state_dict(getattr(head, "linear", None)),
        preprocessing,
        tested,
        setting.epochs,
        folder,
    )


def log_weights(run: TrackedRun, path: Path, folder: str | None = None) -> None:
    """Logs a weights file with its sha256 as a tag: what a reader checks the artifact
    against (see tracking.digests)."""
    artifact = f"{folder}/{path.name}" if folder else path.name
    run.set_tags({digest_tag(artifact): file_sha256(path)})
    run.log_artifact(path, folder)


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

    table = Table(title="transferlab results (test sets)")
    columns = ["test/acc", "test/loss"]
    if any("target/test/acc" in r.metrics for r in results):  # an unlabelled target domain's
        columns.append("target/test/acc")
    for column in ("role", "run", *columns):
        table.add_column(column)
    table.add_column("run id", no_wrap=True)
    for r in results:
        values = (f"{r.metrics.get(column, np.nan):.4f}" for column in columns)
        table.add_row(r.role, r.run_name, *values, r.run_id)
    console = Console()
    console.print(table)
    main = results[0]
    if "scratch/test/acc" in main.metrics:
        gain = main.metrics["scratch/test/acc_gain"]
        console.print(
            f"{main.role} vs scratch, test accuracy: {main.metrics['test/acc']:.4f} vs "
            f"{main.metrics['scratch/test/acc']:.4f} ({gain:+.4f})"
        )
    if tracker.uri.startswith(("http://", "https://")):  # a tracking server: its own UI
        console.print(f"MLflow: {tracker.runs_page_url(without_url_credentials(tracker.uri))}")
    else:
        console.print(
            f"MLflow ({scrubbed(tracker.uri)}): `make ui`, then {tracker.runs_page_url()}"
        )
