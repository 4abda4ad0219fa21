"""Runs left RUNNING by a process killed outright (SIGKILL, the OOM killer, power loss):
every run names its process (host, pid, start time), and every start against a store fails
the runs of this host whose process is gone, offering their last checkpoint for resume.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from transferlab.tracking.recorded import CHECKPOINT_TAG

HOST_TAG = "transferlab.host"
PID_TAG = "transferlab.pid"
PID_START_TAG = "transferlab.pid_start"  # the process' start time: tells a reused pid
PID_NAMESPACE_TAG = "transferlab.pid_namespace"  # containers may share a host name, not pids


def process_tags() -> dict[str, str]:
    """Names the process that creates a run, so that a later start on this host can tell
    that it is gone and fail the run it left RUNNING (fail_orphaned_runs)."""
    pid = os.getpid()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid)}
    found = {PID_START_TAG: _start_time(pid), PID_NAMESPACE_TAG: _pid_namespace()}
    return tags | {key: value for key, value in found.items() if value}


def fail_orphaned_runs(client: MlflowClient) -> None:
    """Fails the runs of this host whose process is gone: killed outright (SIGKILL, the OOM
    killer, power loss) it could not end them, and nothing else would. Two queries, as this
    runs before every sweep trial; runs of other hosts cannot be checked and are left."""
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    if not experiments:
        return
    this = process_tags()
    runs = client.search_runs(
        [experiment.experiment_id for experiment in experiments],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{this[HOST_TAG]}'",
        max_results=1000,
    )
    for run in runs:
        tags = run.data.tags
        if tags.get(PID_NAMESPACE_TAG) == this.get(PID_NAMESPACE_TAG) and _process_gone(tags):
            _fail_orphan(client, run)


def _process_gone(tags: Mapping[str, str]) -> bool:
    """Whether the run's process has exited, or its pid now belongs to a later process."""
    pid = tags.get(PID_TAG, "")
    if not pid.isdigit() or int(pid) <= 0 or os.name != "posix":
        return False  # on Windows os.kill(pid, 0) would end the process: cannot check
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process, alive
    started = _start_time(int(pid))
    return PID_START_TAG in tags and started is not None and started != tags[PID_START_TAG]


def _fail_orphan(client: MlflowClient, run) -> None:
    run_id, tags = run.info.run_id, run.data.tags
    gone = f"its process {tags[PID_TAG]} on {tags[HOST_TAG]} is gone and never ended it"
    checkpoint = tags.get(CHECKPOINT_TAG)
    if checkpoint and Path(checkpoint).is_file():
        gone += f"; last checkpoint {checkpoint}: resume it with: transferlab-train resume={run_id}"
    client.set_tag(run_id, "error", f"left RUNNING (killed, or the machine went down): {gone}")
    client.set_terminated(run_id, "FAILED")
    print(f"run {run_id} ({run.info.run_name}) marked FAILED: {gone}", file=sys.stderr)


def _start_time(pid: int) -> str | None:
    """The process' start time in clock ticks after boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    """This process' pid namespace (Linux): pids of another one cannot be checked."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
