"""Imports what a run's tracking server did not take into that same run, once the server
answers again: the `mlflow-unsent-*.jsonl` files a run writes when the server did not come
back before it ended (see transferlab.tracking.mlflow_run). Metrics, params and tags are
logged, artifacts uploaded from where the file says they are, and the run ended with the
status it ended with; FAILED, naming them in the tag transferlab.not_imported, where some
could not be imported. An imported file is renamed to `*.jsonl.imported`, so that
importing its folder again skips it.

    python -m transferlab.tracking.unsent <file-or-folder> [--tracking-uri URI]

A folder is searched for unsent files at any depth (an output folder, ./mlflow-unsent).
The tracking URI defaults to the one the run used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from transferlab.errors import exits_on_user_error
from transferlab.tracking.metric_writer import MetricWriter
from transferlab.tracking.mlflow_run import MAX_PARAM_VALUE, UNSENT_GLOB, send_record
from transferlab.tracking.store import RetryingClient, ServerUnreachable, connect

NOT_IMPORTED_TAG = "transferlab.not_imported"  # next to the run's own error, if any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transferlab.tracking.unsent",
        description="Import what a run's tracking server did not take into the same run.",
    )
    parser.add_argument("path", type=Path, help="an unsent file, or a folder holding them")
    parser.add_argument("--tracking-uri", help="the store to import into (default: the run's)")
    args = parser.parse_args(argv)
    files = unsent_files(args.path)
    if not files:
        print(f"{args.path}: no {UNSENT_GLOB} file to import", file=sys.stderr)
        return 1
    with exits_on_user_error():
        return max(import_file(path, args.tracking_uri) for path in files)


def unsent_files(path: Path) -> list[Path]:
    return sorted(path.rglob(UNSENT_GLOB)) if path.is_dir() else [path] if path.exists() else []


def import_file(path: Path, uri: str | None) -> int:
    """Imports one file and renames it; 1 where something in it could not be imported."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header, records = lines[0], [next(iter(line.items())) for line in lines[1:]]
    uri = uri or header["tracking_uri"]
    problems = replay(connect(uri), header["run"], records)
    imported = path.with_name(path.name + ".imported")
    path.rename(imported)
    print(f"{path}: {len(records)} records imported into run {header['run']} at {uri}")
    for problem in problems:
        print(f"  not imported: {problem}", file=sys.stderr)
    return 1 if problems else 0


def replay(client: RetryingClient, run_id: str, records: list[tuple[str, Any]]) -> list[str]:
    """Sends the records in their order, the metrics before the end; returns what could not
    be sent: metrics the store refused, artifacts whose file is gone."""
    writer = MetricWriter(client, run_id)
    writer.put([Metric(**body) for kind, body in records if kind == "metric"])
    problems = writer.close()
    if writer.unsent:
        raise ServerUnreachable(
            f"the tracking server stopped answering during the import ({len(writer.unsent)} "
            "metrics left): run it again, metrics already imported are not doubled"
        )
    for kind, body in records:
        if kind == "artifact" and not Path(body["path"]).is_file():
            problems.append(f"artifact {body['path']}: the file is gone")
        elif kind == "end" and problems:
            send_record(
                client, run_id, "tags", {NOT_IMPORTED_TAG: "; ".join(problems)[:MAX_PARAM_VALUE]}
            )
            send_record(client, run_id, "end", "FAILED")
        elif kind != "metric":
            send_record(client, run_id, kind, body)
    return problems


if __name__ == "__main__":
    sys.exit(main())
