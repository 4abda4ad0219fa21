"""Imports what a run's tracking server did not take into that same run, once the server
answers again: the `mlflow-unsent-*.jsonl` files a run writes when the server did not come
back before it ended (see transferlab.tracking.mlflow_run). Metrics, params, tags and
dataset inputs are logged, artifacts uploaded from where the file says they are, and the
run ended with the status it ended with; FAILED, naming them in the tag
transferlab.not_imported, where some could not be imported. An imported file is renamed to
`*.jsonl.imported`, so that importing its folder again skips it.

    python -m transferlab.tracking.unsent <file-or-folder> [--tracking-uri URI] [--force]

An unsent file is data that anyone who can write to a folder could plant, so:
- it goes only to the store the user names: --tracking-uri, else the configured one
  ($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db); a file whose header names another
  store is refused unless --force is given;
- only files inside the unsent file's own folder (the stage folder it was written to,
  symlinks resolved) are uploaded: a file naming any other is refused whole;
- every file is read and checked before anything is sent (a malformed line is one error
  naming the file and line), and what will be sent is listed first.
A folder is searched as deep as the writer writes: the folder itself, <role>/ and
<role>/<fold>/ of an output folder, <run id>/ of ./mlflow-unsent.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from transferlab.errors import UserError, exits_on_user_error, one_of
from transferlab.scrub import without_url_credentials
from transferlab.tracking.metric_writer import MetricWriter
from transferlab.tracking.mlflow_run import (
    DATASET_FIELDS,
    MAX_PARAM_VALUE,
    UNSENT_GLOB,
    send_record,
)
from transferlab.tracking.store import (
    DEFAULT_TRACKING_URI,
    RetryingClient,
    ServerUnreachable,
    connect,
    tracking_uri,
)

NOT_IMPORTED_TAG = "transferlab.not_imported"  # next to the run's own error, if any
SEARCHED = (UNSENT_GLOB, f"*/{UNSENT_GLOB}", f"*/*/{UNSENT_GLOB}")  # as deep as written
STATUSES = ("FINISHED", "FAILED", "KILLED")
METRIC_FIELDS = {"key", "value", "timestamp", "step"}


@dataclass(frozen=True)
class UnsentFile:
    """One checked unsent file: the run it belongs to and its records, in their order."""

    path: Path
    run_id: str
    records: list[tuple[str, Any]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transferlab.tracking.unsent",
        description="Import what a run's tracking server did not take into the same run.",
    )
    parser.add_argument("path", type=Path, help="an unsent file, or a folder holding them")
    parser.add_argument(
        "--tracking-uri",
        help=f"the store to import into (else $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument(
        "--force", action="store_true", help="import files whose header names another store"
    )
    args = parser.parse_args(argv)
    files = unsent_files(args.path)
    if not files:
        print(f"{args.path}: no {UNSENT_GLOB} file to import", file=sys.stderr)
        return 1
    uri = tracking_uri(args.tracking_uri)
    with exits_on_user_error():
        checked = [read_unsent(path, uri, args.force) for path in files]  # all, before any
        for unsent in checked:
            print(describe(unsent, uri))
        client = connect(uri)
        return max(import_file(client, unsent) for unsent in checked)


def unsent_files(path: Path) -> list[Path]:
    """The unsent file named, or those of a folder down to where the writer puts them; a
    file found through a symlink out of the folder is not one of its own."""
    if not path.is_dir():
        return [path] if path.is_file() else []
    folder = path.resolve()
    found = {file for pattern in SEARCHED for file in path.glob(pattern) if file.is_file()}
    return sorted(file for file in found if file.resolve().is_relative_to(folder))


def read_unsent(path: Path, uri: str, force: bool) -> UnsentFile:
    """Reads and checks one file whole; nothing in it is sent before all of it is checked."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({err}); nothing imported") from err
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise UserError(f"{path}: empty; an unsent file starts with its header line")
    header = _parsed(path, *numbered[0])
    if not _is_header(header):
        raise UserError(
            f"{path} line {numbered[0][0]}: not a header; expected "
            '{"run": "<run id>", "tracking_uri": "<uri>"}'
        )
    if header["tracking_uri"] != without_url_credentials(uri) and not force:
        raise UserError(
            f"{path}: its header names the tracking store {header['tracking_uri']!r}, not "
            f"{uri!r} (--tracking-uri, else $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}); "
            "nothing imported. Name the store to import into with --tracking-uri; --force "
            "imports a file into a store its header does not name"
        )
    folder = path.resolve().parent
    records = []
    for number, line in numbered[1:]:
        kind, body = _record(path, number, _parsed(path, number, line))
        if kind == "artifact":
            _check_artifact(path, number, body, folder)
        records.append((kind, body))
    return UnsentFile(path, header["run"], records)


def describe(unsent: UnsentFile, uri: str) -> str:
    """What importing the file will send, listed before anything is: every artifact file."""
    records = unsent.records
    what = [f"{kind}: {_count(records, kind)}" for kind in ("metrics", "params", "tags")]
    if datasets := _count(records, "inputs"):  # most files have none: listed where they do
        what.append(f"datasets: {datasets}")
    what += [f"final status {body}" for kind, body in records if kind == "end"]
    lines = [f"{unsent.path}: into run {unsent.run_id} at {uri}: " + ", ".join(what)]
    lines += [
        f"  artifact {body['path']} -> {body['folder'] or '.'}"
        for kind, body in records
        if kind == "artifact"
    ]
    return "\n".join(lines)


def _count(records: list[tuple[str, Any]], kinds: str) -> int:
    """Metrics are a record each; params, tags and dataset inputs come several to a record."""
    if kinds == "metrics":
        return sum(kind == "metric" for kind, _ in records)
    return sum(len(body) for kind, body in records if kind == kinds)


def import_file(client: RetryingClient, unsent: UnsentFile) -> int:
    """Imports one checked file and renames it; 1 where something in it was not imported."""
    try:
        client.get_run(unsent.run_id)
    except MlflowException as err:
        raise UserError(
            f"{unsent.path}: run {unsent.run_id} is not in the tracking store "
            f"{client.tracking_uri}; nothing imported"
        ) from err
    problems = replay(client, unsent.run_id, unsent.records)
    path = unsent.path
    path.rename(path.with_name(path.name + ".imported"))
    print(f"{path}: {len(unsent.records)} records imported into run {unsent.run_id}")
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


def _parsed(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {number}: not JSON ({err.msg}); nothing imported") from err


def _is_header(line: Any) -> bool:
    return (
        isinstance(line, dict)
        and set(line) == {"run", "tracking_uri"}
        and all(isinstance(value, str) and value for value in line.values())
    )


def _record(path: Path, number: int, line: Any) -> tuple[str, Any]:
    """`{kind: body}` as mlflow_run.TrackedRun keeps it, or one error naming the line."""
    kind = next(iter(line)) if isinstance(line, dict) and len(line) == 1 else None
    if kind not in RECORDS:
        raise UserError(
            f"{path} line {number}: not a record; expected one object "
            f"{{kind: body}} with kind {one_of(RECORDS)}; nothing imported"
        )
    body = line[kind]
    if not RECORDS[kind](body):
        raise UserError(f"{path} line {number}: a malformed {kind} record; nothing imported")
    return kind, body


def _check_artifact(path: Path, number: int, body: dict[str, Any], folder: Path) -> None:
    """Only files of the unsent file's own folder are uploaded, to a folder of the run."""
    where = f"{path} line {number}: artifact {body['path']}"
    resolved = Path(body["path"]).resolve()
    if not resolved.is_relative_to(folder):
        raise UserError(
            f"{where} is outside the unsent file's folder {folder} (resolved: {resolved}); "
            "only files there are uploaded; nothing imported"
        )
    target = body["folder"]
    if target is not None and (target.startswith("/") or ".." in PurePosixPath(target).parts):
        raise UserError(
            f"{where}: folder {target!r} leaves the run's artifacts; use a relative folder "
            "without '..'; nothing imported"
        )


def _is_metric(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == METRIC_FIELDS
        and isinstance(body["key"], str)
        and _is_number(body["value"])
        and all(_is_whole(body[field]) for field in ("timestamp", "step"))
    )


def _is_strings(body: Any) -> bool:
    return isinstance(body, dict) and all(
        isinstance(key, str) and isinstance(value, str) for key, value in body.items()
    )


def _is_artifact(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"path", "folder"}
        and isinstance(body["path"], str)
        and isinstance(body["folder"], str | None)
    )


def _is_inputs(body: Any) -> bool:
    return isinstance(body, list) and all(
        isinstance(dataset, dict)
        and set(dataset) == set(DATASET_FIELDS)
        and all(isinstance(value, str) for value in dataset.values())
        for dataset in body
    )


def _is_status(body: Any) -> bool:
    return body in STATUSES


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


RECORDS = {
    "metric": _is_metric,
    "params": _is_strings,
    "tags": _is_strings,
    "artifact": _is_artifact,
    "inputs": _is_inputs,
    "end": _is_status,
}


if __name__ == "__main__":
    sys.exit(main())
