"""A ranking's table (transferlab-rank): its candidates best first per score, with their
feature dimension and extraction time, and those that failed with their reason. Written by
the ranking (its parent run's `ranking.md`) and by `transferlab-report <ranking run id>`,
which reads it back from the parent's child runs. Light: no torch, MLflow only to read.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.report_markdown import format_number, markdown_table
from transferlab.report_study import RUN_ID

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

ROLE = "ranking"  # the parent run's transferlab.role
CANDIDATE_ROLE = "rank-candidate"  # each child's
SCORES_TAG = "transferlab.rank_scores"  # on the parent: the scores asked for, in order
SKIPPED_TAG = "transferlab.skipped_scores"  # on a child: which scores it has not, and why
METRIC = "rank/"  # rank/<score>, rank/feature_dim, rank/extract_s, rank/score_s
FINETUNE_ACC = "finetune_acc"  # rank.validate: a candidate's mean fine-tuned test/acc
FINETUNE_STD = "finetune_acc_std"  # and its standard deviation over the seeds
AGREEMENT = ("kendall_tau", "pearson_r")  # on the parent: rank/<score>/<one of these>


@dataclass
class RankedCandidate:
    name: str
    run_id: str
    status: str  # FINISHED, or FAILED with the reason as `note`
    metrics: dict[str, float] = field(default_factory=dict)  # without the rank/ prefix
    note: str = ""  # the scores skipped and why, or the failure

    def score(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else value


def best_first(rows: list[RankedCandidate], score: str) -> list[RankedCandidate]:
    """Highest score first (every score: higher is expected to transfer better); the
    candidates without it (failed, skipped) last, in their given order."""
    scored = [row for row in rows if row.score(score) is not None]
    scored.sort(key=lambda row: -row.score(score))
    return scored + [row for row in rows if row.score(score) is None]


def render_ranking(
    title: str,
    rows: list[RankedCandidate],
    scores: list[str],
    agreement: dict[str, dict[str, float]] | None = None,
) -> str:
    """`agreement` (rank.validate): per score, its tau and r against fine-tuning."""
    counts = Counter(row.status for row in rows)
    lines = [
        f"# Ranking: {title}",
        "",
        f"{len(rows)} candidates: {counts['FINISHED']} scored, {counts['FAILED']} failed. "
        "Every score: higher is expected to transfer better.",
    ]
    for score in scores:
        lines += ["", f"## Ranked by {score} (best first)", "", *_score_table(rows, score)]
    if agreement:
        body = [[s, *(format_number(agreement[s].get(k)) for k in AGREEMENT)] for s in agreement]
        lines += [
            "",
            "## Validation: each score against the mean fine-tuned test/acc",
            "",
            *markdown_table(["score", "weighted Kendall tau", "Pearson r"], body),
        ]
    troubled = [row for row in rows if row.note]
    if troubled:
        body = [[row.name, row.status, row.note] for row in troubled]
        lines += ["", "## Notes", "", *markdown_table(["candidate", "status", "note"], body)]
    return "\n".join(lines) + "\n"


def _score_table(rows: list[RankedCandidate], score: str) -> list[str]:
    header = ["rank", "candidate", score, "feature_dim", "extract_s", "score_s", "run id"]
    tuned = any(FINETUNE_ACC in row.metrics for row in rows)
    if tuned:
        header.insert(3, "fine-tuned test/acc")
    body = []
    for place, row in enumerate(best_first(rows, score), start=1):
        value = row.score(score)
        dim = row.metrics.get("feature_dim")
        body.append(
            [
                str(place) if value is not None else "",
                row.name,
                format_number(value) if value is not None else row.status.lower(),
                "" if dim is None else str(int(dim)),
                format_number(row.metrics.get("extract_s")),
                format_number(row.metrics.get("score_s")),
                row.run_id,
            ]
        )
        if tuned:
            body[-1].insert(3, _finetuned(row))
    return markdown_table(header, body)


def _finetuned(row: RankedCandidate) -> str:
    if FINETUNE_ACC not in row.metrics:
        return ""
    return f"{row.metrics[FINETUNE_ACC]:.4f} ± {row.metrics[FINETUNE_STD]:.4f}"


def recorded_agreement(parent: Run, scores: list[str]) -> dict[str, dict[str, float]]:
    """rank/<score>/kendall_tau and pearson_r as the parent run recorded them."""
    metrics = parent.data.metrics
    found = {s: {k: metrics.get(f"{METRIC}{s}/{k}") for k in AGREEMENT} for s in scores}
    return {s: values for s, values in found.items() if values["kendall_tau"] is not None}


def ranking_run(client: MlflowClient, target: str) -> Run | None:
    """The run `target` names when it is a ranking's parent run, else None."""
    from mlflow.exceptions import MlflowException

    if not RUN_ID.fullmatch(target):
        return None
    try:
        run = client.get_run(target)
    except MlflowException:
        return None
    return run if run.data.tags.get("transferlab.role") == ROLE else None


def recorded_rows(client: MlflowClient, parent: Run) -> list[RankedCandidate]:
    """The parent's candidates as their child runs recorded them, in the order given."""
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return [
        RankedCandidate(
            run.info.run_name,
            run.info.run_id,
            run.info.status,
            {
                k.removeprefix(METRIC): v
                for k, v in run.data.metrics.items()
                if k.startswith(METRIC)
            },
            run.data.tags.get(SKIPPED_TAG) or run.data.tags.get("error", ""),
        )
        for run in children
        if run.data.tags.get("transferlab.role") == CANDIDATE_ROLE
    ]


def write_ranking_report(client: MlflowClient, parent: Run, folder: Path) -> Path:
    """folder/report.md, also logged to the parent run under report/."""
    scores = [s for s in parent.data.tags.get(SCORES_TAG, "").split(",") if s]
    title = f"{parent.info.run_name} (run {parent.info.run_id})"
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.md"
    agreement = recorded_agreement(parent, scores)
    report.write_text(render_ranking(title, recorded_rows(client, parent), scores, agreement))
    client.log_artifact(parent.info.run_id, str(report), "report")
    return report
