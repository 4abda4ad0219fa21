"""The ranking (transferlab-rank): for each candidate source, its frozen features on the
target's train split (through the feature cache: a second ranking reads them from disk) and
every transferability score of them, in one MLflow parent run (role `ranking`) with a child
run per candidate. A candidate that fails (its weights do not load, its features are not
finite) is a FAILED child run with the reason; the others are still scored.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from transferlab.builders import open_tracker, resolve_precision
from transferlab.data.module import TransferDataModule
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError, instantiate
from transferlab.frozen import split_features
from transferlab.models.backbone import Backbone
from transferlab.rank_config import Candidate
from transferlab.rank_validation import validate_ranking_by_finetuning
from transferlab.report_ranking import (
    CANDIDATE_ROLE,
    METRIC,
    ROLE,
    SCORES_TAG,
    SKIPPED_TAG,
    RankedCandidate,
    best_first,
    render_ranking,
)
from transferlab.scrub import scrubbed
from transferlab.tracking.mlflow_run import Tracker
from transferlab.tracking.redaction import flatten, recorded_experiment
from transferlab.tracking.run_info import group_choices, log_config, run_tags
from transferlab.tracking.store import tracking_uri
from transferlab.transferability import NEEDS_SOURCE, SCORES

TABLE = "ranking.md"  # the parent run's artifact
WEIGHT_KEYS = ("weights", "pretrained", "weights_path")  # a node naming trained weights


def rank_candidates(
    cfg: DictConfig,
    candidates: list[Candidate],
    scores: list[str],
    finetunes: list[tuple[DictConfig, dict[str, str]]] | None = None,
) -> list[RankedCandidate]:
    """Scores every candidate; returns them as given. Raises a UserError where none could
    be scored (the parent run then FAILED too). `finetunes` (rank.validate, one per
    candidate: see rank_validation): then fine-tunes them and checks the scores against it."""
    check_target_classes(cfg)  # before any run
    precision = resolve_precision(cfg.trainer.get("precision"))
    tracker = open_tracker(
        tracking_uri(cfg.tracking.uri), cfg.experiment_name, recorded_experiment(cfg)
    )
    folder = Path(cfg.output_dir) / ROLE
    tags = {**run_tags(cfg, ROLE), SCORES_TAG: ",".join(scores)}
    with tracker.start_run(ROLE, tags, local_dir=folder) as parent:
        log_config(parent, tracker, cfg, group_choices(), ROLE, folder)
        rows = [
            score_candidate(cfg, candidate, scores, tracker, parent.run_id, precision)
            for candidate in candidates
        ]
        scored = any(row.status == "FINISHED" for row in rows)
        parent.log_metrics({f"{METRIC}rank_s": ranking_seconds(rows)})
        agreement = (
            validate_ranking_by_finetuning(cfg, finetunes, rows, scores, parent)
            if finetunes and scored
            else None
        )
        table = folder / TABLE
        title = f"{ROLE} (run {parent.run_id})"
        table.write_text(render_ranking(title, rows, scores, agreement))
        parent.log_artifact(table)
        if not scored:
            reasons = "; ".join(f"{row.name}: {row.note}" for row in rows)
            raise UserError(f"no candidate could be scored: {reasons}")
    print_ranking(rows, scores, tracker, parent.run_id)
    return rows


def ranking_seconds(rows: list[RankedCandidate]) -> float:
    """What ranking took from the features: their extraction (a cache read when cached)
    and the scores, summed over the candidates."""
    return sum(row.metrics.get("extract_s", 0.0) + row.metrics.get("score_s", 0.0) for row in rows)


def check_target_classes(cfg: DictConfig) -> None:
    """Every score compares classes: a train split of one class is refused before any run.
    The split is carved as each candidate's will be, at the images' native size."""
    data = TransferDataModule(
        cfg.dataset, Preprocessing(input_size=None), cfg.loader, seed=cfg.seed
    )
    data.setup()
    found = np.unique(data.splits.train.targets)
    if len(found) < 2:
        names = [data.class_names[int(i)] for i in found]
        raise UserError(
            f"dataset: the target's train split holds {len(found)} class {names}; a ranking "
            "needs at least 2 (see dataset.task.classes)"
        )


def score_candidate(
    cfg: DictConfig,
    candidate: Candidate,
    scores: list[str],
    tracker: Tracker,
    parent_id: str,
    precision: str,
) -> RankedCandidate:
    """One child run: FINISHED with its metrics, or FAILED with the reason (also printed)."""
    tags = {**run_tags(cfg, CANDIDATE_ROLE), "mlflow.parentRunId": parent_id}
    folder = Path(cfg.output_dir) / ROLE / f"candidate{candidate.key.rpartition('[')[2][:-1]}"
    run = tracker.start_run(candidate.name, tags, local_dir=folder)
    try:
        with run:
            node = OmegaConf.to_container(candidate.backbone, resolve=True)
            run.log_params({"candidate": candidate.name, **flatten({"backbone": node})})
            metrics, note = measure(cfg, candidate, scores, precision)
            run.log_metrics({f"{METRIC}{k}": v for k, v in metrics.items()})
            if note:
                run.set_tags({SKIPPED_TAG: note})
    except Exception as error:
        named = error if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        reason = scrubbed(str(named))
        print(f"error: candidate {candidate.name} failed: {reason}", file=sys.stderr)
        return RankedCandidate(candidate.name, run.run_id, "FAILED", note=reason)
    return RankedCandidate(candidate.name, run.run_id, "FINISHED", metrics, note)


def measure(
    cfg: DictConfig, candidate: Candidate, scores: list[str], precision: str
) -> tuple[dict[str, float], str]:
    """The candidate's metrics (without the rank/ prefix) and a note on skipped scores."""
    backbone = load_candidate(cfg, candidate)
    data = TransferDataModule(cfg.dataset, backbone.preprocessing, cfg.loader, seed=cfg.seed)
    data.setup()
    start = time.perf_counter()
    features, labels = split_features(cfg, backbone, data, precision, splits=("train",))["train"]
    metrics = {"feature_dim": float(features.shape[1]), "extract_s": time.perf_counter() - start}
    bad = int((~torch.isfinite(features)).sum())
    if bad:
        raise UserError(
            f"{candidate.name}'s features on the train split hold {bad} NaN or inf values; "
            "check the dataset's images, or use trainer.precision=32-true"
        )
    labels = torch.unique(labels, return_inverse=True)[1]  # 0..C-1, as the scores take them
    missing = no_source_head(candidate.backbone)
    source_probs = None if missing else source_predictions(backbone, features)
    start = time.perf_counter()
    for name in scores:
        if name in NEEDS_SOURCE and source_probs is None:
            continue
        given = source_probs if name in NEEDS_SOURCE else None
        metrics[name] = float(SCORES[name](features, labels, given))
    metrics["score_s"] = time.perf_counter() - start
    skipped = [name for name in scores if name in NEEDS_SOURCE and source_probs is None]
    note = f"{', '.join(skipped)} skipped: {missing}" if skipped else ""
    return metrics, note


def load_candidate(cfg: DictConfig, candidate: Candidate) -> Backbone:
    """Seeded first (a random init is the same network each time: its features are read
    from the cache); weights files through models.weights_file, digests checked."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        backbone = instantiate(candidate.backbone)
    except Exception as error:
        reason = str(error).partition("\n")[0]
        raise UserError(f"{candidate.key} could not be loaded: {reason}") from None
    return backbone.to(device_for(cfg.trainer.accelerator))


def device_for(accelerator: str) -> torch.device:
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def no_source_head(node: DictConfig) -> str:
    """Why the candidate has no source classifier to predict with, or '' when it has one
    (weights that came with theirs: torchvision's, timm's, a source run's backbone.pt)."""
    if any(node.get(key) for key in WEIGHT_KEYS):
        return ""
    return "no source classifier (the candidate loads no weights: its classifier is untrained)"


def source_predictions(backbone: Backbone, features: Tensor) -> Tensor:
    """The source classifier's softmax over its own classes, from the frozen features."""
    head = backbone.source_head.float().cpu()
    with torch.inference_mode():
        return torch.softmax(head(features.float()), dim=1)


def print_ranking(
    rows: list[RankedCandidate], scores: list[str], tracker: Tracker, parent_id: str
) -> None:
    """Best first by the first score, every score a column; a failed candidate last."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"transferlab ranking (best first by {scores[0]}; higher is better)")
    for column in ("rank", "candidate", *scores, "feature_dim", "extract_s"):
        table.add_column(column)
    for place, row in enumerate(best_first(rows, scores[0]), start=1):
        values = [row.score(s) for s in scores]
        dim = row.metrics.get("feature_dim")
        table.add_row(
            str(place) if values[0] is not None else row.status.lower(),
            row.name,
            *("" if v is None else f"{v:.4f}" for v in values),
            "" if dim is None else str(int(dim)),
            f"{row.metrics['extract_s']:.2f}" if "extract_s" in row.metrics else "",
        )
    console = Console()
    console.print(table)
    console.print(f"Ranking run {parent_id}: transferlab-report {parent_id} --out DIR")
    console.print(f"MLflow ({scrubbed(tracker.uri)}): `make ui`, then {tracker.runs_page_url()}")
