"""report.md: the runs (best first) and, where seeds vary, mean ± std over them."""

from __future__ import annotations

from collections import Counter

from transferlab.report_study import RunRow, Study, mean_std, metric_columns, seed_groups

MAIN_STATUSES = ("FINISHED", "FAILED", "PRUNED")  # counted first, in this order


def render_markdown(study: Study) -> str:
    lines = [
        f"# Report: {study.title}",
        "",
        _counts(study.rows),
        "",
        f"Objective: `{study.metric}` (its checkpointed best where logged; "
        f"{'lower' if study.lower_is_better else 'higher'} is better).",
        "",
        "## Runs (best first)",
        "",
        *_runs_table(study),
    ]
    if "seed" in study.columns:
        lines += ["", "## Mean ± std over seeds (best first)", "", *_seeds_table(study)]
    return "\n".join(lines) + "\n"


def _counts(rows: list[RunRow]) -> str:
    counts = Counter(row.status for row in rows)
    shown = [*MAIN_STATUSES, *sorted(set(counts) - set(MAIN_STATUSES))]
    return f"{len(rows)} runs: " + ", ".join(f"{counts[s]} {s.lower()}" for s in shown)


def _runs_table(study: Study) -> list[str]:
    metrics = metric_columns(study)
    header = ["run", "run id", "status", *study.columns, f"{study.metric} (objective)", *metrics]
    body = [
        [
            row.name,
            row.run_id,
            row.status,
            *(row.params.get(c, "") for c in study.columns),
            format_number(row.objective),
            *(format_number(row.metrics.get(m)) for m in metrics),
        ]
        for row in study.rows
    ]
    return markdown_table(header, body)


def _seeds_table(study: Study) -> list[str]:
    keys = [c for c in study.columns if c != "seed"]
    metrics = metric_columns(study)
    header = [*keys, "n", f"{study.metric} (objective)", *metrics]
    body = [
        [
            *values,
            str(len(rows)),
            format_mean_std([r.objective for r in rows]),
            *(format_mean_std([r.metrics.get(m) for r in rows]) for m in metrics),
        ]
        for values, rows in seed_groups(study)
    ]
    return markdown_table(header, body)


def format_number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def format_mean_std(values: list[float | None]) -> str:
    """Mean ± sample standard deviation (the mean alone for a single value)."""
    mean, std = mean_std(values)
    if std is None:
        return format_number(mean)
    return f"{mean:.4f} ± {std:.4f}"


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(cells) for cells in body)]
