"""Runs left RUNNING by a process killed outright (SIGKILL, the OOM killer, power loss):
every run names its machine (a hashed machine id), the machine's boot and its process (pid,
start time), and every start against a store fails the runs of this machine whose process is
gone, offering their last checkpoint for resume. A shared store holds runs of many machines,
whose host names and pid namespaces may repeat: only the machine that ran a run judges it.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from transferlab.tracking.environment import BOOT_TAG, MACHINE_TAG, machine_tags
from transferlab.tracking.recorded import CHECKPOINT_TAG

HOST_TAG = "transferlab.host"  # for people: the machine's name in messages
PID_TAG = "transferlab.pid"
PID_START_TAG = "transferlab.pid_start"  # the process' start time: tells a reused pid
PID_NAMESPACE_TAG = "transferlab.pid_namespace"  # containers of one machine share its boot


def process_tags() -> dict[str, str]:
    """Names the machine, its boot and the process that creates a run, so that a later
    start on this machine can tell that it is gone and fail the run it left RUNNING
    (fail_orphaned_runs)."""
    pid = os.getpid()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), **machine_tags()}
    found = {PID_START_TAG: _start_time(pid), PID_NAMESPACE_TAG: _pid_namespace()}
    return tags | {key: value for key, value in found.items() if value}


def fail_orphaned_runs(client: MlflowClient) -> None:
    """Fails the runs of this machine whose process is gone: killed outright (SIGKILL, the
    OOM killer, power loss) it could not end them, and nothing else would. Two queries, as
    this runs before every sweep trial. Runs of other machines, and runs naming no machine,
    cannot be checked and are never touched; where this machine has no id, none is."""
    this = process_tags()
    if MACHINE_TAG not in this:
        return
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    if not experiments:
        return
    runs = client.search_runs(
        [experiment.experiment_id for experiment in experiments],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{MACHINE_TAG}` = '{this[MACHINE_TAG]}'"
        ),
        max_results=1000,
    )
    for run in runs:
        if _earlier_boot(run, this):
            _fail_orphan(client, run, " (the machine has restarted since)")
        elif _gone_this_boot(run.data.tags, this):
            _fail_orphan(client, run)


def _earlier_boot(run: Run, this: Mapping[str, str]) -> bool:
    """Whether the run's process ran in an earlier boot of this machine: certainly gone.
    A run of another boot id that started after this boot is no run of this machine's
    past (a machine id copied into another machine's image): left alone."""
    boot, booted = run.data.tags.get(BOOT_TAG), _boot_time()
    if boot is None or BOOT_TAG not in this or boot == this[BOOT_TAG] or booted is None:
        return False
    return run.info.start_time is not None and run.info.start_time < booted * 1000


def _gone_this_boot(tags: Mapping[str, str], this: Mapping[str, str]) -> bool:
    """Whether a run of this boot and pid namespace has lost its process."""
    same = all(tags.get(tag) == this.get(tag) for tag in (BOOT_TAG, PID_NAMESPACE_TAG))
    return same and _process_gone(tags)


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


def _fail_orphan(client: MlflowClient, run: Run, since: str = "") -> None:
    run_id, tags = run.info.run_id, run.data.tags
    host = tags.get(HOST_TAG, "this machine")
    gone = f"its process {tags.get(PID_TAG, '?')} on {host} is gone{since} and never ended it"
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


def _boot_time() -> int | None:
    """When this machine booted, in seconds since the epoch (Linux), None where unknown."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    found = [line.split()[1] for line in lines if line.startswith("btime ")]
    return int(found[0]) if found and found[0].isdigit() else None
