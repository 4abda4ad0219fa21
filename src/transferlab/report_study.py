"""Which runs a report covers and what tells them apart: a sweep's children or an
experiment's main runs, reduced to rows (params, metrics, objective), ranked best first,
with the columns that vary and the groups of runs that differ only in their seed.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transferlab.errors import UserError, one_of
from transferlab.objective import (
    GROUPS,
    changes_result,
    lower_is_better,
    objective_value,
    overrides_as_params,
    selected_metric,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

MAIN_ROLES = ("finetune", "transfer", "finetune-cv", "transfer-cv")
FAILED_JOB_ROLE = "failed-job"  # see tracking.run_info.record_failed_job
# A param that follows from a group choice (`role` from `source`): never shown as swept.
# Neither are the keys that cannot change a result (objective.changes_result).
DERIVED_PARAMS = ("role",)
DEFAULT_METRIC = "val/acc"
FINAL_METRICS = ("test/acc", "test/loss", "scratch/test/acc", "target/test/acc")
FINAL_METRICS += ("adapt/a_distance_before", "adapt/a_distance_after")  # with a target domain
# what a method trains and stores: shown where the runs differ in it (a PEFT study)
COST_METRICS = ("model/params_trainable_pct", "model/adapter_size_mb")
RUN_ID = re.compile(r"[0-9a-f]{32}")
MAX_SETTING = 200  # characters of a summary metric's setting: MLflow keys take 250


@dataclass
class RunRow:
    """One selected run, reduced to what the report shows."""

    run_id: str
    name: str
    status: str  # an MLflow status, or PRUNED for a pruned Optuna trial
    params: dict[str, str]
    metrics: dict[str, float]
    objective: float | None


@dataclass
class Study:
    """The selected runs (best first) and what tells them apart."""

    title: str
    metric: str
    lower_is_better: bool
    rows: list[RunRow]
    columns: list[str]  # the group choices, then the params, that vary across the runs


def select_runs(client: MlflowClient, target: str) -> tuple[str, list[Run], str | None]:
    """A parent run's children, else an experiment's main runs: (title, runs, parent id)."""
    parent = _existing_run(client, target)
    if parent is not None:
        children = f"tags.`mlflow.parentRunId` = '{target}'"
        runs = _main_runs(_search(client, parent.info.experiment_id, children))
        if not runs:
            raise UserError(f"run {target} has no {one_of(MAIN_ROLES)} child runs")
        return f"{parent.info.run_name} (run {target})", runs, target
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(
            f"{target!r} is no experiment or run id in {client.tracking_uri}; "
            f"experiments: {one_of(names)}"
        )
    runs = _main_runs(_search(client, experiment.experiment_id))
    if not runs:
        raise UserError(f"experiment {target!r} has no {one_of(MAIN_ROLES)} runs")
    return f"experiment {target}", runs, None


def _existing_run(client: MlflowClient, target: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    if not RUN_ID.fullmatch(target):
        return None
    try:
        return client.get_run(target)
    except MlflowException:
        return None  # not a run: may still be an experiment's name


def _search(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every matching run: search_runs returns pages of at most 1000."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _main_runs(runs: list[Run]) -> list[Run]:
    """Finetune / transfer runs and k-fold parents, without the folds under those parents;
    also the record of a sweep job that failed before its run existed (role failed-job)."""
    roles = {r.info.run_id: r.data.tags.get("transferlab.role", "") for r in runs}
    folded = {run_id for run_id, role in roles.items() if role.endswith("-cv")}
    return [
        r
        for r in runs
        if roles[r.info.run_id] in (*MAIN_ROLES, FAILED_JOB_ROLE)
        and r.data.tags.get("mlflow.parentRunId") not in folded
    ]


def build_study(title: str, runs: list[Run], metric: str | None = None) -> Study:
    metric = metric or _optimize_metric(runs)
    lower = lower_is_better(metric)
    rows = [_row(run, metric) for run in runs]
    if all(row.objective is None for row in rows):
        logged = sorted({key for row in rows for key in row.metrics})
        hint = f"; use --metric with {one_of(logged)}" if logged else ""
        raise UserError(f"no run logged {metric!r}{hint}")
    rows.sort(key=lambda row: _rank(row.status, row.objective, lower))
    return Study(title, metric, lower, rows, varying_columns(rows))


def _optimize_metric(runs: list[Run]) -> str:
    """What the runs returned to their sweep: `optimize_metric` as their selection read it."""
    names = {_selected(r.data.params) for r in runs}
    if len(names) > 1:
        raise UserError(f"the runs optimize {one_of(sorted(names))}; pick one with --metric")
    return names.pop()


def _selected(params: dict[str, str]) -> str:
    adapted = params.get("target_domain._target_", "None") != "None"
    selection = params.get("adapt.selection", "source_val") if adapted else None
    return selected_metric(params.get("optimize_metric", DEFAULT_METRIC), selection)


def _row(run: Run, metric: str) -> RunRow:
    overrides = run.data.tags.get("transferlab.overrides", "").split()
    params = dict(run.data.params) or overrides_as_params(overrides)
    if "transferlab.source_run_id" in run.data.tags:
        # The pipeline points it at the source run's weights, downloaded anew for every run.
        params.pop("backbone.weights_path", None)
    pruned = run.data.tags.get("transferlab.pruned") == "true"
    metrics = dict(run.data.metrics)
    return RunRow(
        run.info.run_id,
        run.info.run_name,
        "PRUNED" if pruned else run.info.status,
        params,
        metrics,
        objective_value(metrics, metric),
    )


def _rank(status: str, value: float | None, lower: bool) -> tuple[bool, bool, float]:
    """Sort key: finished runs first, best objective first; runs without one last."""
    score = 0.0 if value is None else (value if lower else -value)
    return status != "FINISHED", value is None, score


def varying_columns(rows: list[RunRow]) -> list[str]:
    """The group choices that vary, then the params that were swept: those that vary and
    can change a result and are not fixed by their group's choice (`head._target_` by `head`)."""
    choices = [group for group in GROUPS if _varies(rows, group)]
    keys = {key for row in rows for key in row.params} - set(GROUPS)
    swept = [
        key
        for key in sorted(keys)
        if key not in DERIVED_PARAMS
        and changes_result(key)
        and _varies(rows, key)
        and not _fixed_by_choice(rows, key)
    ]
    return choices + swept


def _varies(rows: list[RunRow], key: str) -> bool:
    return len({row.params[key] for row in rows if key in row.params}) > 1


def _fixed_by_choice(rows: list[RunRow], key: str) -> bool:
    group = key.split(".")[0]
    if group not in GROUPS:
        return False
    values: dict[str | None, set[str]] = {}
    for row in rows:
        if key in row.params:
            values.setdefault(row.params.get(group), set()).add(row.params[key])
    return all(len(v) == 1 for v in values.values())


def metric_columns(study: Study) -> list[str]:
    """The final metrics shown beside the objective, where any run logged them; the cost
    metrics where runs differ in them."""
    logged = [m for m in FINAL_METRICS if any(m in row.metrics for row in study.rows)]
    varying = [
        m for m in COST_METRICS if len({r.metrics[m] for r in study.rows if m in r.metrics}) > 1
    ]
    return [m for m in (*logged, *varying) if m != study.metric]


def seed_groups(study: Study) -> list[tuple[tuple[str, ...], list[RunRow]]]:
    """Finished runs that differ only in `seed`, keyed by their other varying values;
    best mean objective first."""
    keys = [c for c in study.columns if c != "seed"]
    groups: dict[tuple[str, ...], list[RunRow]] = {}
    for row in study.rows:
        if row.status == "FINISHED":
            groups.setdefault(tuple(row.params.get(k, "") for k in keys), []).append(row)
    means = {key: mean_std([r.objective for r in rows])[0] for key, rows in groups.items()}
    order = sorted(groups, key=lambda key: _rank("FINISHED", means[key], study.lower_is_better))
    return [(key, groups[key]) for key in order]


def seed_summary(study: Study) -> dict[str, float]:
    """The mean ± std over seeds table as metrics of a sweep's parent run, so that its row
    in the MLflow UI shows the study's result: `test/acc mean tpc:2` and `test/acc std
    tpc:2` per setting (`test/acc mean` where only the seed varies; the objective under its
    metric's name). Keys are in the characters MLflow takes (no `=`); a std needs 2 seeds."""
    from transferlab.tracking.sweep import short_keys, short_value

    if "seed" not in study.columns:
        return {}
    keys = [c for c in study.columns if c != "seed"]
    short = short_keys(keys)
    summary = {}
    for values, rows in seed_groups(study):
        shown = " ".join(f"{short[k]}:{short_value(v)}" for k, v in zip(keys, values, strict=True))
        setting = re.sub(r"[^\w.\- :]", "_", shown)[:MAX_SETTING]
        columns = {study.metric: [row.objective for row in rows]}
        columns |= {m: [row.metrics.get(m) for row in rows] for m in metric_columns(study)}
        for metric, found in columns.items():
            mean, std = mean_std(found)
            if mean is not None:
                summary[f"{metric} mean {setting}".rstrip()] = mean
            if std is not None:
                summary[f"{metric} std {setting}".rstrip()] = std
    return summary


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values present (no std for fewer than 2)."""
    present = [v for v in values if v is not None]
    mean = statistics.mean(present) if present else None
    return mean, statistics.stdev(present) if len(present) > 1 else None
