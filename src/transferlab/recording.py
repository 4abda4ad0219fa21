"""Recording: what a finished stage leaves in MLflow beyond its logged metrics (test plots,
checkpoints, the backbone's weights, the inference cost), its result, the objective a
sweeper reads, and the summary table printed at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from transferlab.data.module import TransferDataModule
from transferlab.distributed import is_global_zero
from transferlab.errors import UserError, one_of
from transferlab.frozen import FeaturesAsInput
from transferlab.models.backbone import Backbone
from transferlab.models.inference_cost import InferenceSetting, device_description, inference_cost
from transferlab.module import TransferModule
from transferlab.objective import objective_value
from transferlab.scrub import scrubbed
from transferlab.tracking.artifacts import write_test_artifacts
from transferlab.tracking.digests import digest_tag, file_sha256
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
        log_weights(run, Path(best), "checkpoints")
    if isinstance(module.backbone, FeaturesAsInput) or backbone.base_sha256 is not None:
        return  # never trained (the features were cached), or only an adapter did: the
        # backbone's weights are the source's, recorded where they came from
    weights = stage_dir / SOURCE_WEIGHTS
    torch.save(backbone.source_state_dict(getattr(module.head, "linear", None)), weights)
    log_weights(run, weights)


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
    console.print(f"MLflow ({scrubbed(tracker.uri)}): `make ui`, then {tracker.runs_page_url()}")
