"""`python -m transferlab.report NAME_OR_RUN_ID --out DIR` (console script
`transferlab-report`): a study's results on one page, read back from MLflow.

The argument is a sweep's parent run id (its child runs are reported), a ranking's parent
run id (transferlab-rank: its candidates best first per score) or an experiment name
(its finetune / transfer runs). DIR gets report.md (the study's figure, every run best
first, then mean ± std over seeds), the same as a self-contained report.html, and each
figure as PNG and SVG. The figure is the one the runs declare (`report.*`, see
report_figures), or as --kind / --x / --compare choose. A sweep's report is also logged to
its parent run under report/,
so it stays with the runs it describes, and its mean ± std over seeds as the parent's
metrics (`test/acc mean tpc:2`), so that the parent's row in the MLflow UI shows them.

mlflow and matplotlib are imported only to write a report: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.errors import UserError, exits_on_user_error
from transferlab.report_figures import KINDS, study_spec
from transferlab.report_html import render_html
from transferlab.report_markdown import render_markdown
from transferlab.report_plots import write_plots
from transferlab.report_ranking import ranking_run, write_ranking_report
from transferlab.report_study import build_study, seed_summary, select_runs
from transferlab.runtime import setup

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    setup()
    with exits_on_user_error():
        figure = {"kind": args.kind, "x": args.x, "compare": args.compare}
        print(write_report(args.target, args.out, args.tracking_uri, args.metric, figure))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab-report",
        description="Summarise a sweep (its parent run id) or an experiment (its name) "
        "from MLflow: report.md and report.html with the study's figure and tables of runs.",
    )
    parser.add_argument("target", metavar="NAME_OR_RUN_ID", help="experiment name or run id")
    parser.add_argument("--out", required=True, help="folder for report.md and the plots")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--metric", help="objective to rank by (default: the runs' optimize_metric)"
    )
    parser.add_argument("--kind", choices=KINDS, help="the figure (default: report.kind)")
    parser.add_argument("--x", help="a curve's x axis, a swept number (default: report.x)")
    parser.add_argument(
        "--compare",
        help="the baseline: scratch, or its setting as KEY=VALUE[,KEY=VALUE] "
        "(default: report.compare)",
    )
    return parser


def write_report(
    target: str,
    out: str | Path,
    tracking_uri: str | None = None,
    metric: str | None = None,
    figure: dict[str, str | None] | None = None,
    strict: bool = True,
) -> Path:
    """Writes DIR/report.md, report.html and the figures; returns the path of report.md.
    `figure`: report.* values that replace the runs' own (kind, x, compare); `strict`:
    False writes the rest of the report when the study's figure cannot be drawn."""
    from mlflow.tracking import MlflowClient

    from transferlab.tracking.store import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    _check_store(uri)
    client = MlflowClient(uri)
    ranking = ranking_run(client, target)
    if ranking is not None:  # a transferlab-rank parent run: its table of candidates
        return write_ranking_report(client, ranking, Path(out))
    title, runs, parent_id = select_runs(client, target)
    study = build_study(title, runs, metric)
    spec = study_spec(study).overridden(**figure) if figure else None  # None: the runs'
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    figures = write_plots(client, study, folder, spec, strict)
    report = folder / "report.md"
    report.write_text(render_markdown(study, figures))
    page = folder / "report.html"
    page.write_text(render_html(study, figures))
    written = [report, page, *(path for drawn in figures for path in drawn.files)]
    if parent_id is not None:  # a sweep: its parent shows the report, and its summary
        for path in written:
            client.log_artifact(parent_id, str(path), "report")
        _log_summary(client, parent_id, seed_summary(study))
    return report


def _log_summary(client: MlflowClient, run_id: str, summary: dict[str, float]) -> None:
    from mlflow.entities import Metric

    from transferlab.tracking.metric_writer import MetricWriter

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in summary.items()]
    for start in range(0, len(metrics), MetricWriter.MAX_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MetricWriter.MAX_BATCH])


def _check_store(uri: str) -> None:
    """A report only reads: a missing sqlite file is a wrong folder or URI, not a new store."""
    path = uri.removeprefix("sqlite:///")
    if path != uri and not Path(path).is_file():
        raise UserError(f"no MLflow store at {uri}; pass --tracking-uri or set MLFLOW_TRACKING_URI")


if __name__ == "__main__":
    main()
