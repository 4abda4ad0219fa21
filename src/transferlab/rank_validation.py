"""A ranking checked against fine-tuning (`rank.validate=true`, issue 13): every candidate
fine-tuned with the run's own method (transferlab-train's config with `rank.finetune`
overrides, the ranking's dataset, the candidate as backbone), once per seed of
`rank.seeds`, each a child run of the ranking; then, per score, the weighted Kendall tau
and Pearson r between the score and the candidate's mean test/acc on the parent run, and
a scatter plot (error bars: the standard deviation over seeds).

The fine-tune configs are composed and checked before any run (`finetune_configs`).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.objective import GROUPS
from transferlab.rank_config import Candidate, composed
from transferlab.report_plots import pyplot, save_figure
from transferlab.report_ranking import (
    AGREEMENT,
    FINETUNE_ACC,
    FINETUNE_STD,
    METRIC,
    RankedCandidate,
)
from transferlab.scrub import scrubbed
from transferlab.tracking.mlflow_run import TrackedRun

CANDIDATE_TAG = "transferlab.rank_candidate"  # on a fine-tune run: the candidate it tunes
SHARED_KEYS = ("dataset", "tracking", "experiment_name", "feature_cache")  # the ranking's
FOLDER = "validation"  # the plots: the parent's artifacts under it
TIED = 1e-9  # a score whose spread over the candidates is below this (relative) ranks nothing


def finetune_configs(
    cfg: DictConfig, candidates: list[Candidate]
) -> list[tuple[DictConfig, dict[str, str]]]:
    """Each candidate's fine-tune config (seed still to set) and its group choices, checked
    as transferlab-train checks its own; [] unless `rank.validate`."""
    if not cfg.rank.validate:
        return []
    _check_seeds(cfg.rank.seeds)
    overrides = _overrides(cfg.rank.finetune)
    try:
        train = composed(overrides, "train", with_hydra=True)
    except HydraException as error:
        reason = str(error).partition("\n")[0]
        raise UserError(f"rank.finetune={overrides} cannot be composed: {reason}") from None
    choices = {g: str(c) for g, c in train.hydra.runtime.choices.items() if g in GROUPS}
    with open_dict(train):
        del train["hydra"]
    return [_finetune_config(cfg, train, candidate, choices) for candidate in candidates]


def _check_seeds(seeds: Any) -> None:
    values = OmegaConf.to_container(seeds) if OmegaConf.is_list(seeds) else None
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) for s in values):
        raise UserError(f"rank.seeds={seeds} must be a non-empty list of integers, e.g. [1,2,3]")


def _overrides(finetune: Any) -> list[str]:
    values = OmegaConf.to_container(finetune) if OmegaConf.is_list(finetune) else None
    if values is None or not all(isinstance(v, str) for v in values):
        raise UserError(
            f"rank.finetune={finetune} must be a list of transferlab-train overrides, "
            "each quoted: \"rank.finetune=['freeze=linear_probe','trainer.max_epochs=10']\""
        )
    return values


def _finetune_config(
    cfg: DictConfig, train: DictConfig, candidate: Candidate, choices: dict[str, str]
) -> tuple[DictConfig, dict[str, str]]:
    tuned = train.copy()
    with open_dict(tuned):
        for key in SHARED_KEYS:
            tuned[key] = cfg[key]
        tuned.backbone = candidate.backbone
        tuned.seed = cfg.rank.seeds[0]
        tuned.output_dir = str(Path(cfg.output_dir) / FOLDER / candidate.name)
    try:
        validate(tuned)
    except UserError as error:
        raise UserError(f"rank.finetune of {candidate.key} ({candidate.name}): {error}") from None
    return tuned, {**choices, "backbone": candidate.name}


def validate_ranking_by_finetuning(
    cfg: DictConfig,
    finetunes: list[tuple[DictConfig, dict[str, str]]],
    rows: list[RankedCandidate],
    scores: list[str],
    parent: TrackedRun,
) -> dict[str, dict[str, float]]:
    """Fine-tunes each scored candidate per seed, records its mean and std test/acc on its
    ranking run (and in `rows`), then tau and r per score on `parent`; returns them."""
    fit_s = 0.0
    for row, (tuned, choices) in zip(rows, finetunes, strict=True):
        if row.status == "FINISHED":
            accuracies, seconds = _finetuned(tuned, choices, list(cfg.rank.seeds), row, parent)
            _record_accuracies(row, accuracies, parent)
            fit_s += seconds
    agreement = {s: _agreement(rows, s) for s in scores}
    agreement = {s: a for s, a in agreement.items() if a}
    parent.log_metrics(
        {f"{METRIC}{s}/{k}": v for s, values in agreement.items() for k, v in values.items()}
    )
    parent.log_metrics({f"{METRIC}finetune_fit_s": fit_s})
    folder = Path(cfg.output_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for score in agreement:
        parent.log_artifact(plot_score_vs_accuracy(rows, score, folder), FOLDER)
    return agreement


def _record_accuracies(row: RankedCandidate, accuracies: list[float], parent: TrackedRun) -> None:
    """Mean and sample std over the seeds that finished, on the candidate's ranking run."""
    if not accuracies:
        return
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    row.metrics.update({FINETUNE_ACC: statistics.mean(accuracies), FINETUNE_STD: spread})
    for key in (FINETUNE_ACC, FINETUNE_STD):
        parent.client.log_metric(row.run_id, f"{METRIC}{key}", row.metrics[key])


def _finetuned(
    tuned: DictConfig,
    choices: dict[str, str],
    seeds: list[int],
    row: RankedCandidate,
    parent: TrackedRun,
) -> tuple[list[float], float]:
    """test/acc per seed that finished, and the seconds their fits took. A fine-tune that
    fails is a FAILED child run, named on stderr; the other seeds still run."""
    from transferlab.pipeline import run_stages

    tags = {"mlflow.parentRunId": parent.run_id, CANDIDATE_TAG: row.name}
    accuracies, seconds = [], 0.0
    for seed in seeds:
        seeded = tuned.copy()
        seeded.seed = seed
        seeded.output_dir = f"{tuned.output_dir}/seed{seed}"
        try:
            result = run_stages(seeded, choices, tags)
        except Exception as error:
            reason = scrubbed(str(error)).partition("\n")[0]
            print(f"error: fine-tuning {row.name} (seed {seed}) failed: {reason}", file=sys.stderr)
            continue
        accuracies.append(result.metrics["test/acc"])
        seconds += parent.client.get_run(result.run_id).data.metrics["time/fit_s"]
    return accuracies, seconds


def _agreement(rows: list[RankedCandidate], score: str) -> dict[str, float]:
    """Weighted Kendall tau and Pearson r between the score and the mean fine-tuned
    test/acc, over the candidates that have both; {} with fewer than 2. A score equal for
    every candidate up to rounding (H-score is C-1 wherever N <= D) ranks nothing: NaN,
    not a correlation of its rounding noise."""
    from scipy.stats import pearsonr, weightedtau

    points = [(row.score(score), row.metrics.get(FINETUNE_ACC)) for row in rows]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    if len(points) < 2:
        return {}
    xs, ys = zip(*points, strict=True)
    if max(xs) - min(xs) <= TIED * max(1.0, *map(abs, xs)):
        return dict.fromkeys(AGREEMENT, math.nan)
    return {
        "kendall_tau": float(weightedtau(xs, ys).statistic),
        "pearson_r": float(pearsonr(xs, ys).statistic),
    }


def plot_score_vs_accuracy(rows: list[RankedCandidate], score: str, folder: Path) -> Path:
    """Each candidate at (score, mean fine-tuned test/acc), the std over seeds as error bar."""
    shown = [r for r in rows if r.score(score) is not None and FINETUNE_ACC in r.metrics]
    fig, ax = pyplot().subplots(figsize=(5, 4))
    for row in shown:
        x, y = row.score(score), row.metrics[FINETUNE_ACC]
        ax.errorbar(x, y, yerr=row.metrics[FINETUNE_STD], fmt="o", capsize=3)
        ax.annotate(row.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{score} (higher: expected to transfer better)")
    ax.set_ylabel("fine-tuned test/acc (mean ± std over seeds)")
    ax.set_title(f"{score} vs fine-tuning")
    return save_figure(fig, folder / f"{score}_vs_finetuned_acc.png")
