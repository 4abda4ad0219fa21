"""Multi-process (DDP) training: which process this is, and what the others leave to rank 0.

With `strategy: ddp` every process runs the whole pipeline: Lightning starts the other
processes of a node when the first `fit` starts, by running the command line again
(LOCAL_RANK=1.., NODE_RANK, WORLD_SIZE set); SLURM starts one process per task itself
(SLURM_PROCID); torchrun sets RANK. They train and test in lockstep, with metrics reduced
over all of them, but only global rank 0 records: its MLflow run, files and summary are
the run's. The others' runs are `UnrecordedRun`s. The rank is read from the environment
because the MLflow run is created before any Trainer exists.

Light on purpose (no torch, Lightning or MLflow at import): the entry point uses it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# What names a process's place in a DDP run: set, and not 0, in every process but rank 0.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
# What Lightning's launcher sets in the process that starts the others.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
JOB_ENV = "TRANSFERLAB_DDP_JOB"  # a multirun job's command line, for the processes it starts


def is_global_zero() -> bool:
    """Whether this process records the run: rank 0 of node 0, or the only process."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def barrier() -> None:
    """Waits for every process of the DDP run. Without DDP, or before the first `fit` (when
    the other processes do not exist yet), there is nothing to wait for."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class UnrecordedRun:
    """The MLflow run of a process other than rank 0: a TrackedRun's calls, recording
    nothing, so that the run is recorded once (by rank 0, with the reduced metrics)."""

    def __init__(self, name: str, run_id: str | None = None):
        self.name = name
        self.run_id = run_id or "unrecorded"  # resuming: the recorded run's id

    def __enter__(self) -> UnrecordedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def log_datasets(self, data: Any) -> None:
        pass


# --- multirun: the processes a job starts run that job alone, and end with it -----------


@contextmanager
def job_processes() -> Iterator[None]:
    """Around a multirun job in the process that runs it. Lightning starts the other DDP
    processes with the sweep's command line (`-m`, every value): `JOB_ENV` hands them this
    job's instead (see `run_launching_job`). Lightning keeps them for the process's life
    (LOCAL_RANK set: "started externally"), so once the job is over its process group is
    taken down and the launcher's variables restored: the next job starts its own."""
    saved = {name: os.environ.get(name) for name in (*LAUNCHER_VARIABLES, JOB_ENV)}
    os.environ[JOB_ENV] = json.dumps(job_arguments())
    try:
        yield
    finally:
        started = saved["LOCAL_RANK"] is None and "LOCAL_RANK" in os.environ
        if started:
            _end_process_group()
        _restore(saved if started else {JOB_ENV: saved[JOB_ENV]})


def job_arguments() -> list[str]:
    """This multirun job's command line as a single run: its config, its overrides (swept
    values included) and its output folder."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    sources = hydra.runtime.config_sources
    return [
        *(f"--config-path={_location(s)}" for s in sources if s.provider == "main"),
        *(f"--config-dir={s.path}" for s in sources if s.provider == "command-line"),
        f"--config-name={hydra.job.config_name}",
        *hydra.overrides.hydra,
        *hydra.overrides.task,
        "hydra.mode=RUN",  # the last value of a key wins
        f'hydra.run.dir="{hydra.runtime.output_dir}"',
    ]


def _location(source: Any) -> str:
    return f"pkg://{source.path}" if source.schema == "pkg" else source.path


def run_launching_job() -> None:
    """In a process Lightning started for a multirun job: that job's command line in place
    of the sweep's, which would run every job and a sweep of its own. Called before Hydra
    reads the command line."""
    job, rank = os.environ.get(JOB_ENV), os.environ.get("LOCAL_RANK", "0")
    if job and rank != "0":
        # named as Lightning names the processes of a single run
        own = [f"hydra.job.name=train_ddp_process_{rank}", "hydra.output_subdir=null"]
        sys.argv[1:] = [*json.loads(job), *own]


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
