"""report.md: the study's figures, the runs (best first) and, where seeds vary, mean ± std
over them. The tables are data (header, rows) that report_html renders too."""

from __future__ import annotations

from collections import Counter

from transferlab.report_plots import DrawnFigure
from transferlab.report_study import RunRow, Study, mean_std, metric_columns, seed_groups

MAIN_STATUSES = ("FINISHED", "FAILED", "PRUNED")  # counted first, in this order


def render_markdown(study: Study, figures: list[DrawnFigure]) -> str:
    lines = [f"# Report: {study.title}", "", counts(study.rows), "", objective_line(study)]
    for figure in figures:
        png = figure.files[0].name
        lines += ["", f"![{figure.data.title}]({png})", "", f"*{figure.data.caption}*"]
    for heading, (header, body) in tables(study).items():
        lines += ["", f"## {heading}", "", *markdown_table(header, body)]
    return "\n".join(lines) + "\n"


def objective_line(study: Study) -> str:
    direction = "lower" if study.lower_is_better else "higher"
    return (
        f"Objective: `{study.metric}` (its checkpointed best where logged; {direction} is better)."
    )


def tables(study: Study) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Heading -> (header, rows): every run, then mean ± std over seeds where seeds vary."""
    found = {"Runs (best first)": runs_table(study)}
    if "seed" in study.columns:
        found["Mean ± std over seeds (best first)"] = seeds_table(study)
    return found


def counts(rows: list[RunRow]) -> str:
    by_status = Counter(row.status for row in rows)
    shown = [*MAIN_STATUSES, *sorted(set(by_status) - set(MAIN_STATUSES))]
    return f"{len(rows)} runs: " + ", ".join(f"{by_status[s]} {s.lower()}" for s in shown)


def runs_table(study: Study) -> tuple[list[str], list[list[str]]]:
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
    return header, body


def seeds_table(study: Study) -> tuple[list[str], list[list[str]]]:
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
    return header, body


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
