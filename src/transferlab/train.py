"""Entry point: `python -m transferlab.train [overrides]` (console script `transferlab-train`).

Kept thin and light: `--help`, `--cfg job` and most config errors (validation's first
pass) answer without importing torch, Lightning or MLflow (~10 s here); the pipeline is
imported only to train.
"""

import gc
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab.config import validate
from transferlab.config_keys import refuse_moved_overrides
from transferlab.distributed import is_global_zero, job_processes, run_launching_job
from transferlab.errors import RunStopped, TrainingDiverged, exits_on_user_error
from transferlab.resume import RunInterrupted
from transferlab.runtime import setup
from transferlab.scrub import scrubbed


def run(cfg: DictConfig) -> float:
    """The task: check the config, then train, test and record; returns the objective."""
    validate(cfg)
    if cfg.resume:
        return resume(cfg)
    from transferlab.pipeline import run_experiment

    return run_experiment(cfg)


def resume(cfg: DictConfig) -> float:
    """`resume=<run id | last.ckpt>`: the interrupted run goes on, with its recorded config."""
    from transferlab.pipeline import resume_stage
    from transferlab.resume import find_resumption, refuse_changing_overrides
    from transferlab.tracking.store import tracking_uri

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    store = tracking_uri(cfg.tracking.uri)
    resumption = find_resumption(str(cfg.resume), store, cfg)
    refuse_changing_overrides(overrides, cfg, resumption, str(cfg.resume))
    resumption.config.tracking.uri = store  # where it was found, whatever it recorded
    return resume_stage(resumption, cfg.output_dir)


def main() -> None:
    """The console script: process settings first, then Hydra parses the command line."""
    setup()
    with exits_on_user_error():
        refuse_moved_overrides(sys.argv[1:])  # Hydra would only say the key is not there
    run_launching_job()  # a DDP process started for one job of a multirun runs that job only
    hydra_app()


@hydra.main(version_base="1.3", config_path="pkg://transferlab.conf", config_name="train")
def hydra_app(cfg: DictConfig) -> float:
    if not is_global_zero():
        return run_replica(cfg)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg)
    try:
        with exits_on_user_error():
            return run(cfg)
    except RunInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None


def run_sweep_job(cfg: DictConfig) -> float:
    """A failing job is recorded FAILED and the sweep goes on: its objective is NaN, which
    sweepers treat as a failed trial. A stopped run (a pruned trial) is left to the sweeper."""
    try:
        with job_processes():
            return run(cfg)
    except RunStopped:
        raise
    except Exception as error:
        from transferlab.tracking.run_info import record_failed_job

        print(f"error: job failed: {scrubbed(str(error))}", file=sys.stderr)
        record_failed_job(cfg, error)
        return float("nan")
    finally:
        release_finished_job()


def release_finished_job() -> None:
    """A finished fit's Trainer, model and data hold each other in reference cycles, which
    only Python's cyclic collector frees, and only now and then: in a long in-process sweep
    the resident memory crept up meanwhile. Collected at each job's end; what is still alive
    then (imports, caches) is frozen out of later collections (gc.freeze), so each one scans
    only what the next trial allocated."""
    gc.collect()
    gc.freeze()


def run_replica(cfg: DictConfig) -> float:
    """A DDP process other than rank 0 (see transferlab.distributed). The stops that every
    process takes together (a diverged loss, a pruned trial, a signal) are rank 0's to
    report and record: this one ends quietly (exit code 0), as Lightning kills rank 0 at
    once when another of its processes fails. Any other error fails it: rank 0 would
    otherwise wait for it until the process group times out."""
    try:
        return run(cfg)
    except (TrainingDiverged, RunStopped):
        return float("nan")


if __name__ == "__main__":
    main()
